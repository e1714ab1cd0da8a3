"""Success rates with 95% Wilson score intervals, and the result record of an evaluation."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from scipy import stats as scipy_stats


def wilson_interval(successes: int, num_trials: int,
                    confidence: float = 0.95) -> tuple[float, float]:
  """Wilson score interval of a binomial proportion (no continuity correction; scipy's
  `binomtest(...).proportion_ci(method="wilson")`); (0, 1) when there are no trials.

  Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0/n or n/n
  (0/10 -> [0, 0.278]), which matters for the small trial counts of simulator evaluations.
  """
  if not 0 <= successes <= num_trials:
    raise ValueError(f"successes={successes} outside [0, num_trials={num_trials}]")
  if num_trials == 0:
    return 0.0, 1.0
  interval = scipy_stats.binomtest(int(successes), int(num_trials)).proportion_ci(
      confidence_level=confidence, method="wilson")
  return float(interval.low), float(interval.high)


@dataclasses.dataclass(frozen=True)
class EpisodeRecord:
  """One evaluated episode. `task` is the level / task name; `seed` the env seed or init index."""
  seed: int
  success: bool
  length: int
  instruction: str
  task: str = ""


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """Aggregate of an evaluation; `episodes` in the harness's fixed episode order."""
  success_rate: float
  ci_low: float
  ci_high: float
  num_episodes: int
  mean_episode_length: float
  episodes: tuple[EpisodeRecord, ...]

  @classmethod
  def from_records(cls, records: Sequence[EpisodeRecord]) -> "EvalResult":
    records = tuple(records)
    n = len(records)
    successes = sum(bool(r.success) for r in records)
    low, high = wilson_interval(successes, n)
    return cls(
        success_rate=successes / n if n else float("nan"),
        ci_low=low, ci_high=high, num_episodes=n,
        mean_episode_length=sum(r.length for r in records) / n if n else float("nan"),
        episodes=records)

  def per_task(self) -> dict[str, "EvalResult"]:
    """One EvalResult per task name, in order of first appearance."""
    tasks: dict[str, list[EpisodeRecord]] = {}
    for record in self.episodes:
      tasks.setdefault(record.task, []).append(record)
    return {task: EvalResult.from_records(rs) for task, rs in tasks.items()}

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready: the aggregates and the per-episode records."""
    return {
        "success_rate": self.success_rate, "ci_low": self.ci_low, "ci_high": self.ci_high,
        "num_episodes": self.num_episodes, "mean_episode_length": self.mean_episode_length,
        "episodes": [dataclasses.asdict(r) for r in self.episodes],
    }

  def summary(self) -> str:
    return (f"success {self.success_rate:.3f} [95% CI {self.ci_low:.3f}, {self.ci_high:.3f}] "
            f"over {self.num_episodes} episodes, mean length {self.mean_episode_length:.1f}")


def t_quantile_975(df: int) -> float:
  """t_{0.975}(df), the two-sided 95% Student-t quantile (scipy)."""
  if df < 1:
    raise ValueError(f"df={df}")
  return float(scipy_stats.t.ppf(0.975, df))


def seed_interval(values: Sequence[float]) -> dict[str, Any]:
  """Mean and 95% t-interval across training seeds (one value per seed).

  Returns {"values", "mean", "std" (sample, ddof 1), "ci_low", "ci_high", "num_seeds"}; with one
  seed the interval is undefined (NaN bounds).
  """
  values = [float(v) for v in values]
  n = len(values)
  if n == 0:
    raise ValueError("seed_interval of no values")
  mean = sum(values) / n
  if n == 1:
    return {"values": values, "mean": mean, "std": float("nan"), "ci_low": float("nan"),
            "ci_high": float("nan"), "num_seeds": 1}
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
  half = t_quantile_975(n - 1) * std / math.sqrt(n)
  return {"values": values, "mean": mean, "std": std, "ci_low": mean - half,
          "ci_high": mean + half, "num_seeds": n}
