"""The experiment's report: tables in the paper's format, plots, and the orderings it claims.

Writes into <workdir>/report: report.md, success_vs_demos.png, training_curves.png, the skill
filmstrips (copied), and results.json (everything measured, with config, versions and seeds).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from data_pipeline import run_info
from hilam_jax.training import metrics as metrics_lib

LABELS = {
    "baku": "BAKU (demos only)",
    "flat_z0": "flat BAKU + video z^0 pretraining",
    "flat_z2": "flat BAKU + video z̄^2 pretraining",
    "hilam": "HiLAM (z̄^2, z^0)",
    "hilam_no_pretrain": "HiLAM without video pretraining",
    "hilam_s1_z0": "HiLAM (z̄^1, z^0)",
    "hilam_s2_s1": "HiLAM (z̄^2, z̄^1)",
}


def _cell(result: Mapping[str, Any] | None) -> str:
  if not result:
    return "–"
  return f"{result['success_rate']:.2f} [{result['ci_low']:.2f}, {result['ci_high']:.2f}]"


def _rate(success: Mapping, method: str, fraction: str) -> float | None:
  r = success.get(method, {}).get(fraction)
  return None if r is None else float(r["success_rate"])


def _ordering(name: str, left: float | None, right: float | None, strict: bool,
              left_r: Mapping | None = None, right_r: Mapping | None = None) -> dict:
  if left is None or right is None:
    return {"claim": name, "holds": None, "detail": "not measured"}
  holds = left > right if strict else left >= right
  detail = f"{left:.2f} vs {right:.2f}"
  if left_r and right_r:
    overlap = left_r["ci_low"] <= right_r["ci_high"] and right_r["ci_low"] <= left_r["ci_high"]
    detail += " (95% CIs overlap: not significant)" if overlap else " (95% CIs do not overlap)"
  return {"claim": name, "holds": bool(holds), "detail": detail}


def orderings(success: Mapping[str, Mapping[str, Any]], fractions: list[str]) -> list[dict]:
  """The paper's orderings, checked on the measured success rates."""
  low, high = fractions[0], fractions[-1]
  get = lambda m, f: success.get(m, {}).get(f)  # noqa: E731
  out = [_ordering(f"HiLAM > BAKU at the lowest demo fraction ({low})",
                   _rate(success, "hilam", low), _rate(success, "baku", low), True,
                   get("hilam", low), get("baku", low))]
  for f in fractions:
    flats = [m for m in ("flat_z0", "flat_z2") if _rate(success, m, f) is not None]
    best = max(flats, key=lambda m: _rate(success, m, f)) if flats else None
    out.append(_ordering(
        f"hierarchy >= best flat latent pretraining at {f} ({best})",
        _rate(success, "hilam", f), _rate(success, best, f) if best else None, False,
        get("hilam", f), get(best, f) if best else None))
  out.append(_ordering(f"z̄^2 >= z̄^1 as HiLAM's skill at {high} ((z̄^2, z^0) vs (z̄^1, z^0))",
                       _rate(success, "hilam", high), _rate(success, "hilam_s1_z0", high), False,
                       get("hilam", high), get("hilam_s1_z0", high)))
  out.append(_ordering(f"video pretraining helps HiLAM at {low}",
                       _rate(success, "hilam", low), _rate(success, "hilam_no_pretrain", low),
                       True, get("hilam", low), get("hilam_no_pretrain", low)))
  return out


def _plot_success(success: Mapping, fractions: list[str], path: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  xs = [float(f) * 100 for f in fractions]
  for method, by_fraction in success.items():
    present = [f for f in fractions if f in by_fraction]
    if len(present) < 2:
      continue
    rates = np.array([by_fraction[f]["success_rate"] for f in present])
    lo = rates - np.array([by_fraction[f]["ci_low"] for f in present])
    hi = np.array([by_fraction[f]["ci_high"] for f in present]) - rates
    ax.errorbar([float(f) * 100 for f in present], rates, yerr=[lo, hi], marker="o", capsize=3,
                label=LABELS.get(method, method))
  ax.set_xticks(xs)
  ax.set_xlabel("% of demonstrations used for fine-tuning")
  ax.set_ylabel("success rate (95% CI)")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_curves(policies_dir: str, path: str) -> list[str]:
  runs = []
  for root, dirs, _ in os.walk(policies_dir):
    if "tensorboard" in dirs:
      runs.append(root)
  runs.sort()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for run in runs:
    points = metrics_lib.read_scalars(os.path.join(run, "tensorboard"), "train/loss")
    if not points:
      continue
    name = os.path.relpath(run, policies_dir)
    ax = axes[0] if name.startswith("pretrain") else axes[1]
    steps, values = zip(*points)
    ax.plot(steps, values, label=name, lw=1)
  for ax, title in zip(axes, ("pretraining (latent targets)", "fine-tuning (actions)")):
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=5)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return runs


