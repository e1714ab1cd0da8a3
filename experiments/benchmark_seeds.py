"""Benchmark: training the seeds of one experiment cell together (vmap) vs one run per seed.

Not a test: it prints measured figures, all from one run on this machine.

  python -m experiments.benchmark_seeds                       # the main job's policy, 3 seeds
  python -m experiments.benchmark_seeds --num_seeds=5 --threads=2
  python -m experiments.benchmark_seeds --small               # seconds: the tests' size

Today every policy run is one job: one process trains one seed with its own jitted step
(`training.make_train_step`). The alternative trains the S seeds of a (method, fraction) cell in
one program (`make_train_step(stacked=True)`: the single-seed update under `jax.vmap`, every
seed with its own parameters, optimizer state, rng and batch). Both paths run here on the main
job's policy network (the default config of `experiments/configs/main.py`: the grid encoder with
one residual block, token conditioning, categorical action head, batch 64, 56x56 frames) and on
the same random batches, in one child process per path (`--child`), so that each path's peak
RSS is its own, and alternately (`--repeats` rounds) so that machine load touches both alike:

  compile_s          the first step's wall time (trace + compile + run): paid once per run today
                     (per process, unless the persistent compilation cache has the program),
                     once per cell stacked
  ms_per_seed_step   median over the rounds of the wall time per step and seed
  samples_per_s      per seed: batch / ms_per_seed_step
  peak_rss_mb        the child's `ru_maxrss`

and the ratio single / stacked of ms_per_seed_step (> 1: stacking is faster). Before timing,
the stacked child checks that one stacked step gives every seed the loss its own step gives
(`max_loss_diff`). `--threads=1` (default) is how the main job's policy workers run (one core
each, two side by side); `--threads=2` gives XLA both cores.

Measured at 31e1ca4 on the 2-core CPU with a main job running beside it (docs/benchmarks.md):
3 seeds, one thread, 38 ms per seed-step one run per seed vs 83 ms stacked (0.46x): vmapped
convolutions with per-seed kernels are slower on XLA's CPU backend than separate ones.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

_SEEDS = flags.DEFINE_integer("num_seeds", 3, "Seeds per cell (S).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per seed and round.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Rounds (each runs both paths, alternately).")
_THREADS = flags.DEFINE_integer("threads", 1, "XLA CPU threads (1: the main job's workers).")
_SMALL = flags.DEFINE_bool("small", False, "Tiny network and batch (the smoke test).")
_CHILD = flags.DEFINE_enum("child", None, ["single", "stacked"], "Internal: run one path.")

PATHS = ("single", "stacked")


def network_config(small: bool):
  """The policy config of the benchmark: the main job's default policy, or a tiny one."""
  # pylint: disable=g-import-not-at-top
  from experiments.configs import main as main_config
  from hilam_jax.policy import config as policy_defaults
  p = main_config.get_config("default").policy
  config = policy_defaults.default_config("baku")
  config.lang_encoder = "hash"  # the step never sees the encoder: embeddings are inputs
  size, overrides = ("tiny", {}) if small else (p.model_size, dict(p.model_overrides))
  config.model = policy_defaults.model(size, proprio_dim=4, condition_mode=p.condition_mode,
                                       **overrides)
  config.chunk = p.chunk
  config.head_hidden = (16,) if small else tuple(p.head_hidden)
  config.batch_size = 4 if small else p.batch_size
  config.data.image_size = (56, 56)
  config.heads = {"action": {"kind": "categorical", "dim": 7, "target": "action"}}
  return config


