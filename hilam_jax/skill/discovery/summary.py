"""Seed summaries (mean ± std over skill folders) and the markdown tables of skill discovery."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


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
