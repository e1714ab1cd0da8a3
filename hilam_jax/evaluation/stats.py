"""Success rates with 95% Wilson score intervals, and the result record of an evaluation."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, num_trials: int, z: float = Z_95) -> tuple[float, float]:
  """Wilson score interval of a binomial proportion; (0, 1) when there are no trials.

  Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0/n or n/n
  (0/10 -> [0, 0.278]), which matters for the small trial counts of simulator evaluations.
  """
  if not 0 <= successes <= num_trials:
    raise ValueError(f"successes={successes} outside [0, num_trials={num_trials}]")
  if num_trials == 0:
    return 0.0, 1.0
  n, p = num_trials, successes / num_trials
  denominator = 1.0 + z * z / n
  center = (p + z * z / (2 * n)) / denominator
  half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  # Clamp float error at the ends (0/n and n/n give exactly 0 and 1 analytically).
  return max(0.0, center - half), min(1.0, center + half)


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


# Two-sided 95% Student-t quantiles t_{0.975}(df), df = 1..10.
_T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281)


def t_quantile_975(df: int) -> float:
  """t_{0.975}(df): the table for df <= 10, the Cornish-Fisher expansion beyond (error < 3e-3)."""
  if df < 1:
    raise ValueError(f"df={df}")
  if df <= len(_T_975):
    return _T_975[df - 1]
  z = Z_95
  return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


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
