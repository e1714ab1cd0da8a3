"""Baseline segmenters of skill discovery: fixed length, latent-delta threshold, change points.

Each places boundaries on z^0 without the skill model; the free parameter (chunk length,
threshold quantile, ruptures penalty) is set to a boundary budget (`stages.baselines_at_budget`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from hilam_jax.skill.discovery.boundaries import count_boundaries


def fixed_length_boundaries(length: int, chunk_length: float) -> np.ndarray:
  """Boolean [length]: boundaries at round(i * chunk_length), i = 0, 1, ... (0 included)."""
  boundary = np.zeros(length, bool)
  if length:
    starts = np.round(np.arange(0, length, max(chunk_length, 1.0))).astype(int)
    boundary[starts[starts < length]] = True
  return boundary


def latent_change(latents: np.ndarray) -> np.ndarray:
  """[T] ||z_t - z_{t-1}||_2 for t >= 1; -inf at t = 0 (never above a threshold)."""
  z = np.asarray(latents, np.float32)
  change = np.full(len(z), -np.inf, np.float32)
  if len(z) > 1:
    change[1:] = np.linalg.norm(z[1:] - z[:-1], axis=-1)
  return change


def delta_threshold_boundaries(latents: Mapping[str, np.ndarray],
                               rate: float) -> tuple[dict[str, np.ndarray], float]:
  """Boundaries where ||z_t - z_{t-1}|| > threshold, threshold set so that a fraction `rate` of
  the frames t >= 1 are boundaries (frame 0 always is). Returns (boundaries, threshold)."""
  changes = {e: latent_change(z) for e, z in latents.items()}
  pooled = np.concatenate([c[1:] for c in changes.values()] or [np.zeros(0)])
  if not len(pooled) or rate <= 0:
    threshold = np.inf
  else:
    threshold = float(np.quantile(pooled, 1.0 - min(rate, 1.0)))
  result = {}
  for e, c in changes.items():
    b = c > threshold
    if len(b):
      b[0] = True
    result[e] = b
  return result, threshold


def change_point_boundaries(latents: np.ndarray, penalty: float, method: str = "binseg",
                            fitted: Any = None) -> np.ndarray:
  """Boolean [T]: frame 0 and the change points `ruptures` finds in z^0 [T, Dz] (l2 cost).

  Args:
    latents: one episode's z^0.
    penalty: the penalty per change point (larger -> fewer).
    method: "binseg" (binary segmentation) or "pelt".
    fitted: an already fitted ruptures estimator for these latents (saves the refit).
  """
  z = np.asarray(latents, np.float64)
  boundary = np.zeros(len(z), bool)
  if not len(z):
    return boundary
  boundary[0] = True
  if len(z) < 2:
    return boundary
  algo = fitted if fitted is not None else fit_change_point(z, method)
  starts = [b for b in algo.predict(pen=float(penalty)) if 0 < b < len(z)]
  boundary[starts] = True
  return boundary


def fit_change_point(latents: np.ndarray, method: str) -> Any:
  """A ruptures estimator (l2 cost, min_size 1, jump 1) fitted on z^0 [T, Dz]."""
  import ruptures  # pylint: disable=g-import-not-at-top
  classes = {"binseg": ruptures.Binseg, "pelt": ruptures.Pelt}
  if method not in classes:
    raise ValueError(f"change-point method {method!r}: expected one of {sorted(classes)}")
  return classes[method](model="l2", min_size=1, jump=1).fit(np.asarray(latents, np.float64))


def calibrate_penalty(make: Callable[[float], Mapping[str, np.ndarray]], target: int,
                      low: float = 1e-4, high: float = 1e6, steps: int = 40) -> float:
  """Penalty whose boundary count (non-increasing in the penalty) is closest to `target`.

  Bisection on log(penalty) between `low` and `high`; the closest count seen wins (ties: the
  smaller penalty).
  """
  best, best_gap = high, None
  lo, hi = np.log(low), np.log(high)
  for _ in range(steps):
    mid = 0.5 * (lo + hi)
    count = count_boundaries(make(float(np.exp(mid))))
    gap = abs(count - target)
    if best_gap is None or gap < best_gap or (gap == best_gap and np.exp(mid) < best):
      best, best_gap = float(np.exp(mid)), gap
    if count == target:
      break
    if count > target:
      lo = mid
    else:
      hi = mid
  return best


class ChangePointBaseline:
  """ruptures change points with one penalty for all episodes, fitted once per episode."""

  def __init__(self, latents: Mapping[str, np.ndarray], method: str):
    self.method = method
    self.latents = {e: np.asarray(z, np.float64) for e, z in latents.items()}
    # Binseg caches its splits per fitted estimator, so refitting for every penalty is wasted.
    self._fitted = {e: fit_change_point(z, method) for e, z in self.latents.items() if len(z) > 1}
    self._cache: dict[float, dict[str, np.ndarray]] = {}
    self._penalties: dict[int, float] = {}

  def boundaries(self, penalty: float) -> dict[str, np.ndarray]:
    """{episode id: bool [T]} at one penalty (memoised: PELT reruns per penalty)."""
    if penalty not in self._cache:
      self._cache[penalty] = {e: change_point_boundaries(z, penalty, self.method,
                                                         self._fitted.get(e))
                              for e, z in self.latents.items()}
    return self._cache[penalty]

  def penalty_for(self, target: int) -> float:
    """`calibrate_penalty` to `target` boundaries on these episodes (memoised per target)."""
    if target not in self._penalties:
      self._penalties[target] = calibrate_penalty(self.boundaries, target)
    return self._penalties[target]
