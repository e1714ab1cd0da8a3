"""Skill-discovery metrics: do the skill model's boundaries find the ground-truth subtask starts?

The paper reports no quantitative skill-discovery metric (METHOD.md section 5); this module adds
two on datasets with ground truth (`subtask/boundary` and `extras/subtask_name` of the BabyAI and
Meta-World generators).

1. Boundary precision / recall / F1 with a tolerance: a predicted boundary at t and a true one at
u match if |t - u| <= tolerance; matching is one-to-one and greedy (closest pairs first, ties to
the earlier frames), so two predictions near one true boundary count once. Frame 0 is a boundary
by construction on both sides (every sequence starts a chunk, every episode starts a subtask) and
is ignored. Counts are summed over episodes before dividing (micro average).

2. A linear probe (multinomial logistic regression, `fit_linear_probe`) from per-frame features
(z̄^1, z̄^2, z^0, a trailing window mean of z^0) to the ground-truth subtask identity of the
frame, at two granularities: "target" (`subtask_target`: the subgoal without colours and
locations, e.g. BabyAI "GoNextTo(door, Open)", "GoNextTo(ball)", "Pickup"; Meta-World: the expert
phase) and "type" (`subtask_type`: "GoNextTo", "Pickup", "Drop", "Open"). On BossLevel the
Pickup / Drop / Open subgoals last 1-2 frames (one bot action) and GoNextTo ~40, so balanced
accuracy (mean per-class recall) is reported beside accuracy.

Held-out protocol (`run_evaluation`). The generator's held-out episodes (split `val` of the
dataset) are divided by a hash of their episode id (`heldout_split`: sha256 parity) into a
*validation* half and a *test* half. Every choice is made on the validation half: the baselines'
free parameter (chunk length, delta threshold, change-point penalty) is set there to hit a
boundary budget, and the probe is fit there. Reported figures come from the test half, which no
choice looked at. The study (`experiments/skill_study.py`) picks the model's settings on the
validation F1 as well.

Baselines, each at two budgets fixed on the validation half: the model's own boundary rate for
the stage (so model and baseline place as many boundaries) and the ground-truth rate (what a
segmenter told the true number of subtasks would do):
  fixed_length     boundaries every `mean chunk length` frames (at round(i * length), i >= 1);
  latent_delta     boundaries where ||z_t - z_{t-1}|| exceeds a threshold (a quantile over all
                   frames t >= 1 of the validation episodes);
  ruptures_binseg  binary segmentation of each episode's z^0 [T, Dz] with the l2 cost
                   (`ruptures`, min_size 1), one penalty for all episodes;
  ruptures_pelt    PELT with the same cost and penalty rule.

Frames are those of the latent actions (t < T - k): ground truth beyond them is dropped.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from data_pipeline import statistics


def boundary_frames(boundary: np.ndarray) -> np.ndarray:
  """Frames t >= 1 where a boolean [T] boundary array is set (frame 0 is ignored)."""
  frames = np.flatnonzero(np.asarray(boundary, bool))
  return frames[frames > 0]


def match_boundaries(predicted: Sequence[int], true: Sequence[int], tolerance: int) -> int:
  """Number of one-to-one matches |t - u| <= tolerance, greedy by distance (then by frame)."""
  pairs = sorted((abs(t - u), t, u) for t in predicted for u in true if abs(t - u) <= tolerance)
  used_pred, used_true, matches = set(), set(), 0
  for _, t, u in pairs:
    if t not in used_pred and u not in used_true:
      used_pred.add(t)
      used_true.add(u)
      matches += 1
  return matches


def precision_recall_f1(predicted: Mapping[str, np.ndarray], true: Mapping[str, np.ndarray],
                        tolerance: int = 2) -> dict[str, float]:
  """Micro P/R/F1 over the episodes of `true` (boolean [T] arrays keyed by episode id).

  Frame 0 is ignored on both sides; a missing prediction counts as no boundaries. Precision is 0
  when nothing is predicted, recall 0 when there is nothing to find.
  """
  tp = num_pred = num_true = 0
  for episode_id, gt in true.items():
    t_frames = boundary_frames(gt)
    p_frames = boundary_frames(predicted.get(episode_id, np.zeros(len(gt), bool))[:len(gt)])
    tp += match_boundaries(p_frames.tolist(), t_frames.tolist(), tolerance)
    num_pred += len(p_frames)
    num_true += len(t_frames)
  precision = tp / num_pred if num_pred else 0.0
  recall = tp / num_true if num_true else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"precision": precision, "recall": recall, "f1": f1, "true_positives": tp,
          "predicted": num_pred, "ground_truth": num_true}


def mean_chunk_length(boundaries: Mapping[str, np.ndarray]) -> float:
  """Frames per chunk: total frames / total boundaries (frame 0 counted as a chunk start)."""
  frames = sum(len(b) for b in boundaries.values())
  starts = sum(int(np.sum(b[1:])) + 1 for b in boundaries.values() if len(b))
  return frames / max(starts, 1)


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


def boundary_rate(boundaries: Mapping[str, np.ndarray]) -> float:
  """Fraction of frames t >= 1 that are boundaries."""
  hits = sum(int(np.sum(b[1:])) for b in boundaries.values())
  frames = sum(max(len(b) - 1, 0) for b in boundaries.values())
  return hits / max(frames, 1)


def evaluate_stage(predicted: Mapping[str, np.ndarray], latents: Mapping[str, np.ndarray],
                   true: Mapping[str, np.ndarray], tolerance: int) -> dict[str, Any]:
  """P/R/F1 of one stage's boundaries and of the two baselines with the same boundary budget."""
  ids = [e for e in true if e in predicted and e in latents]
  pred = {e: np.asarray(predicted[e], bool) for e in ids}
  gt = {e: np.asarray(true[e], bool)[:len(pred[e])] for e in ids}
  chunk_len = mean_chunk_length(pred)
  rate = boundary_rate(pred)
  fixed = {e: fixed_length_boundaries(len(pred[e]), chunk_len) for e in ids}
  delta, threshold = delta_threshold_boundaries({e: latents[e] for e in ids}, rate)
  return {"episodes": len(ids), "mean_chunk_length": chunk_len, "boundary_rate": rate,
          "model": precision_recall_f1(pred, gt, tolerance),
          "fixed_length": precision_recall_f1(fixed, gt, tolerance),
          "latent_delta": dict(precision_recall_f1(delta, gt, tolerance),
                               threshold=threshold, boundary_rate=boundary_rate(delta))}


