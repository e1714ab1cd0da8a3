"""Measures the BabyAI benchmark regime: flat BAKU's success vs demo fraction, over seeds.

  python -m experiments.benchmark_regime --workdir=runs/benchmark_regime
  python -m experiments.benchmark_regime --config=experiments/configs/benchmark_regime.py:smoke \
      --workdir=/tmp/benchmark_regime_smoke

What it does (config: experiments/configs/benchmark_regime.py):
  1. generates the demonstrations (UnlockLocal, room view) under <workdir>/data (resumes);
  2. trains flat BAKU with the project's policy trainer at every (fraction, training seed), plus
     "plateau" runs (fraction 1.0, seed 0) with the former regime (chunk 10 + augmentation) and
     each of its parts alone (`plateau.variants`) on the same data, validation every
     `eval_every` steps;
  3. evaluates each run on `eval.num_episodes` held-out environment seeds with the project's BabyAI
     harness, rendering as the dataset was generated (`check_render_settings`), once per
     `eval.modes`: "sample" (actions drawn from the policy's distribution, BabyAI's convention)
     and "argmax" (greedy; a deterministic policy can loop forever, e.g. toggling a locked door);
  4. writes <workdir>/results.json and results.md: per-seed success, mean and 95% t-interval across
     seeds per fraction, validation loss / accuracy curves, whether the validation loss has
     flattened, and the share of the majority action in the validation data (the accuracy of a
     policy that always predicts it: the plateau's level).
Runs go to `num_workers` single-threaded worker processes (default 2, one per core of the
reference machine). Each run writes <workdir>/runs/<name>/result.json when done; a rerun skips
finished runs and resumes an interrupted one from its checkpoint. `--only=name1,name2` restricts the runs.
"""
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from data_pipeline import run_info

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/benchmark_regime.py", "Benchmark config.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", "runs/benchmark_regime", "Output folder.")
_ONLY = flags.DEFINE_list("only", [], "Run only these run names (default: all).")


def _runs(config) -> list[dict]:
  runs = []
  for fraction in config.fractions:
    for seed in config.seeds:
      runs.append({"name": f"baku_f{fraction:g}_s{seed}", "fraction": float(fraction),
                   "seed": int(seed), "regime": "benchmark"})
  if config.plateau.enabled:
    for chunk, augment in config.plateau.variants:
      name = f"plateau_chunk{chunk}{'_aug' if augment else ''}_f1_s{config.seeds[0]}"
      runs.append({"name": name, "fraction": 1.0, "seed": int(config.seeds[0]),
                   "regime": "plateau", "chunk": int(chunk), "augment": bool(augment)})
  return runs


def _policy_config(config, run: dict, dataset_dir: str):
  import ml_collections  # pylint: disable=g-import-not-at-top
  policy = ml_collections.ConfigDict(config.policy.to_dict())  # an unlocked copy
  policy.seed = run["seed"]
  policy.data.train = ({"dataset_dir": dataset_dir},)
  policy.data.val = ({"dataset_dir": dataset_dir},)
  policy.data.episode_fraction = run["fraction"]
  if run["regime"] == "plateau":
    policy.chunk = run["chunk"]
    policy.data.augment = run["augment"]
    policy.eval_every = config.plateau.eval_every
    policy.num_steps = config.plateau.num_steps
  return policy


