"""Skill-discovery study: which settings make the chunker cut at subtask changes?

Trains the skill model for every (setting, seed), extracts the held-out split's skills, and
scores each setting over its seeds with `hilam_jax.skill.discovery.run_evaluation` (held-out
episodes halved by id hash: baselines and probes are set on the validation half, every figure
is the test half's). Resumable: a finished (setting, seed) is skipped, an interrupted training
run resumes from its checkpoint. Writes <out_dir>/study.json and <out_dir>/study.md (one line per
setting) after every setting.

  python -m experiments.skill_study --labels_dir=runs/labels_babyai \
      --dataset_dir=runs/main/data/babyai_unlocklocal_video/1.0.0 --out_dir=runs/skill_study \
      --settings=default,zscore --seeds=0,1,2

Settings are named override sets of `experiments/configs/train_skill_model.py:<--variant>`
(`SETTINGS` below); `--num_steps` is the training length of every setting that does not set its
own, and `--set=key=value` (repeatable) overrides a field in every setting, e.g. the main job's
UnlockLocal windows: `--set=data.window=32 --set=data.window_hop=16`.
"""
from __future__ import annotations

import ast
import json
import os
import time

from absl import app
from absl import flags
from absl import logging

from data_pipeline import run_info
from hilam_jax import preemption