# ---------------------------------------------------------------- held-out split


def heldout_split(episode_ids: Sequence[str]) -> tuple[list[str], list[str]]:
  """(validation ids, test ids): sha256(episode id) even -> validation, odd -> test.

  Stable per episode (adding episodes never moves one). If the parity leaves one half empty while
  there are >= 2 episodes (tiny datasets), the ids sorted by hash are halved instead (validation
  gets the extra one).
  """
  def digest(e):
    return hashlib.sha256(e.encode()).hexdigest()
  ids = sorted(episode_ids)
  val = [e for e in ids if int(digest(e)[-1], 16) % 2 == 0]
  test = [e for e in ids if int(digest(e)[-1], 16) % 2 == 1]
  if len(ids) >= 2 and (not val or not test):
    by_hash = sorted(ids, key=digest)
    half = (len(ids) + 1) // 2
    val, test = sorted(by_hash[:half]), sorted(by_hash[half:])
  return val, test


# ---------------------------------------------------------------- change-point baselines


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


def count_boundaries(boundaries: Mapping[str, np.ndarray]) -> int:
  """Boundaries at frames t >= 1 summed over episodes."""
  return sum(int(np.sum(np.asarray(b, bool)[1:])) for b in boundaries.values())


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


# ---------------------------------------------------------------- oracle-count ceilings
#
# How well can a segmenter do that is told each episode's true number of subtasks? With the
# l2 cost (a piecewise-constant fit, the objective binary segmentation approximates), the exact
# optimum is a dynamic programme; its F1 bounds every method that optimises that cost on the same
# signal, and comparing signals (z^0, z-scored z^0, the true actions) says where the subtask
# information is lost.


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


# ---------------------------------------------------------------- held-out stage evaluation


def _subset(values: Mapping[str, Any], ids: Sequence[str]) -> dict[str, Any]:
  return {e: values[e] for e in ids}


def baselines_at_budget(latents: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
                        val_ids: Sequence[str], test_ids: Sequence[str], *, chunk_length: float,
                        rate: float, tolerance: int,
                        change_point_methods: Sequence[str] = ("binseg", "pelt"),
                        change_points: Mapping[str, tuple[Any, Any]] | None = None
                        ) -> dict[str, Any]:
  """Baselines with their parameter set on `val_ids` to a budget, scored on `test_ids`.

  Args:
    latents, truth: {episode id: z^0 [T, Dz]} and {episode id: bool [T]} (already cut to the same
      length per episode), covering val_ids and test_ids.
    chunk_length: frames per chunk of the budget on the validation episodes (fixed-length).
    rate: fraction of the validation frames t >= 1 that are boundaries (delta, change points).
    change_points: optional {method: (ChangePointBaseline on val, on test)} to reuse fits.

  Returns:
    {method: P/R/F1 on test plus "val_f1", the chosen parameter and the rates on val and test}.
  """
  val_lat, test_lat = _subset(latents, val_ids), _subset(latents, test_ids)
  val_gt, test_gt = _subset(truth, val_ids), _subset(truth, test_ids)
  out = {}

  def score(name, val_b, test_b, **param):
    out[name] = dict(precision_recall_f1(test_b, test_gt, tolerance),
                     val_f1=precision_recall_f1(val_b, val_gt, tolerance)["f1"],
                     val_rate=boundary_rate(val_b), test_rate=boundary_rate(test_b), **param)

  score("fixed_length",
        {e: fixed_length_boundaries(len(z), chunk_length) for e, z in val_lat.items()},
        {e: fixed_length_boundaries(len(z), chunk_length) for e, z in test_lat.items()},
        chunk_length=chunk_length)
  val_delta, threshold = delta_threshold_boundaries(val_lat, rate)
  test_delta = {e: np.asarray(c > threshold) for e, c in
                ((e, latent_change(z)) for e, z in test_lat.items())}
  score("latent_delta", val_delta, test_delta, threshold=threshold)
  target = int(round(rate * sum(max(len(z) - 1, 0) for z in val_lat.values())))
  for method in change_point_methods:
    if change_points and method in change_points:
      on_val, on_test = change_points[method]
    else:
      on_val, on_test = ChangePointBaseline(val_lat, method), ChangePointBaseline(test_lat, method)
    penalty = on_val.penalty_for(target)
    score(f"ruptures_{method}", on_val.boundaries(penalty), on_test.boundaries(penalty),
          penalty=penalty)
  return out


