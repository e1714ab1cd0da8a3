"""Meta-World v3 expert dataset generator: spawned simulation workers, RLDS written here.

The parent process (this module) plans shards, hands them to a pool of *spawned* workers running
`metaworld_sim.simulate_shard` (MuJoCo + EGL; never TensorFlow, which segfaults beside a GL
context) and writes each returned shard with `ShardedRLDSWriter` (TensorFlow, JPEG encoding).

Determinism and resumption: the split's episode slots (task, index) are interleaved over the tasks
and cut into shards of `episodes_per_shard`; a slot's env seeds depend only on (config.seed,
split, task, index), so shard i is the same whatever the worker count or the order in which
shards finish. Finished shards are skipped on rerun; `num_workers` is left out of the config the
writer checks, so a run may resume with another worker count.

Raw RLDS schema (T steps, S = config.image_size):
  steps/observation/image      Image [S, S, 3] JPEG, camera `config.camera`, upright
  steps/observation/state      float32 [39]  Meta-World observation (hand xyz, gripper, objects,
                                             previous frame's, goal xyz)
  steps/action                 float32 [4]   Δxyz of the hand, gripper effort; in [-1, 1]
  steps/reward, discount       float32
  steps/is_first, is_last, is_terminal  bool (is_terminal always False: Meta-World never
                                             terminates, episodes are cut after success)
  steps/language_instruction   Text          template from the task name
  episode_metadata/task        Text          e.g. "pick-place-v3"
  episode_metadata/seed        int64         env seed; replaying the actions from it
                                             reproduces the episode (`metaworld_sim.replay`)
  episode_metadata/source      Text          "<task>/seed=<seed>"
  episode_metadata/phase_start_steps  int32 [K]  first step of each expert phase (first is 0)
  episode_metadata/phase_names Sequence(Text) [K]  the phase names (see metaworld_sim.PHASE_SPECS)
"""
from __future__ import annotations

import math
import multiprocessing
import time
from typing import Any

from absl import logging
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import rlds_writer
from data_pipeline import run_info
from data_pipeline.sim import metaworld as metaworld_sim

# Config fields that do not change the data (left out of the writer's resume check).
_RUNTIME_FIELDS = ("num_workers",)


def features(image_size: int) -> tfds.features.FeaturesDict:
  """The raw RLDS features (module docstring)."""
  step = {
      "observation": {
          "image": tfds.features.Image(shape=(image_size, image_size, 3),
                                       encoding_format="jpeg"),
          "state": tfds.features.Tensor(shape=(39,), dtype=np.float32),
      },
      "action": tfds.features.Tensor(shape=(4,), dtype=np.float32),
      "reward": tfds.features.Scalar(dtype=np.float32),
      "discount": tfds.features.Scalar(dtype=np.float32),
      "is_first": tfds.features.Scalar(dtype=np.bool_),
      "is_last": tfds.features.Scalar(dtype=np.bool_),
      "is_terminal": tfds.features.Scalar(dtype=np.bool_),
      "language_instruction": tfds.features.Text(),
  }
  metadata = {
      "task": tfds.features.Text(),
      "seed": tfds.features.Scalar(dtype=np.int64),
      "source": tfds.features.Text(),
      "phase_start_steps": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "phase_names": tfds.features.Sequence(tfds.features.Text()),
  }
  return rlds_writer.episode_features(step, metadata)


def sim_config(config: ml_collections.ConfigDict) -> metaworld_sim.SimConfig:
  return metaworld_sim.SimConfig(
      image_size=config.image_size,
      camera=config.camera,
      fast_render=config.fast_render,
      max_steps=config.max_steps,
      steps_after_success=config.steps_after_success,
      min_phase_steps=config.min_phase_steps,
      max_attempts=config.max_attempts,
  )