# name -> (config overrides as dotted keys, why it is in the study)
SETTINGS = {
    "default": ({}, "the babyai skill config (N = (3, 3), window 64, lambda_ratio 0.03)"),
    "zscore": ({"data.normalize": "zscore"},
               "per-dimension z-score of z^0: a few high-variance latent dims otherwise dominate "
               "the L1 target and the encoder's input"),
    "zscore_long": ({"data.normalize": "zscore", "num_steps": 2400},
                    "z-score, 3x the training length"),
    "long": ({"num_steps": 2400}, "3x the training length"),
    "ratio_gt": ({"model.target_ratios": (3.0, 7.0)},
                 "N^1 N^2 = 21 frames, about the ground-truth subtask length"),
    "zscore_ratio_gt": ({"data.normalize": "zscore", "model.target_ratios": (3.0, 7.0)},
                        "z-score and N = (3, 7)"),
    "lambda_ratio_0.3": ({"lambda_ratio": 0.3}, "10x the ratio-loss weight"),
    "lambda_ratio_0.003": ({"lambda_ratio": 0.003}, "0.1x the ratio-loss weight"),
    "window_128": ({"data.window": 128, "data.window_hop": 64},
                   "windows of 128 frames: most BossLevel episodes whole"),
    "deep_encoder": ({"model.encoder_depths": (2, 2), "model.decoder_depths": (2, 2)},
                     "two blocks per encoder / decoder"),
    # Segment-level objectives: the chunks must explain what follows (SkillModelConfig).
    "bottleneck": ({"model.bottleneck_heads": True, "lambda_aux": 1.0},
                   "per-stage bottleneck heads: z^0_{t+1} from the stage's chunks only (+ offset)"),
    "bottleneck_zscore": ({"model.bottleneck_heads": True, "lambda_aux": 1.0,
                           "data.normalize": "zscore"}, "bottleneck heads on z-scored z^0"),
    "bottleneck_zscore_long": ({"model.bottleneck_heads": True, "lambda_aux": 1.0,
                                "data.normalize": "zscore", "num_steps": 1800},
                               "bottleneck heads on z-scored z^0, 3x the main job's 600 steps"),
    "bottleneck_zscore_lambda_ratio_0.3": ({"model.bottleneck_heads": True, "lambda_aux": 1.0,
                                            "data.normalize": "zscore", "lambda_ratio": 0.3},
                                           "bottleneck heads on z-scored z^0, 10x the ratio-loss "
                                           "weight (holds the rate nearer N)"),
    "bottleneck_zscore_lambda_ratio_0.1": ({"model.bottleneck_heads": True, "lambda_aux": 1.0,
                                            "data.normalize": "zscore", "lambda_ratio": 0.1},
                                           "as _0.3 with 3x H-Net's ratio-loss weight"),
    "bottleneck_zscore_lambda_ratio_1.0": ({"model.bottleneck_heads": True, "lambda_aux": 1.0,
                                            "data.normalize": "zscore", "lambda_ratio": 1.0},
                                           "as _0.3 with 33x H-Net's ratio-loss weight"),
    # What the oracle-count ceilings suggest (docs/log/2026-12-03-skill-discovery-segment-ceilings.md): a budget per window, raw z^0 (z-scoring
    # hurts an l2 fit of UnlockLocal's z^0: 0.71 vs 0.83 with the true counts).
    "bottleneck_zscore_lambda_ratio_0.3_per_window": (
        {"model.bottleneck_heads": True, "lambda_aux": 1.0, "data.normalize": "zscore",
         "lambda_ratio": 0.3, "ratio_per_sequence": True},
        "as _0.3 with the ratio loss per window (averaged) instead of pooled over the batch"),
    # H-Net's own training recipe and sizes, on top of _0.3.
    "bottleneck_zscore_lambda_ratio_0.3_lr_hnet": (
        {"model.bottleneck_heads": True, "lambda_aux": 1.0, "data.normalize": "zscore",
         "lambda_ratio": 0.3, "level_lr_multipliers": "hnet"},
        "as _0.3 with H-Net's per-level rates sqrt(N^s D^S / D^s): outer levels faster"),
    "bottleneck_zscore_lambda_ratio_0.3_lr_inner_slow": (
        {"model.bottleneck_heads": True, "lambda_aux": 1.0, "data.normalize": "zscore",
         "lambda_ratio": 0.3, "level_lr_multipliers": "1,0.47,0.24"},
        "as _0.3 with the same ratios the other way round: the outer level (the first router) "
        "at the base rate, inner levels slower"),
    "bottleneck_zscore_lambda_ratio_0.3_deep": (
        {"model.bottleneck_heads": True, "lambda_aux": 1.0, "data.normalize": "zscore",
         "lambda_ratio": 0.3, "model.encoder_depths": (2, 2), "model.decoder_depths": (2, 2)},
        "as _0.3 with two blocks per encoder / decoder"),
    "bottleneck_zscore_lambda_ratio_0.3_wide": (
        {"model.bottleneck_heads": True, "lambda_aux": 1.0, "data.normalize": "zscore",
         "lambda_ratio": 0.3, "model.widths": (128, 192, 256)},
        "as _0.3 with twice the widths per level"),
    "bottleneck_lambda_ratio_0.3": ({"model.bottleneck_heads": True, "lambda_aux": 1.0,
                                     "lambda_ratio": 0.3},
                                    "as _0.3 on raw z^0 (no z-score)"),
    # Segment reconstruction: a non-causal model whose chunks must reconstruct their own frames.
    "segment": ({"model.causal": False, "model.bottleneck_heads": True,
                 "model.bottleneck_target": "current", "lambda_latent": 0.0, "lambda_aux": 1.0,
                 "data.normalize": "zscore", "lambda_ratio": 0.3},
                "non-causal H-Net; each stage's chunks reconstruct their own frames' z^0 (+ "
                "offset), no next-latent loss; z-scored, lambda_ratio 0.3"),
    "segment_code4": ({"model.causal": False, "model.bottleneck_heads": True,
                       "model.bottleneck_target": "current", "model.bottleneck_code_dim": 4,
                       "lambda_latent": 0.0, "lambda_aux": 1.0, "data.normalize": "zscore",
                       "lambda_ratio": 0.3},
                      "segment, the chunk vector squeezed to 4 dims before the reconstruction"),
    "segment_local": ({"model.causal": False, "model.bottleneck_heads": True,
                       "model.bottleneck_target": "current", "model.bottleneck_depth": 0,
                       "lambda_latent": 0.0, "lambda_aux": 1.0, "data.normalize": "zscore",
                       "lambda_ratio": 0.3},
                      "segment, each frame reconstructed from its own chunk and offset alone "
                      "(no attention in the reconstruction head)"),
    "no_residual": ({"model.residual": False},
                    "no W_res path around the chunking: every prediction through the chunks"),
    "bottleneck_no_residual": ({"model.bottleneck_heads": True, "lambda_aux": 1.0,
                                "model.residual": False},
                               "bottleneck heads and no residual path"),
}

