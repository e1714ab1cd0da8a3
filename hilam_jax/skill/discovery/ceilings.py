"""Oracle-count ceilings: segmenters told each episode's true number of subtasks.

With the l2 cost (a piecewise-constant fit, the objective binary segmentation approximates), the
exact optimum is a dynamic programme; its F1 bounds every method that optimises that cost on the
same signal, and comparing signals (z^0, z-scored z^0, the true actions) says where the subtask
information is lost.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from hilam_jax.skill.discovery.baselines import latent_change
from hilam_jax.skill.discovery.boundaries import boundary_frames, precision_recall_f1


def segment_costs(signal: np.ndarray) -> np.ndarray:
  """[T + 1, T + 1] float64: at [a, b] (a < b) the l2 cost of the segment signal[a:b] (sum of
  squared distances to its mean); +inf where b <= a. signal: [T] or [T, D]."""
  x = np.asarray(signal, np.float64).reshape(len(signal), -1)
  s1 = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, 0)])  # [T + 1, D]
  s2 = np.concatenate([[0.0], np.cumsum(np.sum(x * x, 1))])           # [T + 1]
  length = np.arange(len(x) + 1)[None, :] - np.arange(len(x) + 1)[:, None]  # b - a
  sums = s1[None, :, :] - s1[:, None, :]                              # [a, b, D]
  cost = (s2[None, :] - s2[:, None]) - np.sum(sums * sums, -1) / np.maximum(length, 1)
  return np.where(length > 0, np.maximum(cost, 0.0), np.inf)


def segmentation_cost(signal: np.ndarray, boundary: np.ndarray) -> float:
  """Total l2 cost of the segments that start at frame 0 and at every boundary t >= 1."""
  n = len(signal)
  starts = [0] + [int(t) for t in boundary_frames(np.asarray(boundary, bool)[:n])]
  x = np.asarray(signal, np.float64).reshape(n, -1)
  return float(sum(np.sum((x[a:b] - x[a:b].mean(0)) ** 2)
                   for a, b in zip(starts, starts[1:] + [n]) if b > a))


def _first_frame_and_count(length: int, num_boundaries: int) -> tuple[np.ndarray, int]:
  """(bool [length] with frame 0 set if any, the boundary count clipped to length - 1)."""
  boundary = np.zeros(length, bool)
  boundary[:1] = True
  return boundary, max(min(int(num_boundaries), length - 1), 0)


def optimal_segmentation(signal: np.ndarray, num_boundaries: int) -> np.ndarray:
  """Boolean [T]: frame 0 and the `num_boundaries` (clipped to T - 1) segment starts that
  minimise the total l2 cost exactly (dynamic programme, O(K T^2); ties: earlier starts)."""
  n = len(signal)
  boundary, count = _first_frame_and_count(n, num_boundaries)
  if not count:
    return boundary
  cost = segment_costs(signal)
  best = cost[0].copy()  # best[b]: min cost of signal[:b] in j + 1 segments (j = 0 here)
  back = []
  for _ in range(count):
    total = best[:, None] + cost  # [a, b]: the last segment is [a, b)
    arg = np.argmin(total, axis=0)
    best = total[arg, np.arange(n + 1)]
    back.append(arg)
  end = n
  for arg in reversed(back):
    end = int(arg[end])
    boundary[end] = True
  return boundary


def binseg_count_boundaries(signal: np.ndarray, num_boundaries: int) -> np.ndarray:
  """Boolean [T]: binary segmentation (ruptures, l2 cost) asked for exactly `num_boundaries`."""
  n = len(signal)
  boundary, count = _first_frame_and_count(n, num_boundaries)
  if not count:
    return boundary
  import ruptures  # pylint: disable=g-import-not-at-top
  x = np.asarray(signal, np.float64).reshape(n, -1)
  algo = ruptures.Binseg(model="l2", min_size=1, jump=1).fit(x)
  boundary[[b for b in algo.predict(n_bkps=count) if 0 < b < n]] = True
  return boundary


def evenly_spaced_boundaries(length: int, num_boundaries: int) -> np.ndarray:
  """Boolean [length]: frame 0 and `num_boundaries` starts at round(i * length / (K + 1))."""
  boundary, count = _first_frame_and_count(length, num_boundaries)
  starts = np.round(np.arange(1, count + 1) * length / (count + 1)).astype(int)
  boundary[starts[(starts > 0) & (starts < length)]] = True
  return boundary


def top_change_boundaries(signal: np.ndarray, num_boundaries: int) -> np.ndarray:
  """Boolean [T]: frame 0 and the `num_boundaries` frames with the largest ||x_t - x_{t-1}||."""
  change = latent_change(np.asarray(signal, np.float32).reshape(len(signal), -1))
  boundary, count = _first_frame_and_count(len(change), num_boundaries)
  if count:
    boundary[1 + np.argsort(-change[1:], kind="stable")[:count]] = True
  return boundary


ORACLE_SEGMENTERS = {"exact_l2": optimal_segmentation, "binseg_l2": binseg_count_boundaries,
                     "top_change": top_change_boundaries,
                     "evenly_spaced": lambda x, k: evenly_spaced_boundaries(len(x), k)}


def oracle_count_ceilings(signals: Mapping[str, Mapping[str, np.ndarray]],
                          truth: Mapping[str, np.ndarray], tolerance: int) -> dict[str, Any]:
  """Every ORACLE_SEGMENTERS method on every signal, told each episode's true boundary count.

  Args:
    signals: {signal name: {episode id: [T_e] or [T_e, D]}}; every signal covers the episodes
      of `truth`, which is cut to the signal's length.
    truth: {episode id: bool [T]} ground-truth subtask starts.

  Returns:
    {signal: {method: P/R/F1}}, and for "exact_l2" also the l2 cost of the true segmentation
    relative to the optimum at the same count ("gt_cost_ratio", mean over episodes with a
    non-zero optimum) and the share of episodes whose true segmentation is optimal.
  """
  out: dict[str, Any] = {}
  for name, signal in signals.items():
    ids = [e for e in truth if e in signal]
    cut = {e: np.asarray(truth[e], bool)[:len(signal[e])] for e in ids}
    counts = {e: int(np.sum(cut[e][1:])) for e in ids}
    rows = {}
    for method, segment in ORACLE_SEGMENTERS.items():
      predicted = {e: segment(signal[e], counts[e]) for e in ids}
      rows[method] = precision_recall_f1(predicted, cut, tolerance)
      if method == "exact_l2":
        ratios, optimal = [], 0
        for e in ids:
          best = segmentation_cost(signal[e], predicted[e])
          gt = segmentation_cost(signal[e], cut[e])
          optimal += int(gt <= best * (1 + 1e-9) + 1e-12)
          if best > 0:
            ratios.append(gt / best)
        rows[method].update(gt_cost_ratio=float(np.mean(ratios)) if ratios else float("nan"),
                            gt_optimal_share=optimal / max(len(ids), 1))
    out[name] = {"episodes": len(ids), "boundaries": sum(counts.values()), **rows}
  return out