def plan_shards(config: ml_collections.ConfigDict) -> list[metaworld_sim.ShardSpec]:
  """All shards of all splits. Slots are interleaved over tasks so each shard mixes tasks."""
  unknown = [t for t in config.tasks if t not in metaworld_sim.INSTRUCTIONS
             and t not in metaworld_sim.PHASE_SPECS]
  if unknown:
    logging.warning("tasks without a mapped expert phase structure or instruction template "
                    "(stored as one phase %r, instruction from the name): %s",
                    metaworld_sim.UNMAPPED_PHASE, unknown)
  sim = sim_config(config)
  specs = []
  for split, count in config.episodes_per_task.items():
    slots = [(task, i) for i in range(count) for task in config.tasks]
    num_shards = max(1, math.ceil(len(slots) / config.episodes_per_shard))
    for index in range(num_shards):
      chunk = slots[index * config.episodes_per_shard:(index + 1) * config.episodes_per_shard]
      specs.append(metaworld_sim.ShardSpec(split, index, num_shards, tuple(chunk), config.seed,
                                           sim))
  return specs


def _writer_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  jsonable = run_info.to_jsonable(config)
  return {k: v for k, v in jsonable.items() if k not in _RUNTIME_FIELDS}


def generate(config: ml_collections.ConfigDict, data_dir: str) -> dict[str, Any]:
  """Generates (or resumes) the dataset `<data_dir>/<config.name>/<config.version>`.

  Returns:
    {"dataset_dir", "episodes", "steps", "failed_attempts", "seconds", "episodes_per_second",
    "steps_per_second", "worker_episodes_per_second", "skipped_shards"} for the episodes generated by this
    call (skipped shards excluded). episodes_per_second is wall-clock, worker start-up included.
  """
  if not config.name.startswith("metaworld_") or "-" in config.name:
    raise ValueError(f"dataset name {config.name!r} must be snake case starting with "
                     "'metaworld_' (the registered standardize pattern)")
  writer = rlds_writer.ShardedRLDSWriter(
      data_dir, config.name, features(config.image_size), version=config.version,
      description=(f"Meta-World v3 scripted-expert episodes ({', '.join(config.tasks)}), "
                   f"{config.image_size}x{config.image_size} {config.camera} camera, successful "
                   "episodes only, expert phase boundaries in episode_metadata."),
      config=_writer_config(config))
  specs = plan_shards(config)
  todo = [s for s in specs if not writer.is_done(s.split, s.index)]
  skipped = len(specs) - len(todo)
  if skipped:
    logging.info("resuming: %d of %d shards already written", skipped, len(specs))
  total_episodes = sum(len(s.slots) for s in todo)
  episodes = steps = failed = 0
  worker_seconds = 0.0
  start = time.perf_counter()
  if todo:
    num_workers = max(1, min(config.num_workers, len(todo)))
    logging.info("generating %d shards (%d episodes) with %d spawned workers into %s",
                 len(todo), total_episodes, num_workers, writer.dataset_dir)
    # Spawned, not forked: the workers must not inherit TensorFlow (data_pipeline.sim.metaworld).
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
      for done, result in enumerate(pool.imap_unordered(metaworld_sim.simulate_shard, todo), 1):
        spec = result["spec"]
        episodes += writer.write_shard(spec.split, spec.index, spec.num_shards,
                                       result["episodes"])
        steps += result["num_steps"]
        failed += result["failed_attempts"]
        worker_seconds += result["seconds"]
        elapsed = time.perf_counter() - start
        rate = episodes / elapsed
        logging.info(
            "shard %s %d/%d written | %d/%d shards, %d/%d episodes | %.2f episodes/s, "
            "%.0f steps/s | %d failed expert attempts | ETA %.0f s",
            spec.split, spec.index + 1, spec.num_shards, done, len(todo), episodes,
            total_episodes, rate, steps / elapsed, failed,
            (total_episodes - episodes) / max(rate, 1e-9))
  dataset_dir = writer.finalize()
  seconds = time.perf_counter() - start
  stats = {
      "dataset_dir": dataset_dir,
      "episodes": episodes,
      "steps": steps,
      "failed_attempts": failed,
      "seconds": seconds,
      "episodes_per_second": episodes / seconds if episodes else 0.0,
      # One worker's simulation + rendering rate, without process start-up and writing.
      "worker_episodes_per_second": episodes / worker_seconds if episodes else 0.0,
      "steps_per_second": steps / seconds if episodes else 0.0,
      "skipped_shards": skipped,
  }
  logging.info("done: %d episodes (%d steps) in %.1f s = %.2f episodes/s (one worker simulates "
               "%.2f episodes/s); %s", episodes, steps, seconds, stats["episodes_per_second"],
               stats["worker_episodes_per_second"], dataset_dir)
  return stats
