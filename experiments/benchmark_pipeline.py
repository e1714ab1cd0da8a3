"""Benchmark: input pipeline throughput and peak RSS against a plain tfds baseline; generator speed.

Not a test: it prints measured figures. Each pipeline runs in its own fresh subprocess, so its
peak RSS is its own; both run in the same invocation on the same data, so the ratio compares
like with like on whatever machine runs it.

  python -m experiments.benchmark_pipeline                      # uses/creates ./data BabyAI set
  python -m experiments.benchmark_pipeline --dataset_dir=data/babyai_bosslevel/1.0.0 \
      --batch_size=256 --num_batches=150 --shuffle_buffer=10000

Pipelines (frames/s = frames delivered in fixed-shape numpy batches, after a warm-up that fills
the shuffle buffer):
  ours:   data_pipeline.make_dataset, all transforms on: standardize, episode ids, 10-step
          action chunks with pad masks, 10,000-frame shuffle, JPEG decode, resize to the native
          56x56 (a no-op the pipeline skips), random shift + colour jitter, fixed-shape batches.
  noaug:  the same without augmentation: what tf.data does when augmentation runs on the device
          (the default placement, `data.augment_on="device"`): decode/resize/batch only.
  pairs:  `ours` with (t, t+4) frame pairs (two images decoded per element).
  plain:  tfds.builder_from_directory(...).as_dataset() -> flatten steps -> decode -> batch
          (image and action only, no shuffle, no augmentation).
So "ours / plain" is the host-pipeline ratio with augmentation on the host, "noaug / plain" the
one with augmentation on the device.

Train step (mode `step`): the LAM's jitted train step (experiments/configs/train_lam.py
"babyai": its model and batch of 56x56 frame pairs) with and without on-device augmentation
(`hilam_jax.training.augment`, default AugmentConfig), interleaved blocks in one process, median
step time of each; and the jitted augmentation alone on a pipeline-sized batch.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from absl import app
from absl import flags

_DATASET_DIR = flags.DEFINE_string(
    "dataset_dir", None, "Versioned BabyAI dataset folder (>= 1000 episodes). Default: "
    "<data_dir>/babyai_bosslevel/1.0.0, generated with the default config if absent.")
_DATA_DIR = flags.DEFINE_string("data_dir", "./data", "Where to generate the default dataset.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Frames per batch.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 150, "Timed batches per pipeline.")
_SHUFFLE = flags.DEFINE_integer("shuffle_buffer", 10_000, "Frame shuffle buffer (ours).")
_MODE = flags.DEFINE_enum("mode", "all", ["all", "ours", "noaug", "pairs", "plain", "step"],
                          "all: run every pipeline in a subprocess and the generators.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Interleaved runs per pipeline (median kept).")
_GENERATORS = flags.DEFINE_bool("generators", True, "Also time the dataset generators.")
_STEP_REPEATS = flags.DEFINE_integer("step_repeats", 5, "Interleaved blocks per train step.")
_STEPS_PER_BLOCK = flags.DEFINE_integer("steps_per_block", 10, "Timed steps per block.")
_RESIZE = 56  # BabyAI frames are 56x56


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _time_batches(iterator, warmup: int, num_batches: int, batch_size: int) -> dict:
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  shapes = {k: list(v.shape) for k, v in batch.items() if hasattr(v, "shape")}
  return {"frames_per_second": num_batches * batch_size / seconds, "seconds": seconds,
          "batches": num_batches, "batch_size": batch_size, "example_shapes": shapes}


def run_ours(dataset_dir: str, pairs: bool, augment: bool = True) -> dict:
  from data_pipeline import dataset as dp
  from data_pipeline import frame_transforms as ft
  from data_pipeline import schema

  transforms = dp.TransformConfig(
      action_horizon=10, frame_pair_k=4 if pairs else None, resize=(_RESIZE, _RESIZE),
      augment=ft.AugmentConfig() if augment else None)
  pipe = dp.make_dataset([dp.DatasetSpec(dataset_dir)], batch_size=_BATCH_SIZE.value,
                         transforms=transforms, shuffle_buffer=_SHUFFLE.value, seed=0)
  iterator = (schema.flatten_keys(b) for b in pipe.as_numpy_iterator())
  warmup = _SHUFFLE.value // _BATCH_SIZE.value + 5  # the buffer is full before timing starts
  return _time_batches(iterator, warmup, _NUM_BATCHES.value, _BATCH_SIZE.value)


def run_plain(dataset_dir: str) -> dict:
  import tensorflow as tf
  import tensorflow_datasets as tfds

  builder = tfds.builder_from_directory(dataset_dir)
  decoders = {"steps": {"observation": {"image": tfds.decode.SkipDecoding()}}}
  ds = builder.as_dataset(split="train", decoders=decoders).repeat()
  ds = ds.flat_map(lambda episode: episode["steps"])

  def decode(step):
    image = tf.io.decode_jpeg(step["observation"]["image"], channels=3)
    return {"image": tf.ensure_shape(image, (_RESIZE, _RESIZE, 3)), "action": step["action"]}

  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(_BATCH_SIZE.value, drop_remainder=True).prefetch(2)
  return _time_batches(ds.as_numpy_iterator(), 5, _NUM_BATCHES.value, _BATCH_SIZE.value)


def run_train_step() -> dict:
  """Step time of the LAM train step with vs without on-device augmentation (same process)."""
  import jax
  import jax.numpy as jnp

  from data_pipeline import frame_transforms as ft
  from experiments.configs import train_lam
  from hilam_jax import training
  from hilam_jax.lam import losses
  from hilam_jax.lam import model as lam_model
  from hilam_jax.lam import trainer as lam_trainer
  from hilam_jax.training import augment

  config = train_lam.get_config("babyai")
  size = tuple(config.data.image_size)
  module = lam_model.LatentActionModel(lam_model.LAMConfig.from_dict(dict(config.lam)))
  mesh = training.make_mesh()
  tx = training.make_optimizer(config)
  init = lambda r: module.init(r, jnp.zeros((1, *size, 3), jnp.uint8),
                               jnp.zeros((1, *size, 3), jnp.uint8))["params"]
  loss_fn = lambda p, b, r: losses.lam_loss(p, module, b, r)
  config.data.augment = {"shift_pad": ft.AugmentConfig().shift_pad}  # the default transforms
  config.data.augment_on = "device"
  augment_fn = lam_trainer.device_augment_fn(config)
  steps = {"without": training.make_train_step(loss_fn, tx, mesh),
           "with": training.make_train_step(loss_fn, tx, mesh, augment_fn=augment_fn)}
  frames = np.random.default_rng(0).integers(0, 256, (config.batch_size, *size, 3), np.uint8)
  batch = training.shard_batch({"frame_t": frames, "frame_tk": frames[::-1]}, mesh)
  states = {k: training.create_train_state(init, tx, jax.random.key(0), mesh) for k in steps}
  times = {k: [] for k in steps}
  for block in range(_STEP_REPEATS.value + 1):  # block 0 compiles and warms up
    for name, step in steps.items():
      state = states[name]
      start = time.perf_counter()
      for _ in range(_STEPS_PER_BLOCK.value):
        state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      states[name] = state
      if block:
        times[name].append((time.perf_counter() - start) / _STEPS_PER_BLOCK.value)
  result = {f"step_seconds_{k}_augment": float(np.median(v)) for k, v in times.items()}
  result["step_blocks"] = times
  result["batch_size"] = config.batch_size
  result["image_size"] = list(size)

  # The augmentation alone on one pipeline batch of frames (B frames, one draw each).
  images = training.shard_batch(
      {"x": np.random.default_rng(1).integers(0, 256, (_BATCH_SIZE.value, *size, 3), np.uint8)},
      mesh)["x"]
  alone = jax.jit(lambda x, r: augment.augment_images([x], r)[0])
  jax.block_until_ready(alone(images, jax.random.key(0)))
  start = time.perf_counter()
  for i in range(20):
    out = alone(images, jax.random.key(i))
  jax.block_until_ready(out)
  result["augment_alone_frames_per_second"] = 20 * _BATCH_SIZE.value / (time.perf_counter() - start)
  return result


def _child(mode: str, dataset_dir: str) -> dict:
  cmd = [sys.executable, "-m", "experiments.benchmark_pipeline", f"--mode={mode}",
         f"--dataset_dir={dataset_dir}", f"--batch_size={_BATCH_SIZE.value}",
         f"--num_batches={_NUM_BATCHES.value}", f"--shuffle_buffer={_SHUFFLE.value}",
         f"--step_repeats={_STEP_REPEATS.value}", f"--steps_per_block={_STEPS_PER_BLOCK.value}"]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True)
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def _default_dataset() -> str:
  from data_pipeline.generators import babyai
  from experiments.configs import generate_babyai

  config = generate_babyai.get_config("default")
  config.num_workers = 2
  return babyai.generate(config, _DATA_DIR.value)["dataset_dir"]


def _time_generators() -> dict:
  from data_pipeline.generators import babyai
  from data_pipeline.generators import metaworld
  from experiments.configs import generate_babyai
  from experiments.configs import generate_metaworld

  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    config = generate_babyai.get_config("default")
    config.num_train_episodes, config.num_val_episodes = 100, 10
    config.episodes_per_shard, config.num_workers, config.seed = 50, 2, 12345
    stats = babyai.generate(config, os.path.join(tmp, "babyai"))
    results["babyai_bosslevel_2_workers"] = {
        "episodes": stats["episodes"], "seconds": round(stats["seconds"], 2),
        "episodes_per_second": round(stats["episodes_per_second"], 2)}
    config = generate_metaworld.get_config("default")
    config.tasks = ("reach-v3", "pick-place-v3")
    config.episodes_per_task.train, config.episodes_per_task.val = 8, 2
    config.episodes_per_shard, config.num_workers = 5, 2
    stats = metaworld.generate(config, os.path.join(tmp, "metaworld"))
    results["metaworld_reach_pick_place_2_workers"] = {
        "episodes": stats["episodes"], "seconds": round(stats["seconds"], 2),
        "episodes_per_second": round(stats["episodes_per_second"], 2)}
  return results


def main(argv):
  del argv
  if _MODE.value != "all":
    if _MODE.value == "step":
      result = run_train_step()
    elif _MODE.value == "plain":
      result = run_plain(_DATASET_DIR.value)
    else:
      result = run_ours(_DATASET_DIR.value, pairs=_MODE.value == "pairs",
                        augment=_MODE.value != "noaug")
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    print("RESULT " + json.dumps(result), flush=True)
    return

  from data_pipeline import reader
  dataset_dir = _DATASET_DIR.value or _default_dataset()
  source = reader.get_source(dataset_dir)
  print(f"dataset: {dataset_dir}: {source.num_episodes} train episodes")
  if source.num_episodes < 1000:
    print("WARNING: fewer than 1000 episodes; the target is stated for >= 1000")
  results = {"dataset_dir": dataset_dir, "train_episodes": source.num_episodes}
  # Interleaved repeats, median per pipeline: a load spike on this shared machine then hits
  # both pipelines alike instead of deciding the ratio.
  runs = {mode: [] for mode in ("plain", "ours", "noaug", "pairs")}
  for repeat in range(_REPEATS.value):
    for mode in runs:
      runs[mode].append(_child(mode, dataset_dir))
      print(f"[{repeat + 1}/{_REPEATS.value}] {mode:6s}: "
            f"{runs[mode][-1]['frames_per_second']:9.0f} frames/s, peak RSS "
            f"{runs[mode][-1]['peak_rss_mb']:.0f} MB", flush=True)
  for mode, mode_runs in runs.items():
    results[mode] = {
        "frames_per_second": float(np.median([r["frames_per_second"] for r in mode_runs])),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in mode_runs),
        "runs": mode_runs}
  ratio = results["ours"]["frames_per_second"] / results["plain"]["frames_per_second"]
  results["ours_vs_plain"] = round(ratio, 3)
  results["noaug_vs_plain"] = round(
      results["noaug"]["frames_per_second"] / results["plain"]["frames_per_second"], 3)
  results["host_pipeline_vs_plain"] = {"augment_on_host": results["ours_vs_plain"],
                                       "augment_on_device": results["noaug_vs_plain"]}
  for mode in runs:
    print(f"{mode:6s} median: {results[mode]['frames_per_second']:9.0f} frames/s, max peak RSS "
          f"{results[mode]['peak_rss_mb']:.0f} MB")
  print(f"host pipeline, augmentation on the device (noaug) / plain: "
        f"{results['noaug_vs_plain']:.2f}x (target >= 1.0x)")
  print(f"host pipeline, augmentation on the host (ours) / plain: {ratio:.2f}x; ours peak RSS "
        f"{results['ours']['peak_rss_mb']:.0f} MB with a {_SHUFFLE.value}-frame shuffle buffer "
        "(target < 2048 MB)")
  step = results["train_step"] = _child("step", dataset_dir)
  cost = step["step_seconds_with_augment"] - step["step_seconds_without_augment"]
  step["augment_cost_fraction"] = round(cost / step["step_seconds_without_augment"], 4)
  print(f"LAM train step (batch {step['batch_size']} pairs, {step['image_size']}): "
        f"{1e3 * step['step_seconds_without_augment']:.1f} ms without, "
        f"{1e3 * step['step_seconds_with_augment']:.1f} ms with on-device augmentation "
        f"({100 * step['augment_cost_fraction']:+.1f}%); augmentation alone "
        f"{step['augment_alone_frames_per_second']:.0f} frames/s")
  if _GENERATORS.value:
    results["generators"] = _time_generators()
    for name, g in results["generators"].items():
      print(f"generator {name}: {g['episodes_per_second']:.2f} episodes/s "
            f"({g['episodes']} episodes in {g['seconds']} s)")
  from data_pipeline import run_info
  results["versions"] = run_info.package_versions()
  os.makedirs("runs", exist_ok=True)
  with open(os.path.join("runs", "benchmark_pipeline.json"), "w") as f:
    json.dump(results, f, indent=1)
  print("written runs/benchmark_pipeline.json")


if __name__ == "__main__":
  app.run(main)