def evaluate_stage_heldout(predicted: Mapping[str, np.ndarray], latents: Mapping[str, np.ndarray],
                           true: Mapping[str, np.ndarray], val_ids: Sequence[str],
                           test_ids: Sequence[str], tolerance: int,
                           change_point_methods: Sequence[str] = ("binseg", "pelt"),
                           change_points: Mapping[str, tuple[Any, Any]] | None = None
                           ) -> dict[str, Any]:
  """One stage on the held-out protocol (module docstring).

  Returns a dict with, at the top level, the test-half P/R/F1 of "model" and of every baseline at
  the model's budget ("fixed_length", "latent_delta", "ruptures_<method>"), and under "gt_rate"
  the baselines at the ground-truth budget; "val" holds the model's validation-half P/R/F1.
  """
  val_ids = [e for e in val_ids if e in predicted and e in latents and e in true]
  test_ids = [e for e in test_ids if e in predicted and e in latents and e in true]
  pred = {e: np.asarray(predicted[e], bool) for e in list(val_ids) + list(test_ids)}
  gt = {e: np.asarray(true[e], bool)[:len(pred[e])] for e in pred}
  lat = {e: np.asarray(latents[e])[:len(pred[e])] for e in pred}
  val_pred, test_pred = _subset(pred, val_ids), _subset(pred, test_ids)
  val_gt = _subset(gt, val_ids)
  result = {"val_episodes": len(val_ids), "test_episodes": len(test_ids),
            "mean_chunk_length": mean_chunk_length(val_pred), "boundary_rate": boundary_rate(
                val_pred),
            "test_boundary_rate": boundary_rate(test_pred),
            "gt_mean_chunk_length": mean_chunk_length(val_gt), "gt_rate": None,
            "model": precision_recall_f1(test_pred, _subset(gt, test_ids), tolerance),
            "val": {"model": precision_recall_f1(val_pred, val_gt, tolerance)}}
  result.update(baselines_at_budget(
      lat, gt, val_ids, test_ids, chunk_length=result["mean_chunk_length"],
      rate=result["boundary_rate"], tolerance=tolerance,
      change_point_methods=change_point_methods, change_points=change_points))
  result["gt_rate"] = dict(
      rate=boundary_rate(val_gt),
      **baselines_at_budget(lat, gt, val_ids, test_ids,
                            chunk_length=result["gt_mean_chunk_length"],
                            rate=boundary_rate(val_gt), tolerance=tolerance,
                            change_point_methods=change_point_methods,
                            change_points=change_points))
  return result


# ---------------------------------------------------------------- linear probe


COLOURS = ("red", "green", "blue", "purple", "yellow", "grey")


def subtask_type(name: str) -> str:
  """'GoNextTo(red ball, PutNext)' -> 'GoNextTo'; a name without arguments is its own type."""
  return name.split("(", 1)[0].strip()


def subtask_target(name: str) -> str:
  """The subtask without colours and locations: what is done to which kind of object, and why.

  'GoNextTo(red ball, PutNext)' -> 'GoNextTo(ball, PutNext)'; 'GoNextTo(purple door (behind))'
  -> 'GoNextTo(door)'; 'Pickup' -> 'Pickup'; a Meta-World phase name is kept as it is.
  """
  if "(" not in name or not name.endswith(")"):
    return name.strip()
  head, inner = name.split("(", 1)
  args = []
  for arg in inner[:-1].split(", "):
    arg = arg.split(" (", 1)[0]  # drop the location
    words = [w for w in arg.split() if w not in COLOURS]
    args.append(" ".join(words))
  return f"{head.strip()}({', '.join(a for a in args if a)})"


PROBE_LABELS = {"target": subtask_target, "type": subtask_type}


def trailing_mean(latents: np.ndarray, window: int) -> np.ndarray:
  """[T, D]: mean of z_{max(0, t-window+1)..t} (causal, like the skills)."""
  z = np.asarray(latents, np.float64)
  if not len(z):
    return z.astype(np.float32)
  csum = np.concatenate([np.zeros((1,) + z.shape[1:]), np.cumsum(z, axis=0)])
  t = np.arange(len(z))
  start = np.maximum(t - int(window) + 1, 0)
  return ((csum[t + 1] - csum[start]) / (t + 1 - start)[:, None]).astype(np.float32)


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, l2: float = 1e-3,
                     max_iter: int = 500, balanced: bool = True) -> dict[str, np.ndarray]:
  """Multinomial logistic regression (L-BFGS on weighted mean cross-entropy + l2 ||W||^2).

  Features are standardised with their training mean / std (stored in the result). With
  `balanced`, every class carries the same total weight (weights n / (K n_c)), so a rare class
  (a 1-frame Pickup among 40-frame GoNextTo segments) is not ignored; balanced accuracy is the
  matching score.

  Args:
    features: float [N, D].
    labels: [N] hashable class labels (strings or ints).

  Returns:
    {"classes" [K], "mean" [D], "std" [D], "weights" [D, K], "bias" [K]}.
  """
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  x = np.asarray(features, np.float64)
  classes, y = np.unique(np.asarray(labels), return_inverse=True)
  mean, std = x.mean(0), x.std(0) + 1e-6
  x = (x - mean) / std
  n, d = x.shape
  k = len(classes)
  onehot = np.eye(k)[y]
  counts = np.bincount(y, minlength=k)
  weight = (n / (k * counts))[y] if balanced else np.ones(n)  # [N], mean 1

  def loss(theta):
    w, b = theta[:d * k].reshape(d, k), theta[d * k:]
    logits = x @ w + b
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    p = np.exp(logp)
    value = -np.sum(weight[:, None] * onehot * logp) / n + l2 * np.sum(w * w)
    grad_logits = weight[:, None] * (p - onehot) / n
    grad = np.concatenate([(x.T @ grad_logits + 2 * l2 * w).ravel(), grad_logits.sum(0)])
    return value, grad

  theta = np.zeros(d * k + k)
  if k > 1:
    theta = optimize.minimize(loss, theta, jac=True, method="L-BFGS-B",
                              options={"maxiter": max_iter}).x
  return {"classes": classes, "mean": mean, "std": std,
          "weights": theta[:d * k].reshape(d, k), "bias": theta[d * k:]}


