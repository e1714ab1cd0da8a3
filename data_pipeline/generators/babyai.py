"""BabyAI benchmark data: expert demonstrations with ground-truth subtask boundaries, as RLDS.

The shipped BabyAI expert (`minigrid.utils.baby_ai_bot.BabyAIBot`) solves a level from a seed;
we record an RGB view (config `view`: "egocentric", 56x56 from `RGBImgPartialObsWrapper` with
8-pixel tiles, or "room", the agent's whole room fully observed, 8x8 cells of `tile_size` px; see
`data_pipeline/sim/babyai.py`), its actions and, from its plan, when each part of the instruction
was done. The view and tile size are in the dataset's generation_info.json (`sim.render_settings`),
from which the evaluation renders identically. Only successful episodes
are kept.

Episode layout (T = number of actions + 1): step t holds the frame *before* action t, action t,
and the reward/discount received after it; the last step holds the terminal frame (the result of
the final action) with `is_last = is_terminal = True`, the placeholder action `done` and reward 0.
Keeping the terminal frame gives every action its resulting frame, which the latent action model
needs.

Subtask boundaries. The bot turns the instruction into a stack of *initial subgoals* before the
first action (e.g. "pick up a key" -> GoNextTo(key), Pickup, Drop) and executes them from the top;
while acting it pushes helper subgoals (explore, move a blocker, fetch a key) on top and sometimes
replaces a subgoal by an equivalent one (Open -> Open(Unlock)). Initial subgoal k counts as done at
step t when, during the bot's replanning at frame t, the stack shrinks below k's position after a
subgoal's method returns: then k, whatever replaced it and every helper pushed on top of it have all
been popped, and action t is the first action of the next subgoal, so frame t starts a new
subtask. A subgoal still on the stack when the episode ends (e.g. the Drop after the final
"pick up", which the level does not require) is done at the terminal frame T - 1. Done steps are
stored in execution order, hence non-decreasing. Leaf instructions (the action clauses joined by
and/then/after) are tracked while `_process_instr` pushes their subgoals; a leaf is done when its
last-executed subgoal is.

Leaf subtasks (`leaf_done_steps`, `leaf_names`): the finest level of the bot's plan. Each frame's
action comes from the subgoal on top of the stack, initial or helper (BabyAI-UnlockLocal: go to
the key, pick it up, go to the door, open it; the initial subgoals are only "go to the door" and
"open", the key fetch being a helper of the first); runs of frames whose acting subgoal has the
same text form the leaf subtasks, and a run ends where the next begins.

The simulation (environments, views, the tracing bot, seeds) is `data_pipeline/sim/babyai.py`,
shared with the evaluation harness; this module shards, encodes and writes.

Generation is deterministic in the config: the environment seeds of shard i are a function of
(config seed, split, shard index, attempt) only, so the bytes written do not depend on the number
of worker processes. Workers ("spawn") simulate whole shards and return numpy episodes; the parent
encodes JPEGs and writes each shard atomically through `ShardedRLDSWriter`, skipping shards a
previous run finished. TensorFlow is imported lazily: simulation workers never load it.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import time
from typing import Any, Iterator, Mapping

from absl import logging
import numpy as np

from data_pipeline.sim import babyai as sim

# Version of the per-episode layout (bumped when `episode_features` changes): 2 added the leaf
# (acting-subgoal) labels.
EPISODE_FORMAT = 2

# ----------------------------------------------------------------------------- shards


def simulate_shard(task: Mapping[str, Any]) -> dict[str, Any]:
  """Simulates one shard: tries seeds in order until `num_episodes` bot successes.

  `task` holds level, tile_size, view, seed, split, index, num_shards, num_episodes, max_attempts.
  Top-level and picklable so that "spawn" workers can run it.
  """
  start = time.perf_counter()
  env = sim.make_env(task["level"], task["tile_size"], task["view"])
  episodes, attempt = [], 0
  while len(episodes) < task["num_episodes"]:
    if attempt >= task["max_attempts"]:
      raise RuntimeError(
          f"{task['level']}: only {len(episodes)} of {task['num_episodes']} bot successes in "
          f"{attempt} attempts for {task['split']} shard {task['index']}")
    seed = sim.episode_seed(task["seed"], task["split"], task["index"], attempt)
    episode = sim.simulate_episode(task["level"], seed, task["tile_size"], env=env)
    if episode is not None:
      episodes.append(episode)
    attempt += 1
  env.close()
  return {**task, "episodes": episodes, "attempts": attempt,
          "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- writing


def dataset_name(level: str, action_free: bool = False, name: str | None = None) -> str:
  """'BabyAI-BossLevel-v0' -> 'babyai_bosslevel' (+ '_video' for action-free data)."""
  if not name:
    core = re.sub(r"^BabyAI-|-v\d+$", "", level)
    name = "babyai_" + re.sub(r"[^a-z0-9]+", "_", core.lower()).strip("_")
  return name + "_video" if action_free else name


def episode_features(action_free: bool = False, image_size: int = sim.IMAGE_SIZE):
  """tfds features of one episode (see the module docstring for the step layout).

  `image_size`: side of the square frames in pixels (`sim.image_size(level, tile_size, view)`).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from data_pipeline import rlds_writer  # pylint: disable=g-import-not-at-top

  steps = {
      "observation": {
          "image": tfds.features.Image(shape=(image_size, image_size, 3), encoding_format="jpeg"),
          "direction": tfds.features.Scalar(tf.int64, doc="agent facing: 0 east .. 3 north"),
      },
      "language_instruction": tfds.features.Text(),
      "is_first": tf.bool,
      "is_last": tf.bool,
      "is_terminal": tf.bool,
  }
  if not action_free:
    steps["action"] = tfds.features.Scalar(tf.int64, doc=f"discrete: {sim.ACTION_NAMES}")
    steps["reward"] = tfds.features.Scalar(tf.float32)
    steps["discount"] = tfds.features.Scalar(tf.float32)
  steps_int32 = tfds.features.Tensor(shape=(None,), dtype=tf.int32)
  metadata = {
      "level": tfds.features.Text(),
      "seed": tfds.features.Scalar(tf.int64),
      "source": tfds.features.Text(),
      "subgoal_done_steps": steps_int32,
      "subgoal_names": tfds.features.Sequence(tfds.features.Text()),
      "subgoal_instruction_index": steps_int32,
      "instruction_done_steps": steps_int32,
      "instruction_names": tfds.features.Sequence(tfds.features.Text()),
      "leaf_done_steps": steps_int32,
      "leaf_names": tfds.features.Sequence(tfds.features.Text()),
  }
  return rlds_writer.episode_features(steps, metadata)