def _action_shares(dataset_dir: str, split: str) -> dict[str, float]:
  """Share of each action among the real (non-placeholder) actions of a split."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_pipeline import reader  # pylint: disable=g-import-not-at-top
  from data_pipeline.sim import babyai as sim  # pylint: disable=g-import-not-at-top
  actions = np.concatenate([t["action"].astype(np.int64).ravel() for t in
                            reader.read_trajectories(dataset_dir, split=split).as_numpy_iterator()])
  actions = actions[actions != sim.DONE_ACTION]
  counts = np.bincount(actions, minlength=len(sim.ACTION_NAMES))
  return {name: float(c / counts.sum()) for name, c in zip(sim.ACTION_NAMES, counts) if c}


def _evaluate(config, workdir: str, dataset_dir: str, mode: str) -> dict:
  """One evaluation of a trained run: `mode` "argmax" or "sample" (categorical actions)."""
  # pylint: disable=g-import-not-at-top
  from data_pipeline.sim import babyai as sim
  from hilam_jax.evaluation import babyai as babyai_eval
  from hilam_jax.policy import policies
  settings = sim.render_settings(dataset_dir)
  babyai_eval.check_render_settings(dataset_dir, settings["level"], settings["view"],
                                    settings["tile_size"])
  sample_seed = config.eval.seed if mode == "sample" else None
  policy = policies.FlatPolicy(policies.PolicyNetwork.load(workdir, heads=("action",)),
                               sample_seed=sample_seed)
  start = time.perf_counter()
  result = babyai_eval.evaluate_babyai(
      policy, settings["level"], num_episodes=config.eval.num_episodes,
      num_envs=config.eval.num_envs, seed=config.eval.seed, view=settings["view"],
      tile_size=settings["tile_size"], max_steps=config.eval.max_steps)
  return {"success_rate": result.success_rate, "wilson_95": [result.ci_low, result.ci_high],
          "max_steps": config.eval.max_steps,
          "num_episodes": result.num_episodes, "mean_episode_length": result.mean_episode_length,
          "seconds": round(time.perf_counter() - start, 1)}


def _train_and_evaluate(config, run: dict, dataset_dir: str, root: str) -> dict:
  """Trains the run (unless done) and evaluates it in every `config.eval.modes` (cached)."""
  # pylint: disable=g-import-not-at-top
  from hilam_jax import report
  from hilam_jax.policy import trainer
  from hilam_jax.training import metrics
  workdir = os.path.join(root, "runs", run["name"])
  done = os.path.join(workdir, "result.json")
  out = run_info.read_done_json(done)  # None also if it does not parse: the run is redone
  if out is not None:
    if "evaluations" not in out:  # written before evaluation modes existed: argmax
      out["evaluations"] = {"argmax": {
          "success_rate": out["success_rate"], "wilson_95": out["wilson_95"],
          "num_episodes": out["num_eval_episodes"],
          "mean_episode_length": out["mean_episode_length"], "seconds": out["eval_seconds"]}}
  else:
    policy_config = _policy_config(config, run, dataset_dir)
    start = time.perf_counter()
    final = trainer.train_and_evaluate(policy_config, workdir)
    tensorboard = os.path.join(workdir, "tensorboard")
    curves = {tag: metrics.read_scalars(tensorboard, tag)
              for tag in ("eval/loss", "eval/action/accuracy", "train/loss",
                          "train/action/accuracy")}
    out = {**run, "final_val": {k: float(v) for k, v in final.items()},
           "chunk": policy_config.chunk, "augment": policy_config.data.augment,
           "num_steps": policy_config.num_steps,
           "train_seconds": round(time.perf_counter() - start, 1), "curves": curves,
           **report.flattened(curves["eval/loss"]), "evaluations": {}}
  modes = config.plateau.eval_modes if run["regime"] == "plateau" else config.eval.modes
  for mode in modes:
    cached = out["evaluations"].get(mode)  # one under another step limit is redone
    if cached is None or cached.get("max_steps") != config.eval.max_steps:
      out["evaluations"][mode] = _evaluate(config, workdir, dataset_dir, mode)
      logging.info("%s: %s success %.3f over %d seeds", run["name"], mode,
                   out["evaluations"][mode]["success_rate"], config.eval.num_episodes)
  primary = out["evaluations"][modes[0]]
  out.update(success_rate=primary["success_rate"], eval_mode=modes[0],
             num_eval_episodes=primary["num_episodes"], eval_seed=config.eval.seed)
  run_info.write_json_atomic(done, out)
  return out


def _markdown(summary: dict) -> str:
  lines = [f"# Benchmark regime: {summary['level']} ({summary['view']} view)", "",
           f"Demos: {summary['num_train_demos']} train / {summary['num_val_demos']} val; "
           f"evaluation: {summary['num_eval_episodes']} held-out env seeds per run.", "",
           "| actions | fraction | demos | per-seed success | mean | 95% t-interval |",
           "|---|---|---|---|---|---|"]
  for mode, by_fraction in summary["by_fraction"].items():
    for fraction, agg in by_fraction.items():
      per_seed = ", ".join(f"s{s}: {v:.2f}" for s, v in zip(agg["seeds"], agg["values"]))
      lines.append(f"| {mode} | {fraction} | {agg['demos']} | {per_seed} | {agg['mean']:.3f} | "
                   f"[{agg['ci_low']:.3f}, {agg['ci_high']:.3f}] |")
  lines += ["", "Majority action share (validation, = accuracy of always predicting it): "
            f"{summary['majority_action']} {summary['majority_share']:.3f}", "",
            "| run | success (" + ", ".join(summary["eval_modes"]) + ") | chunk | augment | "
            "val loss (step:value) | val accuracy | last-quarter change | train s |",
            "|---|---|---|---|---|---|---|---|"]
  for run in summary["runs"]:
    loss = " ".join(f"{s}:{v:.3f}" for s, v in run["curves"]["eval/loss"])
    acc = " ".join(f"{s}:{v:.2f}" for s, v in run["curves"]["eval/action/accuracy"])
    success = ", ".join(f"{run['evaluations'][m]['success_rate']:.2f}"
                        if m in run["evaluations"] else "-" for m in summary["eval_modes"])
    lines.append(f"| {run['name']} | {success} | {run['chunk']} | {run['augment']} | {loss} | "
                 f"{acc} | {run['last_quarter_change']} | {run['train_seconds']} |")
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # pylint: disable=g-import-not-at-top
  from data_pipeline.generators import babyai
  from hilam_jax import jobs
  from hilam_jax import logs
  from hilam_jax.evaluation import stats
  logs.quiet_library_logs()
  config, root = _CONFIG.value, _WORKDIR.value
  all_runs = _runs(config)
  unknown = sorted(set(_ONLY.value) - {r["name"] for r in all_runs})
  if unknown:  # before any data is generated
    raise app.UsageError(f"--only: unknown runs {unknown}; runs: {[r['name'] for r in all_runs]}")
  runs = [r for r in all_runs if not _ONLY.value or r["name"] in _ONLY.value]
  os.makedirs(root, exist_ok=True)
  generation = babyai.generate(config.demos, os.path.join(root, "data"))
  dataset_dir = generation["dataset_dir"]
  shares = _action_shares(dataset_dir, "val")
  majority = max(shares, key=shares.get)
  logging.info("validation action shares %s", shares)
  # One single-threaded worker process per core (num_workers=0: in this process, in order).
  graph = [jobs.Job(run["name"], _train_and_evaluate,
                    dict(config=config, run=run, dataset_dir=dataset_dir, root=root))
           for run in runs]
  done = jobs.run_jobs(graph, num_workers=config.num_workers,
                       worker_env=jobs.single_thread_env() if config.num_workers else None,
                       what="benchmark runs")
  results = [done[run["name"]] for run in runs]
  by_fraction = {}
  for mode in config.eval.modes:
    by_fraction[mode] = {}
    for fraction in config.fractions:
      rows = [r for r in results if r["regime"] == "benchmark" and r["fraction"] == fraction]
      if rows:
        agg = stats.seed_interval([r["evaluations"][mode]["success_rate"] for r in rows])
        agg["seeds"] = [r["seed"] for r in rows]
        agg["demos"] = round(fraction * config.demos.num_train_episodes)
        by_fraction[mode][f"{fraction:g}"] = agg
  summary = {
      "level": config.demos.level, "view": config.demos.view,
      "num_train_demos": config.demos.num_train_episodes,
      "num_val_demos": config.demos.num_val_episodes,
      "num_eval_episodes": config.eval.num_episodes, "dataset_dir": dataset_dir,
      "eval_modes": list(config.eval.modes),
      "val_action_shares": shares, "majority_action": majority,
      "majority_share": shares[majority], "by_fraction": by_fraction, "runs": results,
  }
  with open(os.path.join(root, "results.json"), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(_markdown(summary))
  print(_markdown(summary))


if __name__ == "__main__":
  app.run(main)