def probe_predict(probe: Mapping[str, np.ndarray], features: np.ndarray) -> np.ndarray:
  """Predicted class labels [N] of a `fit_linear_probe` result."""
  x = (np.asarray(features, np.float64) - probe["mean"]) / probe["std"]
  return probe["classes"][np.argmax(x @ probe["weights"] + probe["bias"], axis=1)]


def probe_scores(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Accuracy and balanced accuracy (mean per-class recall over the classes present)."""
  predicted, labels = np.asarray(predicted), np.asarray(labels)
  classes = np.unique(labels)
  recalls = [float(np.mean(predicted[labels == c] == c)) for c in classes]
  return {"accuracy": float(np.mean(predicted == labels)) if len(labels) else 0.0,
          "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0}


def probe_report(features: Mapping[str, Mapping[str, np.ndarray]],
                 labels: Mapping[str, np.ndarray], train_ids: Sequence[str],
                 test_ids: Sequence[str], l2: float = 1e-3) -> dict[str, Any]:
  """Fits one probe per feature set on `train_ids` frames, scores it on `test_ids` frames.

  Args:
    features: {feature name: {episode id: [T, D]}}; frames beyond len(labels[e]) are dropped.
    labels: {episode id: [T] class labels} (e.g. `subtask_type` of each frame's subtask).

  Returns:
    {feature name: {"accuracy", "balanced_accuracy"}, "majority": the accuracy of always
    predicting the training set's most frequent class, "classes": training class counts,
    "train_frames", "test_frames"}.
  """
  def stack(values, ids):
    return np.concatenate([np.asarray(values[e])[:len(labels[e])] for e in ids])

  def length(ids, values):
    return {e: min(len(labels[e]), len(values[e])) for e in ids}

  y_train = np.concatenate([np.asarray(labels[e]) for e in train_ids])
  y_test = np.concatenate([np.asarray(labels[e]) for e in test_ids])
  classes, counts = np.unique(y_train, return_counts=True)
  majority = classes[np.argmax(counts)]
  out = {"majority": probe_scores(np.full(len(y_test), majority), y_test),
         "classes": {str(c): int(n) for c, n in zip(classes, counts)},
         "train_frames": int(len(y_train)), "test_frames": int(len(y_test))}
  for name, values in features.items():
    for ids in (train_ids, test_ids):
      short = {e: n for e, n in length(ids, values).items() if n < len(labels[e])}
      if short:
        raise ValueError(f"probe feature {name!r} is shorter than the labels for {short}")
    probe = fit_linear_probe(stack(values, train_ids), y_train, l2=l2)
    out[name] = probe_scores(probe_predict(probe, stack(values, test_ids)), y_test)
  return out


STAGE_METHODS = ("model", "fixed_length", "latent_delta", "ruptures_binseg", "ruptures_pelt")
PROBE_FEATURES = ("z1", "z2", "z0", "z0_mean")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize_seeds(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Mean and std (ddof 1) over seeds of every F1 (test half), rate and probe accuracy.

  Args:
    per_seed: one {"results": {stage: evaluate_stage_heldout(...)}, "probe": probe_report(...)
      or None} per seed.

  Returns:
    {"seeds": n, "stage<s>": {method: {"f1": (mean, std), "precision": .., "recall": ..},
    "gt_rate": {method: {...}}, "boundary_rate": (mean, std), "val_f1": (mean, std)},
    "probe": {feature: {"accuracy": (mean, std), "balanced_accuracy": (mean, std)}}}.
  """
  out: dict[str, Any] = {"seeds": len(per_seed)}
  for stage in per_seed[0]["results"]:
    rows = [s["results"][stage] for s in per_seed]
    entry: dict[str, Any] = {
        "boundary_rate": _mean_std([r["boundary_rate"] for r in rows]),
        "mean_chunk_length": _mean_std([r["mean_chunk_length"] for r in rows]),
        "val_f1": _mean_std([r["val"]["model"]["f1"] for r in rows]),
        "gt_rate": {}}
    for method in STAGE_METHODS:
      if method in rows[0]:
        entry[method] = {k: _mean_std([r[method][k] for r in rows])
                         for k in ("precision", "recall", "f1")}
      if method != "model" and method in rows[0]["gt_rate"]:
        entry["gt_rate"][method] = {k: _mean_std([r["gt_rate"][method][k] for r in rows])
                                    for k in ("precision", "recall", "f1")}
    out[stage] = entry
  for key in ("probe", "probe_type"):
    probes = [s[key] for s in per_seed if s.get(key)]
    if probes:
      out[key] = {name: {k: _mean_std([p[name][k] for p in probes])
                         for k in ("accuracy", "balanced_accuracy")}
                  for name in list(PROBE_FEATURES) + ["majority"] if name in probes[0]}
  return out


def _cell(pair: tuple[float, float], seeds: int) -> str:
  return f"{pair[0]:.3f} ± {pair[1]:.3f}" if seeds > 1 else f"{pair[0]:.3f}"


def format_table(summary: Mapping[str, Any]) -> str:
  """Markdown tables of a `summarize_seeds` result: boundary P/R/F1 per stage, method and
  budget (test half, mean ± std over seeds), then the probe accuracies."""
  n = summary["seeds"]
  lines = [f"Boundaries (test half, {n} seed(s), mean ± std):", "",
           "| stage | method | budget | precision | recall | F1 |", "|---|---|---|---|---|---|"]
  for stage, entry in summary.items():
    if not stage.startswith("stage"):
      continue
    rate = entry["boundary_rate"][0]
    for method in STAGE_METHODS:
      if method not in entry:
        continue
      m = entry[method]
      lines.append(f"| {stage} | {method} | model rate {rate:.3f} | {_cell(m['precision'], n)} | "
                   f"{_cell(m['recall'], n)} | {_cell(m['f1'], n)} |")
    for method, m in entry["gt_rate"].items():
      lines.append(f"| {stage} | {method} | GT rate | {_cell(m['precision'], n)} | "
                   f"{_cell(m['recall'], n)} | {_cell(m['f1'], n)} |")
  for key, what in (("probe", "subtask (kind, target object class, purpose)"),
                    ("probe_type", "subtask type")):
    if key not in summary:
      continue
    lines += ["", f"Linear probe to the ground-truth {what} (fit on the validation half, "
              "scored on the test half):", "", "| features | accuracy | balanced accuracy |",
              "|---|---|---|"]
    for name, m in summary[key].items():
      lines.append(f"| {name} | {_cell(m['accuracy'], n)} | {_cell(m['balanced_accuracy'], n)} |")
  return "\n".join(lines)


def boundary_filmstrip(frames: np.ndarray, true: np.ndarray, predicted: Mapping[str, np.ndarray],
                       out_path: str, title: str = "", max_frames: int = 96,
                       columns: int = 16) -> str:
  """PNG of an episode's frames (decoded uint8 [T, H, W, 3]) with boundaries marked.

  Ground-truth subtask starts get a red frame; each predicted boundary set gets a letter in the
  frame's title (e.g. "1" for stage 1, "2" for stage 2) and a blue frame if any predicts one.
  Long episodes are subsampled evenly, keeping every frame that carries a boundary.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  num = len(frames)
  true = np.asarray(true, bool)[:num]
  marks = {name: np.asarray(b, bool)[:num] for name, b in predicted.items()}
  shown = set(np.linspace(0, num - 1, min(num, max_frames)).astype(int).tolist())
  shown |= set(np.flatnonzero(true).tolist())
  for b in marks.values():
    shown |= set(np.flatnonzero(b).tolist())
  shown = sorted(shown)
  rows = int(np.ceil(len(shown) / columns))
  fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.0, rows * 1.15 + 0.7),
                           squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, t in zip(axes.flat, shown):
    ax.imshow(frames[t])
    tags = [name for name, b in marks.items() if t < len(b) and b[t]]
    is_true = t < len(true) and true[t]
    label = f"t={t}" + (" GT" if is_true else "") + ("".join(f" {x}" for x in tags))
    if is_true or tags:
      ax.axis("on")
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_edgecolor("red" if is_true else "blue")
        spine.set_linewidth(3)
    ax.set_title(label, fontsize=6, color="red" if is_true else ("blue" if tags else "black"))
  fig.suptitle(f"{title}\nred = ground-truth subtask start; labels name the predicted boundary "
               f"sets ({', '.join(marks)})", fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path


# Ground truths: (boundary key under "subtask", name key under "extras"). "initial": the expert's
# initial subgoals (BabyAI) / phases (Meta-World); "leaf": the finest level of the BabyAI bot's
# plan, helper subgoals included (`data_pipeline/sim/babyai.py: leaf_runs`).
GROUND_TRUTHS = {"initial": ("boundary", "subtask_name"),
                 "leaf": ("leaf_boundary", "leaf_subtask_name")}


def _decode_frames(traj: Mapping[str, Any], length: int | None = None) -> np.ndarray:
  """The primary camera's frames [T, H, W, 3] uint8 of one RLDS trajectory (the first `length`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return np.stack([tf.io.decode_image(x, channels=3).numpy()
                   for x in traj["observation"]["image_primary"].numpy()[:length]])