_LABELS = flags.DEFINE_string("labels_dir", None, "Latent-action label folder.", required=True)
_DATASET = flags.DEFINE_string("dataset_dir", None, "RLDS dataset with subtask ground truth.",
                               required=True)
_OUT = flags.DEFINE_string("out_dir", None, "Study folder.", required=True)
_SETTINGS = flags.DEFINE_list("settings", ["default", "zscore"], f"Of {sorted(SETTINGS)}.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds per setting.")
_VARIANT = flags.DEFINE_string("variant", "babyai", "train_skill_model config variant.")
_STEPS = flags.DEFINE_integer("num_steps", 800, "Training steps (unless a setting sets them).")
_SPLIT = flags.DEFINE_string("split", "val", "Held-out split of the dataset (halved).")
_TOLERANCE = flags.DEFINE_integer("tolerance", 2, "Boundary matching tolerance in frames.")
_CHANGE_POINTS = flags.DEFINE_list(
    "change_point_methods", ["binseg"],
    "ruptures baselines (binseg, pelt). PELT reruns per penalty: its calibration costs minutes "
    "of CPU per seed, so the study uses binary segmentation by default.")
_TRUTH = flags.DEFINE_enum("ground_truth", "initial", ["initial", "leaf"],
                           "Subtasks to score against (discovery.inputs.GROUND_TRUTHS).")
_EVAL_DIR = flags.DEFINE_string("eval_name", "eval",
                                "Sub-folder of each setting for its evaluation (e.g. eval_leaf "
                                "to score the same skills against another ground truth).")
_WORKERS = flags.DEFINE_integer("num_workers", 2,
                                "(setting, seed) runs in parallel processes, one core each; 0: "
                                "in this process.")
_SET = flags.DEFINE_multi_string(
    "set", [], "key=value config override applied to every setting before its own (e.g. "
    "--set=data.window=32 --set=data.window_hop=16); values are Python literals or strings.")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False,
                                "Only rebuild study.json / study.md from the settings' finished "
                                "<setting>/eval/skill_discovery.json (no training).")


