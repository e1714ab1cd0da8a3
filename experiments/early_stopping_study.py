"""Early stopping of the fine-tunes, measured on a finished main job.

Each fine-tune at `--fraction` is stopped where early stopping on its own validation curve
would have stopped it: the validation metric (`--metric`, logged every `eval_every` steps) is
followed in order, and the run stops once `--patience` steps pass without a new best; the
policy kept is the best step S. That policy is trained again as the first S steps of the
full-length run (`schedule_steps`: the same warm-up and cosine schedule, the same batches, so
it is that run's state at step S), evaluated as the main job evaluates, and compared paired
(same seed) with the full-length run's success:

  python -m experiments.early_stopping_study --workdir=runs/main \
      --out_dir=runs/early_stopping_accuracy --metric=eval/action/accuracy --patience=1000

The main job's pretraining runs are read, never written. Prints and writes
`<out_dir>/study.json`: per cell the steps trained before stopping, S, both success rates;
per method the paired difference (95% t-interval over seeds) and the steps saved. Reruns
reuse the finished runs (each run is cached by its `final_metrics.json` / `result.json`).
"""
import json
import os

from absl import app
from absl import flags
from absl import logging
import ml_collections

from hilam_jax import experiment
from hilam_jax import jobs
from hilam_jax import preemption
from hilam_jax.evaluation import stats
from hilam_jax.training import metrics as metrics_lib

_WORKDIR = flags.DEFINE_string("workdir", "./runs/main", "A finished main job's workdir.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where the early-stopped runs go.",
                               required=True)
_FRACTION = flags.DEFINE_float("fraction", 0.1, "The demo fraction whose fine-tunes to stop.")
_METRIC = flags.DEFINE_enum("metric", "eval/action/accuracy",
                            ["eval/action/accuracy", "eval/action/loss"],
                            "Validation metric (accuracy: higher is better; loss: lower).")
_PATIENCE = flags.DEFINE_integer("patience", 1000, "Steps without a new best before stopping.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "Parallel jobs (one core each).")


def main(argv):
  del argv
  workdir, out_dir, fraction = _WORKDIR.value, _OUT_DIR.value, _FRACTION.value
  with open(os.path.join(workdir, "run_info.json")) as f:
    config = ml_collections.ConfigDict(json.load(f)["config"])
  with open(os.path.join(workdir, "stages", "1_data.json")) as f:
    data = json.load(f)["result"]
  paths = experiment.Paths(workdir)
  planner = experiment.Planner(config, paths, data, experiment.label_dims(paths))
  cells = [c for c in experiment.cells(config) if c[1] == fraction]
  if not cells:
    raise app.UsageError(f"the run has no cells at fraction {fraction:g}")
  higher = _METRIC.value.endswith("accuracy")
  graph, rows = [], []
  for method, _, seed in cells:
    eval_job = planner.jobs[planner.evaluation(method, fraction, seed)]
    train_job = planner.jobs[eval_job.deps[0]]
    full_dir = train_job.kwargs["workdir"]
    full_result = os.path.join(eval_job.kwargs["out_dir"], "result.json")
    if not os.path.exists(full_result):
      raise app.UsageError(f"{full_result} is missing: run the main job to the end first")
    curve = metrics_lib.read_scalars(os.path.join(full_dir, "tensorboard"), _METRIC.value)
    cfg = dict(train_job.kwargs["config"])
    trained, best = metrics_lib.early_stop_point(curve, higher_is_better=higher,
                                                 patience=_PATIENCE.value)
    row = {"method": method, "seed": seed, "num_steps": cfg["num_steps"],
           "steps_trained": trained, "best_step": best, "full_result": full_result,
           "early_result": full_result,  # kept the last step: the full-length run itself
           "metric_at_best": dict(curve)[best]}
    rows.append(row)
    if best == cfg["num_steps"]:
      continue
    name = f"{method}@{fraction:g}/s{seed}"
    new_dir = os.path.join(out_dir, "policies", f"s{seed}", method)
    cfg.update(num_steps=best, schedule_steps=cfg["num_steps"],
               checkpoint_every=best, eval_every=min(cfg["eval_every"], best))
    if cfg.get("early_stopping"):  # a run that stopped early already: its first S steps
      cfg["early_stopping"] = dict(cfg["early_stopping"], metric="")
    cache_dir = os.path.join(out_dir, "jax_cache")
    graph.append(jobs.Job(f"finetune/{name}", experiment.train_policy_job,
                          dict(train_job.kwargs, workdir=new_dir, config=cfg,
                               cache_dir=cache_dir)))
    spec = dict(eval_job.kwargs["spec"])
    spec["low" if spec["kind"] == "hierarchical" else "workdir"] = new_dir
    new_result = os.path.join(out_dir, "evaluation", f"s{seed}", method)
    graph.append(jobs.Job(f"evaluate/{name}", experiment.evaluate_job,
                          dict(eval_job.kwargs, out_dir=new_result, spec=spec,
                               cache_dir=cache_dir),
                          deps=(f"finetune/{name}",)))
    row["early_result"] = os.path.join(new_result, "result.json")
    row["early_dir"] = new_dir
  logging.info("%d of %d fine-tunes stop early (%s, patience %d): trained again to their "
               "best step and evaluated", len(graph) // 2, len(rows), _METRIC.value,
               _PATIENCE.value)
  jobs.run_jobs(graph, num_workers=_NUM_WORKERS.value, worker_env=jobs.single_thread_env(),
                what="early stopping")
  for row in rows:
    if "early_dir" in row:  # trained again to S: it ends where the full-length run was at S
      with open(os.path.join(row.pop("early_dir"), "final_metrics.json")) as f:
        row["metric_trained_again"] = json.load(f)[_METRIC.value.removeprefix("eval/")]
    for key in ("full", "early"):
      with open(row.pop(f"{key}_result")) as f:
        row[f"success_{key}"] = json.load(f)["success_rate"]
  summary = {}
  for method in dict.fromkeys(r["method"] for r in rows):
    mine = [r for r in rows if r["method"] == method]
    diff = stats.seed_interval([r["success_early"] - r["success_full"] for r in mine])
    saved = sum(r["num_steps"] - r["steps_trained"] for r in mine) / sum(
        r["num_steps"] for r in mine)
    summary[method] = {"early_minus_full": diff, "steps_saved_fraction": saved,
                       "full": [r["success_full"] for r in mine],
                       "early": [r["success_early"] for r in mine]}
    print(f"{method:18s} full {summary[method]['full']} early {summary[method]['early']} "
          f"early-full {diff['mean']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}] "
          f"stopped at {[r['steps_trained'] for r in mine]} kept {[r['best_step'] for r in mine]}"
          f" steps saved {100 * saved:.0f}%")
  os.makedirs(out_dir, exist_ok=True)
  out = {"workdir": workdir, "fraction": fraction, "metric": _METRIC.value,
         "patience": _PATIENCE.value, "cells": rows, "methods": summary}
  with open(os.path.join(out_dir, "study.json"), "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  app.run(preemption.exit_on_preemption(main))