def read_ground_truth(dataset_dir: str, split: str, episode_ids: set[str] | None = None,
                      keep_frames: set[str] | None = None, ground_truth: str = "initial"
                      ) -> tuple[dict, dict, dict, dict]:
  """({episode_id: boundary [T]}, {id: decoded frames} for `keep_frames`, {id: text},
  {id: subtask name [T] (str)}) of the `ground_truth` (GROUND_TRUTHS); the last dict is empty
  when the dataset stores no subtask names."""
  if ground_truth not in GROUND_TRUTHS:
    raise ValueError(f"ground_truth {ground_truth!r} not in {sorted(GROUND_TRUTHS)}")
  boundary_key, name_key = GROUND_TRUTHS[ground_truth]
  from data_pipeline import reader  # pylint: disable=g-import-not-at-top

  truth, frames, texts, types = {}, {}, {}, {}
  for traj in reader.read_trajectories(dataset_dir, split=split):
    episode_id = traj["episode_id"][0].numpy().decode()
    if episode_ids is not None and episode_id not in episode_ids:
      continue
    if boundary_key not in traj.get("subtask", {}):
      raise ValueError(f"{dataset_dir} ({split}) has no subtask/{boundary_key} ground truth "
                       f"({ground_truth!r}; BabyAI datasets have leaf labels since episode "
                       "format 2: regenerate)")
    truth[episode_id] = traj["subtask"][boundary_key].numpy().astype(bool)
    texts[episode_id] = traj["language_instruction"][0].numpy().decode()
    if name_key in traj.get("extras", {}):
      types[episode_id] = np.array([x.decode() for x in traj["extras"][name_key].numpy()])
    if keep_frames and episode_id in keep_frames:
      frames[episode_id] = _decode_frames(traj)
  return truth, frames, texts, types


