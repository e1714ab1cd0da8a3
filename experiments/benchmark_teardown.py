"""Benchmark: a policy run with tf.data autotuning on vs off, in a main-job worker's environment.

Not a test: it prints measured figures. The main job's policy runs go to single-threaded worker
processes (`hilam_jax.jobs.single_thread_env`). There, destroying a run's tf.data iterator after
its final evaluation waited for tf.data's autotune thread (a timed wait of up to 60 s, idle), so
the workers run tf.data without autotuning (`HILAM_TF_DATA_AUTOTUNE=0`). This script retrains one
finished policy run (its stored `run_info.json` config) in fresh single-threaded subprocesses,
alternating the two arms, and prints per arm the training time (start to the final evaluation)
and the tail (final evaluation to the trainer's return), their medians and the ratios off / on,
all measured in this invocation.

  python -m experiments.benchmark_teardown \
      --run_dir=runs/main_quick/policies/demos_100pct/s0/baku --pairs=2
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from hilam_jax import jobs

_RUN_DIR = flags.DEFINE_string("run_dir", None, "A finished policy run (its run_info.json).")
_PAIRS = flags.DEFINE_integer("pairs", 2, "Runs per arm (alternated: on/off, off/on, ...).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Override the run's steps (smoke runs).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the retrained runs go (default: a temp "
                               "dir, removed afterwards).")
_CHILD = flags.DEFINE_string("child", None, "internal: train one run into this directory")


def child(run_dir: str, out_dir: str, num_steps: int | None) -> dict:
  import ml_collections  # pylint: disable=g-import-not-at-top
  from hilam_jax.policy import trainer  # pylint: disable=g-import-not-at-top
  from hilam_jax.training import loop  # pylint: disable=g-import-not-at-top
  with open(os.path.join(run_dir, "run_info.json")) as f:
    config = ml_collections.ConfigDict(json.load(f)["config"])
  if num_steps:
    config.num_steps = num_steps
    config.eval_every = config.checkpoint_every = config.log_every = num_steps
    config.warmup_steps = min(config.warmup_steps, num_steps)
    config.num_eval_batches = 1
  marks = {}
  finish_run = loop.finish_run

  def timed_finish_run(*args, **kwargs):
    result = finish_run(*args, **kwargs)
    marks["final"] = time.perf_counter()
    return result

  loop.finish_run = timed_finish_run
  start = time.perf_counter()
  trainer.train_and_evaluate(config, out_dir)
  end = time.perf_counter()
  return {"train_s": marks["final"] - start, "tail_s": end - marks["final"]}


def run_arm(autotune: bool, out_dir: str) -> dict:
  env = {**os.environ, **jobs.single_thread_env(), "HILAM_TF_DATA_AUTOTUNE": str(int(autotune))}
  args = [sys.executable, "-m", "experiments.benchmark_teardown", f"--run_dir={_RUN_DIR.value}",
          f"--child={out_dir}"] + ([f"--num_steps={_NUM_STEPS.value}"] if _NUM_STEPS.value else [])
  out = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"the run failed (autotune={autotune}):\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.split("CHILD ", 1)[1])


def main(argv):
  del argv
  if _CHILD.value:
    print("CHILD " + json.dumps(child(_RUN_DIR.value, _CHILD.value, _NUM_STEPS.value)))
    return
  if not _RUN_DIR.value or not os.path.exists(os.path.join(_RUN_DIR.value, "run_info.json")):
    raise app.UsageError(f"--run_dir={_RUN_DIR.value!r} holds no run_info.json (a policy run)")
  if _PAIRS.value < 1:
    raise app.UsageError(f"--pairs must be >= 1, got {_PAIRS.value}")
  with tempfile.TemporaryDirectory() as tmp:
    root = _WORKDIR.value or tmp
    runs = {"on": [], "off": []}
    for i in range(_PAIRS.value):
      for arm in (("on", "off") if i % 2 == 0 else ("off", "on")):
        result = run_arm(arm == "on", os.path.join(root, f"{arm}_{i}"))
        runs[arm].append(result)
        print(f"pair {i} autotune {arm}: train {result['train_s']:.1f} s, "
              f"tail {result['tail_s']:.2f} s", flush=True)
  median = {arm: {k: statistics.median(r[k] for r in rs) for k in ("train_s", "tail_s")}
            for arm, rs in runs.items()}
  summary = {"runs": runs, "median": median,
             "train_ratio_off_over_on": median["off"]["train_s"] / median["on"]["train_s"],
             "tail_ratio_off_over_on": median["off"]["tail_s"] / max(median["on"]["tail_s"], 1e-9),
             "run_dir": _RUN_DIR.value, "num_steps": _NUM_STEPS.value}
  print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
