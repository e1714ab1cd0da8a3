"""The experiment's report: tables in the paper's format over training seeds, plots, the orderings
the paper claims (as paired differences across seeds), and the diagnostics that explain them.

Writes into <workdir>/report: report.md, success_vs_demos.png, training_curves.png (validation
loss of every run: the convergence evidence), the skill filmstrips (copied), and results.json
(everything measured, with config, versions and seeds).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping, Sequence

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from data_pipeline import run_info
from hilam_jax.evaluation import stats
from hilam_jax.training import loop as training_loop
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
# Validation loss moving by less than this fraction over a run's last quarter counts as flat.
FLAT_TOLERANCE = 0.05


def _fmt(x: float) -> str:
  return "nan" if x != x else f"{x:.2f}"  # NaN != NaN


def _cell(cell: Mapping[str, Any] | None) -> str:
  """"0.47 [0.26, 0.69] (0.37, 0.52, 0.52)": mean, 95% t-interval, per-seed values."""
  if not cell:
    return "–"
  if "offline" in cell:  # a held-out action error: more digits, no Wilson interval
    per_seed = ", ".join(f"{v:.4f}" for v in cell["values"])
    if cell["num_seeds"] == 1:
      return f"{cell['mean']:.4f} (1 seed)"
    return f"{cell['mean']:.4f} [{cell['ci_low']:.4f}, {cell['ci_high']:.4f}] ({per_seed})"
  per_seed = ", ".join(f"{v:.2f}" for v in cell["values"])
  if cell["num_seeds"] == 1:
    pooled = cell["pooled"]
    return f"{cell['mean']:.2f} [{pooled['ci_low']:.2f}, {pooled['ci_high']:.2f}] (Wilson, 1 seed)"
  return f"{cell['mean']:.2f} [{_fmt(cell['ci_low'])}, {_fmt(cell['ci_high'])}] ({per_seed})"


def paired_difference(per_seed: Sequence[Mapping[str, Any]], left: str, right: str,
                      fraction: str) -> dict[str, Any] | None:
  """Per-seed success differences left - right at `fraction` (same seed = same demo subset and
  the same pretraining seed), their mean and 95% t-interval; None if no seed has both."""
  rates: dict[str, dict[int, float]] = {left: {}, right: {}}
  for row in per_seed:
    if row["method"] in rates and f"{row['fraction']:g}" == fraction:
      rates[row["method"]][row["seed"]] = row["success_rate"]
  seeds = sorted(set(rates[left]) & set(rates[right]))
  if not seeds:
    return None
  diffs = [rates[left][s] - rates[right][s] for s in seeds]
  return dict(stats.seed_interval(diffs), seeds=seeds, left=[rates[left][s] for s in seeds],
              right=[rates[right][s] for s in seeds])


def _claim(name: str, left: str, right: str, fraction: str, per_seed, strict: bool) -> dict:
  diff = paired_difference(per_seed, left, right, fraction)
  if diff is None:
    return {"claim": name, "holds": None, "detail": "not measured", "left": left, "right": right,
            "fraction": fraction}
  mean = diff["mean"]
  holds = mean > 0 if strict else mean >= 0
  detail = (f"{np.mean(diff['left']):.2f} vs {np.mean(diff['right']):.2f}, paired difference "
            f"{mean:+.2f}")
  if diff["num_seeds"] > 1:
    low, high = diff["ci_low"], diff["ci_high"]
    detail += f" [{low:+.2f}, {high:+.2f}] over {diff['num_seeds']} seeds"
    significant = low > 0 or high < 0
    detail += ": the interval excludes 0" if significant else ": the interval contains 0"
  else:
    significant = None
    detail += " (1 seed: no interval)"
  return {"claim": name, "holds": bool(holds), "significant": significant, "detail": detail,
          "left": left, "right": right, "fraction": fraction, "difference": diff}


def _extra_seeds_text(config: Any, per_seed: Sequence[Mapping[str, Any]]) -> str:
  """The evaluated cells of seeds beyond config.seeds (`extra_seeds`), as the run has them."""
  extra = [(r["method"], float(r["fraction"]), r["seed"]) for r in per_seed
           if r["seed"] not in tuple(config.seeds)]
  if not extra:
    return ""
  seeds = sorted({s for _, _, s in extra})
  methods = list(dict.fromkeys(m for m, _, _ in extra))
  fractions = list(dict.fromkeys(f for _, f, _ in extra))
  return (f", and {seeds} for {', '.join(methods)} at "
          f"{', '.join(f'{f:g}' for f in fractions)}")


def orderings(success: Mapping[str, Mapping[str, Any]], per_seed: Sequence[Mapping[str, Any]],
              fractions: Sequence[str]) -> list[dict]:
  """The paper's orderings, each as a paired per-seed difference of success rates."""
  low = fractions[0]
  out = [_claim(f"HiLAM > BAKU at the lowest demo fraction ({low})", "hilam", "baku", low,
                per_seed, True)]
  for f in fractions:
    flats = [m for m in ("flat_z0", "flat_z2") if f in success.get(m, {})]
    best = max(flats, key=lambda m: success[m][f]["mean"]) if flats else "flat_z0"
    out.append(_claim(f"hierarchy >= best flat latent pretraining at {f} ({best})", "hilam",
                      best, f, per_seed, False))
  for f in fractions:
    if f in success.get("hilam_s1_z0", {}):
      out.append(_claim(f"z̄^2 >= z̄^1 as HiLAM's skill at {f} ((z̄^2, z^0) vs (z̄^1, z^0))",
                        "hilam", "hilam_s1_z0", f, per_seed, False))
  out.append(_claim(f"video pretraining helps HiLAM at {low}", "hilam", "hilam_no_pretrain", low,
                    per_seed, True))
  out.append(_claim(f"video pretraining helps flat BAKU at {low} (z^0)", "flat_z0", "baku", low,
                    per_seed, True))
  return out