def _load_skill_folder(skills_dir: str, split: str, labels_dir: str | None):
  """(manifest, {"s1"/"s2": boundaries}, {"s1"/"s2": skills}, labels_dir) of one split."""
  import json  # pylint: disable=g-import-not-at-top
  from hilam_jax.skill import extract  # pylint: disable=g-import-not-at-top

  with open(os.path.join(skills_dir, extract.MANIFEST)) as f:
    manifest = json.load(f)
  rels = [r for r in manifest["shards"] if r.split(os.sep)[-2] == split]
  if not rels:
    raise ValueError(f"{skills_dir} has no shards of split {split!r}")
  boundaries, skills = {"s1": {}, "s2": {}}, {"s1": {}, "s2": {}}
  for rel in rels:
    shard = extract.read_skill_shard(os.path.join(skills_dir, rel))
    for stage in boundaries:
      boundaries[stage].update(shard[f"boundary/{stage}"])
      skills[stage].update(shard[f"skill/{stage}"])
  return manifest, boundaries, skills, labels_dir or manifest["labels_dir"], rels


def run_evaluation(skills_dir: str | Sequence[str], dataset_dir: str, out_dir: str, *,
                   split: str = "val", tolerance: int = 2, num_filmstrips: int = 3,
                   labels_dir: str | None = None, probe_window: int | None = None,
                   change_point_methods: Sequence[str] = ("binseg", "pelt"),
                   ground_truth: str = "initial") -> dict[str, Any]:
  """Evaluates skill folders (one per seed) against ground truth; writes JSON, table, filmstrips.

  The held-out episodes of `split` are halved by `heldout_split` into validation and test
  (module docstring); figures are test-half figures, mean ± std over the skill folders.

  Args:
    skills_dir: output(s) of `experiments/extract_skills.py` (must cover `split`), e.g. the same
      setting trained with several seeds.
    dataset_dir: the RLDS dataset with `subtask/boundary` (the one the labels were made from).
    out_dir: receives skill_discovery.json, skill_discovery.md and filmstrip_<i>.png (the first
      skill folder's boundaries).
    split: the dataset's held-out split.
    tolerance: frames of slack when matching boundaries.
    num_filmstrips: episodes drawn (the first test-half ones in sorted-id order) as filmstrips.
    labels_dir: latent-action folder for the baselines (default: each skills manifest's).
    probe_window: frames of the trailing z^0 mean probed as "z0_mean"; None: the first folder's
      stage-2 mean chunk length on the validation half, rounded.
    change_point_methods: ruptures algorithms run as baselines.
    ground_truth: which subtasks are the truth (GROUND_TRUTHS): "initial" or "leaf".

  Returns:
    The dict written to skill_discovery.json: "results" (the first folder's per-stage results,
    `evaluate_stage_heldout` layout), "seeds" (per folder: results and probe), "summary"
    (`summarize_seeds`), "table".
  """
  from hilam_jax.lam import labeling  # pylint: disable=g-import-not-at-top

  dirs = [skills_dir] if isinstance(skills_dir, str) else list(skills_dir)
  folders = [_load_skill_folder(d, split, labels_dir) for d in dirs]
  ids = sorted(set.intersection(*(set(f[1]["s1"]) for f in folders)))
  val_ids, test_ids = heldout_split(ids)
  strip_ids = set(test_ids[:num_filmstrips])
  truth, frames, texts, types = read_ground_truth(dataset_dir, split, set(ids), strip_ids,
                                                  ground_truth)
  latent_cache: dict[str, tuple[dict, dict]] = {}
  per_seed = []
  for directory, (manifest, boundaries, skills, labels, rels) in zip(dirs, folders):
    if labels not in latent_cache:
      latents = {}
      for rel in rels:
        latents.update(labeling.read_shard(os.path.join(labels, rel)))
      lengths = {e: len(boundaries["s1"][e]) for e in ids}
      cut = {e: np.asarray(latents[e])[:lengths[e]] for e in ids if e in latents}
      fits = {m: (ChangePointBaseline(_subset(cut, [e for e in val_ids if e in cut]), m),
                  ChangePointBaseline(_subset(cut, [e for e in test_ids if e in cut]), m))
              for m in change_point_methods}
      latent_cache[labels] = (latents, fits)
    latents, fits = latent_cache[labels]
    results = {f"stage{stage[1]}": evaluate_stage_heldout(
        boundaries[stage], latents, truth, val_ids, test_ids, tolerance,
        change_point_methods=change_point_methods, change_points=fits)
               for stage in ("s1", "s2")}
    probes = {}
    labelled = [e for e in ids if e in types and e in latents]
    if types and labelled:
      window = probe_window or max(1, int(round(results["stage2"]["mean_chunk_length"])))
      features = {"z1": skills["s1"], "z2": skills["s2"], "z0": latents,
                  "z0_mean": {e: trailing_mean(latents[e], window) for e in labelled}}
      for level, to_label in PROBE_LABELS.items():
        labels_by_id = {e: np.array([to_label(x) for x in types[e][:len(boundaries["s1"][e])]])
                        for e in labelled}
        probes[level] = dict(probe_report(
            features, labels_by_id, [e for e in val_ids if e in labels_by_id],
            [e for e in test_ids if e in labels_by_id]), z0_mean_window=window)
    per_seed.append({"skills_dir": os.path.abspath(directory), "results": results,
                     "probe": probes.get("target"), "probe_type": probes.get("type"),
                     "skill_model": manifest.get("skill_model")})
  summary = summarize_seeds(per_seed)
  os.makedirs(out_dir, exist_ok=True)
  strips = []
  first_boundaries = folders[0][1]
  for i, episode_id in enumerate(sorted(strip_ids & set(frames))):
    length = len(first_boundaries["s1"][episode_id])
    strips.append(boundary_filmstrip(
        frames[episode_id][:length], truth[episode_id][:length],
        {"1": first_boundaries["s1"][episode_id], "2": first_boundaries["s2"][episode_id]},
        os.path.join(out_dir, f"filmstrip_{i}.png"),
        title=f"{episode_id}: \"{texts[episode_id]}\" ({length} frames)"))
  table = format_table(summary)
  report = {"skills_dirs": [os.path.abspath(d) for d in dirs],
            "dataset_dir": os.path.abspath(dataset_dir), "split": split, "tolerance": tolerance,
            "ground_truth": ground_truth,
            "heldout": {"validation_episodes": len(val_ids), "test_episodes": len(test_ids),
                        "rule": "sha256(episode_id) last hex digit even -> validation"},
            "skill_model": per_seed[0]["skill_model"], "results": per_seed[0]["results"],
            "seeds": per_seed, "summary": summary, "filmstrips": strips, "table": table}
  _write_report(out_dir, "skill_discovery", report,
                f"Skill discovery ({split} split halved into validation / test, tolerance "
                f"±{tolerance} frames, {ground_truth} subtasks)")
  return report