def random_batch(config, seed: int):
  """A pipeline batch (numpy, as tf.data yields it) of random frames, instructions, actions."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  n, chunk = config.batch_size, config.chunk
  return {"observation": {
              "image_primary": rng.integers(0, 256, (n, 56, 56, 3), dtype=np.uint8),
              "proprio": rng.normal(size=(n, 4)).astype(np.float32)},
          "language_instruction": np.array([f"open the door {i % 3}".encode()
                                            for i in range(n)]),
          "action": rng.integers(0, 6, (n, chunk)).astype(np.int32),
          "action_pad_mask": np.ones((n, chunk), bool)}


def run_path(path: str, num_seeds: int, steps: int, small: bool) -> dict:
  """Trains `num_seeds` seeds for 1 + `steps` steps on one path; its figures."""
  # pylint: disable=g-import-not-at-top
  import functools
  import jax
  import numpy as np
  from hilam_jax import training
  from hilam_jax.language import CachedEncoder, make_encoder
  from hilam_jax.policy import baku, networks
  from hilam_jax.policy import trainer as policy_trainer
  config = network_config(small)
  cfg = networks.model_config(config)
  module = baku.BakuPolicy(cfg)
  mesh = training.make_mesh(jax.devices()[:1])
  tx = training.make_optimizer(config)
  convert = policy_trainer.BatchConverter(config, CachedEncoder(make_encoder("hash")))
  batches = [training.shard_batch(convert(random_batch(config, seed)), mesh)
             for seed in range(num_seeds)]

  def init(rng):
    return module.init({"params": rng}, networks.example_inputs(cfg, (56, 56)),
                       train=False)["params"]

  def fresh_state(seed):
    return training.create_train_state(init, tx, jax.random.PRNGKey(seed), mesh)

  loss = functools.partial(policy_trainer.policy_loss, module=module, head_cfgs=cfg.heads)
  out = {"path": path, "num_seeds": num_seeds, "batch_size": config.batch_size,
         "params": sum(x.size for x in jax.tree.leaves(fresh_state(0).params))}
  if path == "single":
    states = [fresh_state(seed) for seed in range(num_seeds)]
    compile_s = []
    for seed in range(num_seeds):  # today: one jitted step per run, compiled in each run
      jax.clear_caches()
      step = training.make_train_step(loss, tx, mesh)
      start = time.perf_counter()
      states[seed], metrics = step(states[seed], batches[seed])
      jax.block_until_ready(metrics)
      compile_s.append(time.perf_counter() - start)
    out["compile_s"] = statistics.median(compile_s)
    start = time.perf_counter()
    for _ in range(steps):
      for seed in range(num_seeds):
        states[seed], metrics = step(states[seed], batches[seed])
    jax.block_until_ready(metrics)
  else:
    step = training.make_train_step(loss, tx, mesh, stacked=True)
    state = training.stack_states([fresh_state(seed) for seed in range(num_seeds)])
    stacked_batch = jax.tree.map(lambda *b: np.stack(b), *batches)
    start = time.perf_counter()
    state, metrics = step(state, stacked_batch)
    jax.block_until_ready(metrics)
    out["compile_s"] = time.perf_counter() - start
    # Each seed's first loss, as its own single-seed step computes it.
    single = training.make_train_step(loss, tx, mesh)
    alone = [float(single(fresh_state(seed), batches[seed])[1]["loss"])
             for seed in range(num_seeds)]
    out["max_loss_diff"] = float(np.max(np.abs(np.asarray(metrics["loss"]) - alone)))
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, stacked_batch)
    jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  out["ms_per_seed_step"] = 1e3 * seconds / (steps * num_seeds)
  out["samples_per_s"] = config.batch_size / (out["ms_per_seed_step"] / 1e3)
  return out


def thread_env(threads: int) -> dict[str, str]:
  """The child's environment: XLA and the BLAS pools on `threads` threads."""
  env = dict(os.environ)
  if threads == 1:
    from hilam_jax import jobs  # pylint: disable=g-import-not-at-top
    env.update(jobs.single_thread_env())
  return env


def measure(path: str) -> dict:
  """Runs one path in a child process; its figures plus the child's peak RSS (MB)."""
  command = [sys.executable, "-m", "experiments.benchmark_seeds", f"--child={path}",
             f"--num_seeds={_SEEDS.value}", f"--steps={_STEPS.value}"] + (
                 ["--small"] if _SMALL.value else [])
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             env=thread_env(_THREADS.value),
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  stdout = process.stdout.read().decode()
  _, status, usage = os.wait4(process.pid, 0)
  if os.waitstatus_to_exitcode(status):
    raise RuntimeError(f"--child={path} failed (exit {os.waitstatus_to_exitcode(status)})")
  result = json.loads(stdout.split("CHILD ", 1)[1])
  result["peak_rss_mb"] = usage.ru_maxrss / 1024
  return result


def summarize(rounds: list[dict]) -> dict:
  """Medians per path over the rounds, and the single / stacked ratio of time per seed-step."""
  paths = {}
  for path in PATHS:
    runs = [r for r in rounds if r["path"] == path]
    paths[path] = {key: statistics.median(r[key] for r in runs)
                   for key in ("compile_s", "ms_per_seed_step", "samples_per_s", "peak_rss_mb")}
  paths["stacked"]["max_loss_diff"] = max(r["max_loss_diff"] for r in rounds
                                          if r["path"] == "stacked")
  ratio = paths["single"]["ms_per_seed_step"] / paths["stacked"]["ms_per_seed_step"]
  return {"paths": paths, "speedup_stacked": ratio}


def format_table(summary: dict, info: dict) -> str:
  lines = [f"{info['num_seeds']} seeds, batch {info['batch_size']}, {info['params']:,} params, "
           f"{info['threads']} thread(s), {info['repeats']} rounds of {info['steps']} steps",
           "| path | compile s | ms / seed-step | samples/s per seed | peak RSS MB |",
           "|---|---|---|---|---|"]
  for path in PATHS:
    p = summary["paths"][path]
    lines.append(f"| {path} | {p['compile_s']:.1f} | {p['ms_per_seed_step']:.1f} | "
                 f"{p['samples_per_s']:.0f} | {p['peak_rss_mb']:.0f} |")
  lines.append(f"stacked vs single: {summary['speedup_stacked']:.2f}x per seed-step "
               f"(> 1: faster); first-step loss of each seed, max |stacked - alone| = "
               f"{summary['paths']['stacked']['max_loss_diff']:.1e}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CHILD.value:
    print("CHILD " + json.dumps(run_path(_CHILD.value, _SEEDS.value, _STEPS.value,
                                         _SMALL.value)), flush=True)
    return
  rounds = []
  for i in range(_REPEATS.value):
    for path in (PATHS if i % 2 == 0 else PATHS[::-1]):
      rounds.append(measure(path))
      print(f"round {i + 1}/{_REPEATS.value} {path}: "
            f"{rounds[-1]['ms_per_seed_step']:.1f} ms per seed-step", flush=True)
  summary = summarize(rounds)
  info = {"num_seeds": _SEEDS.value, "steps": _STEPS.value, "repeats": _REPEATS.value,
          "threads": _THREADS.value, "batch_size": rounds[0]["batch_size"],
          "params": rounds[0]["params"]}
  print(format_table(summary, info))
  print("RESULT " + json.dumps({**info, **summary, "rounds": rounds}))


if __name__ == "__main__":
  app.run(main)