def to_rlds(episode: Mapping[str, Any], action_free: bool = False) -> dict[str, Any]:
  """A `simulate_episode` result as the nested dict `episode_features` encodes."""
  num_steps = len(episode["image"])
  index = np.arange(num_steps)
  steps = {
      "observation": {"image": episode["image"], "direction": episode["direction"]},
      "language_instruction": [episode["mission"]] * num_steps,
      "is_first": index == 0,
      "is_last": index == num_steps - 1,
      "is_terminal": index == num_steps - 1,
  }
  if not action_free:
    steps.update(action=episode["action"], reward=episode["reward"],
                 discount=episode["discount"])
  metadata = {key: episode[key] for key in (
      "level", "seed", "subgoal_done_steps", "subgoal_names", "subgoal_instruction_index",
      "leaf_done_steps", "leaf_names",
      "instruction_done_steps", "instruction_names")}
  metadata["source"] = f"{episode['level']}/seed={episode['seed']}"
  return {"steps": steps, "episode_metadata": metadata}


def shard_tasks(config: Any) -> list[dict[str, Any]]:
  """Every shard of every split, with its episode count (the last shard may be smaller)."""
  tasks = []
  for split, total in (("train", config.num_train_episodes), ("val", config.num_val_episodes)):
    num_shards = -(-total // config.episodes_per_shard)
    if num_shards > sim.MAX_SHARDS:
      raise ValueError(f"{split}: {num_shards} shards; raise episodes_per_shard")
    for index in range(num_shards):
      count = min(config.episodes_per_shard, total - index * config.episodes_per_shard)
      tasks.append({
          "level": config.level, "tile_size": config.tile_size, "view": view(config),
          "seed": config.seed,
          "split": split, "index": index, "num_shards": num_shards, "num_episodes": count,
          "max_attempts": min(sim.MAX_ATTEMPTS, config.max_attempts_per_episode * count + 10),
      })
  return tasks


def view(config: Any) -> str:
  """The config's view; configs written before the knob existed are egocentric."""
  return config.get("view", "egocentric")


def _simulated(tasks: list[dict[str, Any]], num_workers: int) -> Iterator[dict[str, Any]]:
  if num_workers <= 1 or len(tasks) <= 1:
    yield from map(simulate_shard, tasks)
    return
  context = multiprocessing.get_context("spawn")
  with context.Pool(min(num_workers, len(tasks))) as pool:
    yield from pool.imap_unordered(simulate_shard, tasks)


def _format_seconds(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  return f"{minutes // 60}h{minutes % 60:02d}m{seconds:02d}s"


def generate(config: Any, data_dir: str) -> dict[str, Any]:
  """Generates (or resumes) the dataset described by `config` under `data_dir`.

  Returns:
    dict with dataset_dir, name, shards written / skipped, episodes written, attempts, seconds and
    episodes_per_second (episodes written in this run / wall time, encoding included).
  """
  from data_pipeline import rlds_writer  # pylint: disable=g-import-not-at-top

  name = dataset_name(config.level, config.action_free, config.get("name"))
  # The worker count does not change the output, so a resumed run may use another one.
  identity = {k: v for k, v in config.to_dict().items() if k != "num_workers"}
  # The episode format: shards written by an older generator (without the leaf labels) are not
  # mixed with new ones in a resumed dataset.
  identity["episode_format"] = EPISODE_FORMAT
  size = sim.image_size(config.level, config.tile_size, view(config))
  writer = rlds_writer.ShardedRLDSWriter(
      data_dir, name, episode_features(config.action_free, size),
      description=(f"BabyAI bot demonstrations on {config.level} (minigrid BabyAIBot), "
                   f"{view(config)} RGB {size}px, successful episodes only"
                   + (", action-free video" if config.action_free else "")
                   + f". Config: {identity}"),
      config=identity)
  tasks = shard_tasks(config)
  # A shard is redone if its progress record or its file is missing (e.g. deleted by hand).
  todo = [t for t in tasks if not (
      writer.is_done(t["split"], t["index"])
      and os.path.exists(writer.shard_path(t["split"], t["index"], t["num_shards"])))]
  logging.info("%s: %d shards, %d already done, %d to simulate with %d worker(s) -> %s",
               name, len(tasks), len(tasks) - len(todo), len(todo), config.num_workers,
               writer.dataset_dir)
  start = time.perf_counter()
  episodes = attempts = 0
  for done, result in enumerate(_simulated(todo, config.num_workers), start=1):
    count = writer.write_shard(
        result["split"], result["index"], result["num_shards"],
        (to_rlds(e, config.action_free) for e in result["episodes"]))
    episodes += count
    attempts += result["attempts"]
    elapsed = time.perf_counter() - start
    logging.info(
        "%s shard %d/%d written: %d episodes (%d attempts, %.1fs simulating). Shards %d/%d, "
        "%.2f episodes/s, ETA %s", result["split"], result["index"] + 1, result["num_shards"],
        count, result["attempts"], result["seconds"], done, len(todo), episodes / elapsed,
        _format_seconds(elapsed / done * (len(todo) - done)))
  dataset_dir = writer.finalize()
  seconds = time.perf_counter() - start
  stats = {
      "dataset_dir": dataset_dir, "name": name, "shards_written": len(todo),
      "shards_skipped": len(tasks) - len(todo), "episodes": episodes, "attempts": attempts,
      "seconds": seconds, "episodes_per_second": episodes / seconds if seconds > 0 else 0.0,
  }
  logging.info("%s done: %d episodes (%d attempts) in %.1fs: %.2f episodes/s", name, episodes,
               attempts, seconds, stats["episodes_per_second"])
  return stats


# ----------------------------------------------------------------------------- example videos


def write_videos(out_dir: str, *, num_videos: int, level: str = "BabyAI-UnlockLocal-v0",
                 seed: int = 3, view: str = "room", tile_size: int = 7, fps: int = 8
                 ) -> dict[str, Any]:
  """Writes bot episodes as plain video files: a stand-in for "a folder of your own videos".

  Each successful episode of `level` becomes `<out_dir>/episode_<i>.mp4` (H.264 via
  imageio-ffmpeg, the `sim` extra) and its mission a row of `<out_dir>/captions.csv` (columns
  path, caption), the layout `experiments/convert_videos.py` reads. Nothing else of the
  simulator (actions, subtasks) is kept. Existing files are overwritten.

  Returns:
    {"video_dir": out_dir, "videos": [paths], "captions_csv": path, "frames": [per video]}.
  """
  import csv  # pylint: disable=g-import-not-at-top
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top

  if num_videos < 1:
    raise ValueError(f"num_videos must be >= 1, got {num_videos}")
  os.makedirs(out_dir, exist_ok=True)
  env = sim.make_env(level, tile_size, view)
  videos, frames, rows = [], [], []
  for attempt in range(sim.MAX_ATTEMPTS):
    if len(videos) == num_videos:
      break
    episode = sim.simulate_episode(level, sim.test_seed(seed, attempt), tile_size, env, view)
    if episode is None:
      continue
    rel = f"episode_{len(videos):04d}.mp4"
    path = os.path.join(out_dir, rel)
    imageio.mimwrite(path, episode["image"], format="FFMPEG", fps=fps, macro_block_size=1)
    videos.append(path)
    frames.append(len(episode["image"]))
    rows.append((rel, episode["mission"]))
  if len(videos) < num_videos:
    raise RuntimeError(f"the bot solved only {len(videos)} of {sim.MAX_ATTEMPTS} {level} episodes")
  captions = os.path.join(out_dir, "captions.csv")
  with open(captions, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(("path", "caption"))
    writer.writerows(rows)
  return {"video_dir": out_dir, "videos": videos, "captions_csv": captions, "frames": frames}