def chunk_lengths(boundaries: Mapping[str, np.ndarray]) -> np.ndarray:
  """Lengths in frames of every chunk of every episode (a chunk starts at frame 0 and at each
  boundary, and runs to the next start or the episode's end): int64 [number of chunks]."""
  lengths = []
  for boundary in boundaries.values():
    boundary = np.asarray(boundary, bool)
    if not len(boundary):
      continue
    starts = np.union1d([0], np.flatnonzero(boundary))
    lengths.append(np.diff(np.append(starts, len(boundary))))
  return np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)


def skill_filmstrips(skills_dir: str, dataset_dir: str, out_dir: str, *, split: str = "val",
                     num_episodes: int = 3, episode_ids: Sequence[str] | None = None
                     ) -> dict[str, Any]:
  """Filmstrips of the learned boundaries on any video dataset, ground truth or not.

  For a user's own videos (`experiments/convert_videos.py`), where `run_evaluation` has no
  subtask labels to score against: draws `num_episodes` episodes of `split` (the first in sorted
  id order, or `episode_ids`) with the stage-1 and stage-2 boundaries, and red ground-truth
  starts when the dataset has `subtask/boundary`.

  Args:
    skills_dir: output of `hilam_jax.skill.extract.extract_skills` covering `split`.
    dataset_dir: the RLDS dataset the skills' labels were made from.
    out_dir: receives skill_filmstrip_<i>.png.
    split, num_episodes, episode_ids: which episodes to draw.

  Returns:
    {"filmstrips": [png paths], "episode_ids": [...], "chunk_lengths": {"s1"/"s2": the
    `chunk_lengths` of every episode of the split}, "mean_chunk_length": {"s1"/"s2": float}}.

  Raises:
    ValueError: `episode_ids` not in the skills of `split`.
  """
  from data_pipeline import reader  # pylint: disable=g-import-not-at-top

  _, boundaries, _, _, _ = _load_skill_folder(skills_dir, split, None)
  ids = sorted(boundaries["s1"])
  chosen = list(episode_ids) if episode_ids is not None else ids[:num_episodes]
  unknown = sorted(set(chosen) - set(ids))
  if unknown:
    raise ValueError(f"episodes {unknown[:5]} are not in the {split!r} skills of {skills_dir}")
  strips = []
  for traj in reader.read_trajectories(dataset_dir, split=split):
    episode_id = traj["episode_id"][0].numpy().decode()
    if episode_id not in chosen:
      continue
    length = len(boundaries["s1"][episode_id])
    frames = _decode_frames(traj, length)
    truth = (traj["subtask"]["boundary"].numpy().astype(bool)
             if "boundary" in traj.get("subtask", {}) else np.zeros(length, bool))
    text = traj["language_instruction"][0].numpy().decode()
    index = chosen.index(episode_id)
    strips.append((index, boundary_filmstrip(
        frames, truth[:length],
        {"1": boundaries["s1"][episode_id], "2": boundaries["s2"][episode_id]},
        os.path.join(out_dir, f"skill_filmstrip_{index}.png"),
        title=f"{episode_id}: \"{text}\" ({length} frames)")))
  lengths = {stage: chunk_lengths(boundaries[stage]) for stage in ("s1", "s2")}
  return {"filmstrips": [path for _, path in sorted(strips)], "episode_ids": chosen,
          "chunk_lengths": lengths,
          "mean_chunk_length": {stage: mean_chunk_length(boundaries[stage])
                                for stage in ("s1", "s2")}}