def _plot_success(success: Mapping, fractions: list[str], path: str,
                  ylabel: str = "success rate") -> None:
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for method, by_fraction in success.items():
    present = [f for f in fractions if f in by_fraction]
    if len(present) < 2:
      continue
    xs = [float(f) * 100 for f in present]
    means = np.array([by_fraction[f]["mean"] for f in present])
    lo = np.array([by_fraction[f]["ci_low"] for f in present])
    hi = np.array([by_fraction[f]["ci_high"] for f in present])
    err = None if np.isnan(lo).any() else [means - lo, hi - means]
    line = ax.errorbar(xs, means, yerr=err, marker="o", capsize=3,
                       label=LABELS.get(method, method))
    for f, x in zip(present, xs):  # every seed's value
      ax.scatter([x] * len(by_fraction[f]["values"]), by_fraction[f]["values"], s=8,
                 color=line[0].get_color(), alpha=0.5)
  ax.set_xticks([float(f) * 100 for f in fractions])
  ax.set_xlabel("% of demonstrations used for fine-tuning")
  ax.set_ylabel(f"{ylabel} (mean, 95% t-interval; dots: seeds)")
  if ylabel == "success rate":
    ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:  # none with a single fraction
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def flattened(curve: Sequence[tuple[int, float]]) -> dict[str, Any]:
  """Relative change of a validation-loss curve over its last quarter; flat if it fell by less
  than FLAT_TOLERANCE (a rise, i.e. overfitting, is also no further gain)."""
  if len(curve) < 2:
    return {"last_quarter_change": None, "flattened": None}
  last_step, last = curve[-1]
  earlier = [v for s, v in curve if s <= 0.75 * last_step] or [curve[0][1]]
  change = (last - earlier[-1]) / max(abs(earlier[-1]), 1e-9)
  best_step, best = min(curve, key=lambda p: p[1])
  return {"last_quarter_change": round(change, 4), "flattened": bool(change > -FLAT_TOLERANCE),
          "min_val_loss": round(best, 4), "min_val_loss_step": best_step}


def _training_runs(policies_dir: str) -> list[str]:
  runs = []
  # followlinks: runs linked in from another workdir (a shared pretraining folder) count too
  for root, dirs, _ in os.walk(policies_dir, followlinks=True):
    if "tensorboard" in dirs:
      runs.append(root)
  return sorted(runs)


def convergence(policies_dir: str) -> dict[str, dict]:
  """{run: validation curve and `flattened` verdict} for every policy run of the experiment, and
  for an early-stopped run where it stopped and the step it kept ("early_stopping")."""
  out = {}
  for run in _training_runs(policies_dir):
    curve = metrics_lib.read_scalars(os.path.join(run, "tensorboard"), "eval/loss")
    out[os.path.relpath(run, policies_dir)] = {"eval_loss": curve, **flattened(curve)}
    stopped = os.path.join(run, "checkpoints", training_loop.EARLY_STOPPED)
    if os.path.exists(stopped):
      with open(stopped) as f:
        out[os.path.relpath(run, policies_dir)]["early_stopping"] = json.load(f)
  return out


