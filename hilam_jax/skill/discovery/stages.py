"""One skill stage scored against ground truth, beside the baselines at the same boundary budget
(`evaluate_stage_heldout`: budgets set on the validation half, figures from the test half).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from hilam_jax.skill.discovery.baselines import (ChangePointBaseline, delta_threshold_boundaries,
                                                 fixed_length_boundaries, latent_change)
from hilam_jax.skill.discovery.boundaries import (boundary_rate, mean_chunk_length,
                                                  precision_recall_f1)


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


def subset(values: Mapping[str, Any], ids: Sequence[str]) -> dict[str, Any]:
  """{episode id: values[id]} for `ids`, in their order."""
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
  val_lat, test_lat = subset(latents, val_ids), subset(latents, test_ids)
  val_gt, test_gt = subset(truth, val_ids), subset(truth, test_ids)
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
  val_pred, test_pred = subset(pred, val_ids), subset(pred, test_ids)
  val_gt = subset(gt, val_ids)
  result = {"val_episodes": len(val_ids), "test_episodes": len(test_ids),
            "mean_chunk_length": mean_chunk_length(val_pred), "boundary_rate": boundary_rate(
                val_pred),
            "test_boundary_rate": boundary_rate(test_pred),
            "gt_mean_chunk_length": mean_chunk_length(val_gt), "gt_rate": None,
            "model": precision_recall_f1(test_pred, subset(gt, test_ids), tolerance),
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
