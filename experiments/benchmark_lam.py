"""Benchmark: latent-action labeling throughput and the IDM's achieved FLOP/s.

Not a test: it prints measured figures, all from one run on this machine.

  python -m experiments.benchmark_lam --lam_workdir=runs/lam_babyai \
      --dataset_dir=runs/main/data/babyai_unlocklocal_video/1.0.0 --batch_size=256

  * labeling: frame pairs/s through the labeling job's path (RLDS read, JPEG decode, pairs, jitted
    IDM encode) on the train split, and pairs/s of the jitted encode alone on device-resident
    batches;
  * IDM FLOP/s: XLA's cost analysis of the compiled encode (flops per call) divided by its
    measured time, as a fraction of this machine's matmul peak (a jitted float32 2048x2048
    matmul, best of several runs, measured in the same run).
Without --lam_workdir a freshly initialised LAM of the `train_lam.py:babyai` config is used
(throughput does not depend on the weights).
"""
import json
import os
import time

from absl import app
from absl import flags

from hilam_jax import benchmarking

_LAM = flags.DEFINE_string("lam_workdir", None, "A train_lam workdir (default: fresh init).")
_DATASET = flags.DEFINE_string("dataset_dir", "runs/main/data/babyai_unlocklocal_video/1.0.0",
                               "RLDS dataset to label.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Pairs per encode call.")
_PAIRS = flags.DEFINE_integer("num_pairs", 20_000, "Pairs labelled for the end-to-end figure.")
_OUT = flags.DEFINE_string("out", "runs/benchmark_lam.json", "Where to write the figures.")


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  from experiments.configs import train_lam
  from hilam_jax import logs
  from data_pipeline import run_info
  from hilam_jax.lam import frozen_lam
  from hilam_jax.lam import labeling
  from hilam_jax.lam import model as lam_model
  from hilam_jax.lam import trainer
  logs.quiet_library_logs()

  if _LAM.value:
    lam = trainer.load_frozen_lam(_LAM.value)
  else:
    config = train_lam.get_config("babyai")
    module = lam_model.LatentActionModel(lam_model.LAMConfig.from_dict(dict(config.lam)))
    frames = jnp.zeros((1, *config.data.image_size, 3), jnp.uint8)
    params = module.init(jax.random.key(0), frames, frames)["params"]
    lam = frozen_lam.FrozenLAM(module, params, config.data.frame_gap,
                               tuple(config.data.image_size))
  batch = _BATCH.value
  results = {"batch_size": batch, "image_size": list(lam.image_size),
             "latent_dim": lam.latent_dim, "frame_gap": lam.frame_gap}

  # End to end through the labeling job's own code path.
  jobs = labeling.plan_shards([{"dataset_dir": _DATASET.value, "split": "train"}], "/tmp/unused")
  start, pairs = time.perf_counter(), 0
  for job in jobs:
    labels = labeling.label_shard(lam, job, batch)
    pairs += sum(len(v) for v in labels.values())
    if pairs >= _PAIRS.value:
      break
  seconds = time.perf_counter() - start
  results["labeling_pairs_per_second"] = pairs / seconds
  results["labeling_pairs"] = pairs
  print(f"labeling (read + decode + encode): {pairs} pairs in {seconds:.1f} s = "
        f"{pairs / seconds:.0f} pairs/s at batch {batch}")

  # The jitted IDM alone.
  rng = np.random.default_rng(0)
  frame_t = jnp.asarray(rng.integers(0, 255, (batch, *lam.image_size, 3), dtype=np.uint8))
  frame_tk = jnp.asarray(rng.integers(0, 255, (batch, *lam.image_size, 3), dtype=np.uint8))
  encode = jax.jit(lambda a, b: lam.encode(a, b))
  encode(frame_t, frame_tk).block_until_ready()
  times = []
  for _ in range(10):
    start = time.perf_counter()
    encode(frame_t, frame_tk).block_until_ready()
    times.append(time.perf_counter() - start)
  encode_seconds = float(np.median(times))
  cost = encode.lower(frame_t, frame_tk).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost["flops"])
  peak = benchmarking.matmul_peak_flops()
  results.update({
      "encode_pairs_per_second": batch / encode_seconds,
      "idm_flops_per_call": flops,
      "idm_flops_per_second": flops / encode_seconds,
      "matmul_peak_flops_per_second": peak,
      "idm_fraction_of_matmul_peak": flops / encode_seconds / peak,
      "versions": run_info.package_versions(),
  })
  print(f"IDM encode alone: {batch / encode_seconds:.0f} pairs/s; "
        f"{flops / 1e9:.2f} GFLOP per call (XLA cost analysis) -> "
        f"{flops / encode_seconds / 1e9:.1f} GFLOP/s = "
        f"{100 * flops / encode_seconds / peak:.1f}% of the measured matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s")
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(results, f, indent=1)
  print(f"written {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