def parse_overrides(items: list[str]) -> dict[str, object]:
  """["a.b=3", "c=none"] -> {"a.b": 3, "c": "none"} (values: Python literals, else strings)."""
  out = {}
  for item in items:
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise ValueError(f"override {item!r}: expected key=value")
    try:
      out[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      out[key] = text
  return out


def setting_config(name: str, seed: int, labels_dir: str, variant: str, num_steps: int,
                   common: dict[str, object] | None = None):
  """The training config of one (setting, seed): the variant, then `common`, then the
  setting's own overrides."""
  from experiments.configs import train_skill_model  # pylint: disable=g-import-not-at-top
  config = train_skill_model.get_config(variant)
  config.data.labels_dir = labels_dir
  config.seed = seed
  config.num_steps = num_steps
  config.eval_every = 10 ** 9  # only the final eval
  config.checkpoint_every = 400
  config.num_eval_batches = 4
  overrides, _ = SETTINGS[name]
  for key, value in {**(common or {}), **overrides}.items():
    node = config
    *path, leaf = key.split(".")
    for part in path:
      if part not in node:
        raise ValueError(f"override {key!r}: the config has no field {part!r}")
      node = node[part]
    if leaf not in node:
      raise ValueError(f"override {key!r}: the config has no field {leaf!r}")
    node[leaf] = value
  return config


def _setup_worker() -> None:
  # pylint: disable=g-import-not-at-top
  from hilam_jax import logs
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  logs.quiet_library_logs()


def run_seed(name: str, seed: int, out_dir: str, labels_dir: str, variant: str, num_steps: int,
             split: str, common: dict[str, object] | None = None) -> str:
  """Trains + extracts one (setting, seed) unless done; returns its skills folder. A job."""
  root = os.path.join(out_dir, name, f"seed{seed}")
  skills = os.path.join(root, "skills")
  done = os.path.join(root, "done.json")
  if run_info.read_done_json(done) is not None:  # one that does not parse: redone
    return skills
  _setup_worker()
  # pylint: disable=g-import-not-at-top
  from hilam_jax.skill import extract
  from hilam_jax.skill import trainer
  config = setting_config(name, seed, labels_dir, variant, num_steps, common)
  start = time.time()
  final = trainer.train_and_evaluate(config, os.path.join(root, "train"))
  train_seconds = time.time() - start
  stats = extract.extract_skills(os.path.join(root, "train"), labels_dir, skills,
                                 splits=(split,))
  run_info.write_json_atomic(done, {"final_eval": final, "train_seconds": train_seconds,
                                    "extract": stats, "num_steps": config.num_steps,
                                    "common_overrides": common or {}})
  logging.info("study: %s seed %d trained in %.0f s: %s", name, seed, train_seconds, final)
  return skills


def evaluate_setting(skills: list[str], dataset_dir: str, out_dir: str, split: str,
                     tolerance: int, labels_dir: str, change_point_methods: tuple[str, ...],
                     ground_truth: str) -> str:
  """Scores one setting's seeds (`discovery.run_evaluation`); returns the report path. A job."""
  _setup_worker()
  from hilam_jax.skill import discovery  # pylint: disable=g-import-not-at-top
  discovery.run_evaluation(skills, dataset_dir, out_dir, split=split, tolerance=tolerance,
                           num_filmstrips=2, labels_dir=labels_dir,
                           change_point_methods=change_point_methods, ground_truth=ground_truth)
  return os.path.join(out_dir, "skill_discovery.json")


def _num_steps(name: str, seed: int) -> int | None:
  """Training steps of a finished (setting, seed), from its done.json."""
  done = run_info.read_done_json(os.path.join(_OUT.value, name, f"seed{seed}", "done.json"))
  return None if done is None else done["num_steps"]


def _as_json(overrides: dict) -> dict:
  """Override values as JSON keeps them (tuples as lists)."""
  return {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}


def _fmt(pair) -> str:
  return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def study_row(name: str, summary: dict, seeds: list[int]) -> str:
  """One markdown line: F1 per stage (model, best baseline at its rate, best at GT rate), probes."""
  cells = [name, ",".join(map(str, seeds))]
  for stage in ("stage1", "stage2"):
    s = summary[stage]
    baselines = {m: v["f1"] for m, v in s.items()
                 if isinstance(v, dict) and "f1" in v and m != "model"}
    best = max(baselines, key=lambda m: baselines[m][0])
    best_gt = max(s["gt_rate"], key=lambda m: s["gt_rate"][m]["f1"][0])
    cells += [f"{s['boundary_rate'][0]:.3f}", _fmt(s["val_f1"]), _fmt(s["model"]["f1"]),
              f"{_fmt(baselines[best])} ({best})",
              f"{_fmt(s['gt_rate'][best_gt]['f1'])} ({best_gt})"]
  probe = summary.get("probe", {})
  for feature in ("z1", "z2", "z0", "z0_mean", "majority"):
    cells.append(_fmt(probe[feature]["balanced_accuracy"]) if feature in probe else "–")
  return "| " + " | ".join(cells) + " |"


HEADER = ("| setting | seeds | s1 rate | s1 val F1 | s1 F1 | s1 best baseline (model rate) | "
          "s1 best baseline (GT rate) | s2 rate | s2 val F1 | s2 F1 | s2 best baseline (model "
          "rate) | s2 best baseline (GT rate) | probe z̄¹ | probe z̄² | probe z⁰ | probe mean z⁰ | "
          "majority |\n|" + "---|" * 17)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # pylint: disable=g-import-not-at-top
  from hilam_jax import jobs
  from hilam_jax import logs
  logs.quiet_library_logs()
  unknown = sorted(set(_SETTINGS.value) - set(SETTINGS))
  if unknown:
    raise app.UsageError(f"unknown settings {unknown}; known: {sorted(SETTINGS)}")
  seeds = [int(s) for s in _SEEDS.value]
  common = parse_overrides(_SET.value)
  setting_config(_SETTINGS.value[0], seeds[0], _LABELS.value, _VARIANT.value, _STEPS.value,
                 common)  # a bad override fails here, before any worker starts
  os.makedirs(_OUT.value, exist_ok=True)
  suffix = "" if _EVAL_DIR.value == "eval" else f"_{_EVAL_DIR.value}"
  study_path = os.path.join(_OUT.value, f"study{suffix}.json")
  if not _TABLE_ONLY.value:
    graph = []
    for name in _SETTINGS.value:
      for seed in seeds:
        graph.append(jobs.Job(f"{name}/seed{seed}", run_seed, dict(
            name=name, seed=seed, out_dir=_OUT.value, labels_dir=_LABELS.value,
            variant=_VARIANT.value, num_steps=_STEPS.value, split=_SPLIT.value,
            common=common)))
      skills = [os.path.join(_OUT.value, name, f"seed{seed}", "skills") for seed in seeds]
      graph.append(jobs.Job(f"{name}/evaluate", evaluate_setting, dict(
          skills=skills, dataset_dir=_DATASET.value,
          out_dir=os.path.join(_OUT.value, name, _EVAL_DIR.value), split=_SPLIT.value,
          tolerance=_TOLERANCE.value, labels_dir=_LABELS.value,
          change_point_methods=tuple(_CHANGE_POINTS.value), ground_truth=_TRUTH.value),
                            deps=tuple(f"{name}/seed{seed}" for seed in seeds)))
    jobs.run_jobs(graph, num_workers=_WORKERS.value,
                  worker_env=jobs.single_thread_env() if _WORKERS.value > 1 else None,
                  what="skill study")
  for name in _SETTINGS.value:
    report_path = os.path.join(_OUT.value, name, _EVAL_DIR.value, "skill_discovery.json")
    if not os.path.exists(report_path):
      logging.warning("study: %s has no finished evaluation, skipped", name)
      continue
    with open(report_path) as f:
      report = json.load(f)
    seeds = [int(os.path.basename(os.path.dirname(d))[4:]) for d in report["skills_dirs"]]
    # Re-read before writing: other study processes may have added settings meanwhile.
    study = {}
    if os.path.exists(study_path):
      with open(study_path) as f:
        study = json.load(f)
    study[name] = {"overrides": _as_json(SETTINGS[name][0]),
                   "common_overrides": _as_json(common),
                   "why": SETTINGS[name][1], "seeds": seeds,
                   "num_steps": _num_steps(name, seeds[0]),
                   "summary": report["summary"]}
    logging.info("study: %s\n%s", name, report["table"])
    order = [n for n in SETTINGS if n in study]
    run_info.write_json_atomic(study_path, study)
    lines = [HEADER] + [study_row(n, study[n]["summary"], study[n]["seeds"]) for n in order]
    with open(os.path.join(_OUT.value, f"study{suffix}.md"), "w") as f:
      f.write(f"# Skill-discovery study ({_TRUTH.value} subtasks; test half; F1 ±2 frames; "
              "probe = balanced accuracy)\n\n"
              + "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
  app.run(preemption.exit_on_preemption(main))