def _early_stopping_text(curves: Mapping[str, Mapping]) -> list[str]:
  """One line on the early-stopped runs: how many stopped before their last step, which steps
  they kept."""
  rules = {n: c["early_stopping"] for n, c in curves.items() if c.get("early_stopping")}
  if not rules:
    return []
  metric = next(iter(rules.values()))["metric"]
  kept = sorted(r["best_step"] for r in rules.values())
  stopped = sorted(r["stopped_at"] for r in rules.values())
  return ["", f"Early stopping on validation {metric}: {len(rules)} runs, stopped at steps "
          f"{stopped[0]}-{stopped[-1]}, kept steps {kept[0]}-{kept[-1]} (per run in "
          "results.json, convergence)."]


def _plot_curves(curves: Mapping[str, Mapping], path: str) -> None:
  groups = {"pretraining (latent targets)": [], "fine-tuning, lowest fraction": [],
            "fine-tuning, other fractions": []}
  fractions = sorted({n.split("/")[0] for n in curves if n.startswith("demos_")},
                     key=lambda d: int(d.split("_")[1].rstrip("pct")))
  for name in curves:
    if name.startswith("pretrain"):
      groups["pretraining (latent targets)"].append(name)
    elif fractions and name.startswith(fractions[0]):
      groups["fine-tuning, lowest fraction"].append(name)
    else:
      groups["fine-tuning, other fractions"].append(name)
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, (title, names) in zip(axes, groups.items()):
    for name in names:
      points = curves[name]["eval_loss"]
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, label=name, lw=1)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if names:
      ax.legend(fontsize=4)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _high_policy_fit(train_metrics: Mapping[str, Mapping]) -> dict[str, dict]:
  """pi^h's validation fit of its skill targets per pretraining run (R^2, MSE)."""
  out = {}
  for name, m in train_metrics.items():
    if "/high_" in name and "skill/r2" in m:
      out[name] = {"r2": m["skill/r2"], "mse": m.get("skill/mse")}
  return out