def _jsonable(value: Any) -> Any:
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value)}")


def _action_signal(actions: Mapping[str, np.ndarray], val_ids: Sequence[str]
                   ) -> dict[str, np.ndarray]:
  """Integer actions one-hot, continuous ones z-scored per dimension (validation statistics)."""
  first = np.asarray(next(iter(actions.values())))
  if np.issubdtype(first.dtype, np.integer):
    classes = 1 + max(int(np.max(a)) for a in actions.values() if np.size(a))
    return {e: np.eye(classes)[np.asarray(a).reshape(-1)] for e, a in actions.items()}
  flat = {e: np.asarray(a, np.float64).reshape(len(a), -1) for e, a in actions.items()}
  mean, std = _zscore_stats([flat[e] for e in val_ids], first.reshape(len(first), -1).shape[1])
  return {e: (a - mean) / std for e, a in flat.items()}


def _zscore_stats(arrays: Sequence[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-dimension mean and std (+1e-6) of the rows of `arrays`; (0, 1) if they have none (a
  validation half too small to hold an episode)."""
  mean, std = statistics.per_dimension_mean_std(arrays, dim)
  return mean, std + 1e-6


def run_ceilings(labels_dir: str, dataset_dir: str, out_dir: str, *, split: str = "val",
                 tolerance: int = 2, ground_truth: str = "initial") -> dict[str, Any]:
  """`oracle_count_ceilings` on the held-out test half for z^0, z-scored z^0 and the true actions
  (when the dataset has them: action-free video gets no action row).

  The latents come from the labeling job's folder, the ground truth and the actions from the
  dataset; every signal is cut to the latents' length (t < T - k). z-score statistics (and the
  continuous actions' ones) come from the validation half. Writes ceiling.json and ceiling.md.
  """
  from hilam_jax.lam import labeling  # pylint: disable=g-import-not-at-top
  from data_pipeline import reader  # pylint: disable=g-import-not-at-top

  if ground_truth not in GROUND_TRUTHS:
    raise ValueError(f"ground_truth {ground_truth!r} not in {sorted(GROUND_TRUTHS)}")
  boundary_key = GROUND_TRUTHS[ground_truth][0]
  latents = labeling.read_labels(labels_dir)
  truth, actions = {}, {}
  for traj in reader.read_trajectories(dataset_dir, split=split):
    episode_id = traj["episode_id"][0].numpy().decode()
    if episode_id not in latents:
      continue
    if boundary_key not in traj.get("subtask", {}):
      raise ValueError(f"{dataset_dir} ({split}) has no subtask/{boundary_key} ground truth")
    length = len(latents[episode_id])
    truth[episode_id] = traj["subtask"][boundary_key].numpy().astype(bool)[:length]
    if "action" in traj:  # action-free video has none: no action row
      actions[episode_id] = traj["action"].numpy()[:length]
  if not truth:
    raise ValueError(f"no episode of {dataset_dir} ({split}) has labels in {labels_dir}")
  val_ids, test_ids = heldout_split(sorted(truth))
  z = {e: np.asarray(latents[e], np.float64) for e in truth}
  mean, std = _zscore_stats([z[e] for e in val_ids], next(iter(z.values())).shape[-1])
  signals = {"z0": z, "z0_zscore": {e: (v - mean) / std for e, v in z.items()}}
  if actions and len(actions) == len(truth):
    signals["action"] = _action_signal(actions, val_ids)
  test_truth = _subset(truth, test_ids)
  results = oracle_count_ceilings({n: _subset(s, test_ids) for n, s in signals.items()},
                                  test_truth, tolerance)
  lines = ["| signal | method | P | R | F1 | true segmentation's l2 cost / optimum | "
           "episodes where it is optimal |", "|---|---|---|---|---|---|---|"]
  for name, rows in results.items():
    for method in ORACLE_SEGMENTERS:
      r = rows[method]
      extra = (f"{r['gt_cost_ratio']:.2f} | {r['gt_optimal_share']:.2f}"
               if method == "exact_l2" else "– | –")
      lines.append(f"| {name} | {method} | {r['precision']:.3f} | {r['recall']:.3f} | "
                   f"{r['f1']:.3f} | {extra} |")
  table = "\n".join(lines)
  report = {"labels_dir": os.path.abspath(labels_dir), "dataset_dir": os.path.abspath(dataset_dir),
            "split": split, "tolerance": tolerance, "ground_truth": ground_truth,
            "test_episodes": len(test_ids), "results": results, "table": table}
  _write_report(out_dir, "ceiling", report,
                f"Oracle-count ceilings ({split} test half, ±{tolerance} frames, "
                f"{ground_truth} subtasks, {len(test_ids)} episodes)")
  return report


def _write_report(out_dir: str, name: str, report: Mapping[str, Any], title: str) -> None:
  """<out_dir>/<name>.json (the report) and <name>.md (the title and report["table"])."""
  import json  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
    json.dump(report, f, indent=1, default=_jsonable)
  with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
    f.write(f"# {title}\n\n{report['table']}\n")