def write_report(results: dict, paths: Any, config: Any) -> str:
  """Writes the report folder; returns the path of report.md."""
  out = paths.report
  os.makedirs(out, exist_ok=True)
  success = results["policies"]["success"]
  fractions = [f"{f:g}" for f in config.fractions]
  _plot_success(success, fractions, os.path.join(out, "success_vs_demos.png"))
  _plot_curves(paths.policies, os.path.join(out, "training_curves.png"))
  strips = []
  for i, src in enumerate(results["skills"]["result"].get("filmstrips", [])):
    if src and os.path.exists(src):
      dst = os.path.join(out, f"skill_filmstrip_{i}.png")
      shutil.copyfile(src, dst)
      strips.append(os.path.basename(dst))
  checks = orderings(success, fractions)
  results = dict(results, orderings=checks)

  lines = [f"# HiLAM data-efficiency experiment: {config.level}", ""]
  data = results["data"]
  lines += [f"Action-free video: {data['video_summary']['train']['episodes']} train episodes; "
            f"demonstrations: {data['demos_summary']['train']['episodes']} train episodes "
            f"(fractions {', '.join(fractions)}); evaluation: {config.eval.num_episodes} "
            f"held-out seeds per policy (success rate, 95% Wilson interval).", ""]
  lines += ["## Success rate vs demonstrations", "",
            "| method | " + " | ".join(f"{float(f) * 100:g}% demos" for f in fractions) + " |",
            "|---|" + "---|" * len(fractions)]
  for method in config.methods:
    lines.append(f"| {LABELS.get(method, method)} | "
                 + " | ".join(_cell(success.get(method, {}).get(f)) for f in fractions) + " |")
  lines += ["", "![success vs demos](success_vs_demos.png)", ""]
  top = fractions[-1]
  lines += [f"## Ablation ({float(top) * 100:g}% demos, the paper's format)", "",
            "| method | pretraining targets | success |", "|---|---|---|"]
  rows = [("flat BAKU", "video z^0", "flat_z0"), ("flat BAKU", "video z̄^2", "flat_z2"),
          ("HiLAM", "none (demo video only)", "hilam_no_pretrain"),
          ("HiLAM", "video (z̄^1, z^0)", "hilam_s1_z0"), ("HiLAM", "video (z̄^2, z^0)", "hilam"),
          ("HiLAM", "video (z̄^2, z̄^1)", "hilam_s2_s1"), ("BAKU", "none", "baku")]
  for model, targets, method in rows:
    lines.append(f"| {model} | {targets} | {_cell(success.get(method, {}).get(top))} |")
  lines += ["", "## The paper's orderings on this benchmark", ""]
  for c in checks:
    verdict = {True: "holds", False: "does NOT hold", None: "not measured"}[c["holds"]]
    lines.append(f"- {c['claim']}: **{verdict}** ({c['detail']})")
  disc = results["skills"]["result"].get("discovery", {})
  if disc:
    lines += ["", "## Skill discovery (video val split, ±2 frames)", ""]
    if all(r.get("model", {}).get("ground_truth", 0) == 0 for r in disc.values()):
      lines.append("Not measurable on this level: its episodes have a single subtask, so there are "
                   "no ground-truth boundaries after the first frame (see the README for F1 on "
                   "BabyAI BossLevel / PutNextLocal and Meta-World).")
    else:
      lines += ["| stage | model P / R / F1 | fixed-length F1 | latent-delta F1 |",
                "|---|---|---|---|"]
      for stage, r in disc.items():
        m = r.get("model", {})
        lines.append(f"| {stage} | {m.get('precision', 0):.3f} / {m.get('recall', 0):.3f} / "
                     f"{m.get('f1', 0):.3f} | {r.get('fixed_length', {}).get('f1', 0):.3f} | "
                     f"{r.get('latent_delta', {}).get('f1', 0):.3f} |")
  lines += ["", "## Stages", ""]
  for stage, seconds in results["stage_seconds"].items():
    lines.append(f"- {stage}: {seconds:.0f} s")
  lines += ["", "![training curves](training_curves.png)", ""]
  lines += [f"![skill filmstrip]({s})" for s in strips]
  lines += ["", f"Seed {config.seed}; package versions and the full config in results.json."]
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(run_info.to_jsonable(results), f, indent=1)
  return path