def write_report(results: dict, paths: Any, config: Any) -> str:
  """Writes the report folder; returns the path of report.md."""
  out = paths.report
  os.makedirs(out, exist_ok=True)
  policies = results["policies"]
  success, per_seed = policies["success"], policies["per_seed"]
  fractions = [f"{f:g}" for f in config.fractions]
  # Without the world's simulator the cells are held-out action errors (experiment.offline_result).
  offline = next((c for by_f in success.values() for c in by_f.values() if "offline" in c), None)
  metric = offline["metric"] if offline else "success rate"
  _plot_success(success, fractions, os.path.join(out, "success_vs_demos.png"), ylabel=metric)
  curves = convergence(paths.policies)
  _plot_curves(curves, os.path.join(out, "training_curves.png"))
  strips = []
  for i, src in enumerate(results["skills"]["result"].get("filmstrips", [])):
    if src and os.path.exists(src):
      dst = os.path.join(out, f"skill_filmstrip_{i}.png")
      shutil.copyfile(src, dst)
      strips.append(os.path.basename(dst))
  checks = [] if offline else orderings(success, per_seed, fractions)
  high_fit = _high_policy_fit(policies["train_metrics"])
  results = dict(results, orderings=checks, convergence=curves, high_policy_fit=high_fit)

  seeds = list(config.seeds)
  data = results["data"]
  # The world's name when the level is every task of the demos (level "", e.g. Meta-World).
  title = config.level or config.get("world", "babyai")
  lines = [f"# HiLAM data-efficiency experiment: {title}", ""]
  lines += [f"Action-free video: {data['video_summary']['train']['episodes']} train episodes; "
            f"demonstrations: {data['demos_summary']['train']['episodes']} train episodes "
            f"(fractions {', '.join(fractions)}, nested subsets chosen per seed); training seeds "
            f"{seeds}{_extra_seeds_text(config, per_seed)} (each seed pretrains and fine-tunes "
            "its own policies); evaluation: "
            f"{config.eval.num_episodes} held-out environment seeds per policy, actions "
            f"{'sampled' if config.eval.actions == 'sample' else 'greedy'}.", "",
            "Cells: mean success over training seeds [95% t-interval across seeds] (per-seed "
            "values). With one seed: the Wilson interval of its episodes.", ""]
  if offline:
    lines += [f"No success rates: {offline['offline']}. The cells are each fine-tuned policy's "
              f"{metric} on the demonstrations' held-out (val) episodes, lower is better "
              "(HiLAM: pi^l acting on pi^h's predicted skill, as at test time); the paper's "
              "orderings are not checked.", ""]
  lines += [f"## {metric[0].upper() + metric[1:]} vs demonstrations", "",
            "| method | " + " | ".join(f"{float(f) * 100:g}% demos" for f in fractions) + " |",
            "|---|" + "---|" * len(fractions)]
  for method in list(config.methods) + list(config.ablations):
    lines.append(f"| {LABELS.get(method, method)} | "
                 + " | ".join(_cell(success.get(method, {}).get(f)) for f in fractions) + " |")
  lines += ["", "![success vs demos](success_vs_demos.png)", ""]
  if checks:
    lines += ["## The paper's orderings on this benchmark", "",
              "Each claim is checked on the paired per-seed difference (same seed: same demos, "
              "same pretraining seed); it holds if the mean difference has the claimed sign, "
              "and is significant if the 95% t-interval of the difference excludes 0.", ""]
  for c in checks:
    verdict = {True: "holds", False: "does NOT hold", None: "not measured"}[c["holds"]]
    lines.append(f"- {c['claim']}: **{verdict}** ({c['detail']})")

  lines += ["", "## Why: what the hierarchy's parts do", ""]
  if high_fit:
    lines += ["pi^h's fit of its skill targets on the video's validation episodes (R^2 = share "
              "of the skills' variance it predicts from the observation and instruction):", ""]
    lines += [f"- {name}: R^2 {m['r2']:.3f}, MSE {m['mse']:.4f}" for name, m in high_fit.items()]
    lines.append("")
  uses = [(m, f, c["skill_use"]) for m, by_f in success.items() for f, c in by_f.items()
          if "skill_use" in c]
  if uses:
    lines += ["What the fine-tuned pi^l takes from its skill (demos' val frames, mean over "
              "seeds): action accuracy with pi^h's skill, with the skill of another frame "
              "(shuffled), and the total-variation distance between the two action "
              "distributions (0: pi^l ignores the skill).", "",
              "| method | fraction | accuracy | accuracy, shuffled skill | TV distance |",
              "|---|---|---|---|---|"]
    for method, fraction, u in uses:
      lines.append(f"| {LABELS.get(method, method)} | {fraction} | {u['accuracy']:.3f} | "
                   f"{u['accuracy_shuffled_skill']:.3f} | {u['tv_distance_shuffled_skill']:.3f} |")
    lines.append("")

  disc = results["skills"]["result"].get("discovery", {})
  if disc:
    lines += ["## Skill discovery (video val split, test half, ±2 frames)", ""]
    lines += ["| stage | model P / R / F1 | best baseline at the model's rate | at the GT rate |",
              "|---|---|---|---|"]
    for stage, r in disc.items():
      m = r.get("model", {})
      lines.append(f"| {stage} | {m.get('precision', 0):.3f} / {m.get('recall', 0):.3f} / "
                   f"{m.get('f1', 0):.3f} | {_best_baseline(r, 'model_rate')} | "
                   f"{_best_baseline(r, 'gt_rate')} |")
  ceiling = results["skills"]["result"].get("ceiling", {})
  if ceiling:
    lines += ["", "Oracle-count ceilings (each test episode's true number of subtasks given; F1 "
              "of the exact l2 fit / of binary segmentation): " + "; ".join(
                  f"{key} {signal} {rows['exact_l2']['f1']:.3f} / {rows['binseg_l2']['f1']:.3f}"
                  for key, signals in ceiling.items() for signal, rows in signals.items()
                  if signal != "z0_zscore") + "."]
  lines += ["", "## Convergence", ""]
  flat = [n for n, c in curves.items() if c["flattened"]]
  open_runs = [n for n, c in curves.items() if c["flattened"] is False]
  lines.append(f"{len(flat)} of {len(curves)} runs have a validation loss that moved by less than "
               f"{FLAT_TOLERANCE:.0%} (or rose) over their last quarter.")
  if open_runs:
    lines.append("Still falling: " + ", ".join(
        f"{n} ({curves[n]['last_quarter_change']:+.1%})" for n in open_runs) + ".")
  lines += _early_stopping_text(curves)
  lines += ["", "![validation curves](training_curves.png)", ""]
  lines += ["## Stages", ""]
  for stage, seconds in results["stage_seconds"].items():
    lines.append(f"- {stage}: {seconds:.0f} s")
  lines += [""] + [f"![skill filmstrip]({s})" for s in strips]
  lines += ["", "Package versions and the full config in results.json."]
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  run_info.write_json_atomic(os.path.join(out, "results.json"), results)
  return path


BASELINES = ("fixed_length", "latent_delta", "ruptures_binseg", "ruptures_pelt")


def _best_baseline(stage_result: Mapping[str, Any], budget: str) -> str:
  """The best baseline's test F1 at the model's rate (top level of an `evaluate_stage_heldout`
  result) or at the ground-truth rate (its "gt_rate" entry)."""
  where = stage_result if budget == "model_rate" else stage_result.get("gt_rate", {})
  found = {k: where[k] for k in BASELINES if k in where}
  if not found:
    return "–"
  name = max(found, key=lambda k: found[k].get("f1", 0))
  return f"{found[name].get('f1', 0):.3f} ({name})"
