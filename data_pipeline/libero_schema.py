"""The exact RLDS schema of LIBERO as released for OpenVLA, and a tiny dataset writer for tests.

OpenVLA regenerated the LIBERO demonstrations at 256x256, removed no-op actions and dropped
unsuccessful replays, then wrote them with its `rlds_dataset_builder` LIBERO builders as the TFDS
datasets `libero_{spatial,object,goal,10}_no_noops`, version 1.0.0, one `train` split. Per step:

  observation/image        Image (256, 256, 3) uint8 JPEG   third-person (agentview) camera
  observation/wrist_image  Image (256, 256, 3) uint8 JPEG   eye-in-hand camera
  observation/state        float32 [8]   EEF position (3), axis-angle (3), gripper qpos (2)
  observation/joint_state  float32 [7]   arm joint angles
  action                   float32 [7]   Δpos (3), Δaxis-angle (3), gripper (-1 open, +1 close)
  discount                 float32       1
  reward                   float32       1 on the final step, else 0
  is_first, is_last, is_terminal  bool   is_terminal is True on the last step of a demo
  language_instruction     Text          the task's instruction, repeated on every step
episode_metadata/file_path Text          the source HDF5 file; ~50 demos of one task share it

Both images are rotated 180° relative to the simulator's render (OpenVLA's regeneration script
stored `obs["agentview_image"][::-1, ::-1]` and likewise the wrist image): evaluation must apply
the same rotation to rendered frames before they reach a policy trained on this data.

`libero_features()` reproduces the builders' features (dtypes, shapes, encodings and docs), so
a dataset written with it has the release's `features.json`; `write_tiny_libero_dataset` writes
a few random-but-plausible episodes with it for tests.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import rlds_writer

LIBERO_VERSION = "1.0.0"
LIBERO_DATASETS = (
    "libero_spatial_no_noops",
    "libero_object_no_noops",
    "libero_goal_no_noops",
    "libero_10_no_noops",
)
# LIBERO-90 in the same schema: not part of OpenVLA's release, written by its regeneration
# script and RLDS builder for the `libero_90` suite (the paper's robot video).
LIBERO_90 = "libero_90_no_noops"
# Episodes in each release's train split.
NUM_EPISODES = {
    "libero_spatial_no_noops": 432,
    "libero_object_no_noops": 454,
    "libero_goal_no_noops": 428,
    "libero_10_no_noops": 379,
}
IMAGE_SHAPE = (256, 256, 3)
STATE_DIM, JOINT_DIM, ACTION_DIM = 8, 7, 7

# A few real task instructions per suite, for plausible tiny datasets.
_INSTRUCTIONS = {
    "libero_spatial_no_noops": (
        "pick up the black bowl between the plate and the ramekin and place it on the plate",
        "pick up the black bowl next to the ramekin and place it on the plate",
    ),
    "libero_object_no_noops": (
        "pick up the alphabet soup and place it in the basket",
        "pick up the cream cheese and place it in the basket",
    ),
    "libero_goal_no_noops": (
        "open the middle drawer of the cabinet",
        "put the bowl on the stove",
    ),
    "libero_90_no_noops": (
        "open the top drawer of the cabinet",
        "put the black bowl on the plate",
    ),
    "libero_10_no_noops": (
        "put both the alphabet soup and the tomato sauce in the basket",
        "turn on the stove and put the moka pot on it",
    ),
}
# Panda reset pose (LIBERO's MountedPanda.init_qpos) and the matching EEF state.
_INIT_JOINTS = np.array([0.0, -0.161, 0.0, -2.445, 0.0, 2.227, np.pi / 4], np.float32)
_INIT_STATE = np.array([-0.2, 0.0, 1.17, np.pi, 0.0, -0.09, 0.0388, -0.0388], np.float32)


def libero_features(drop_keys: Sequence[str] = ()) -> tfds.features.FeaturesDict:
  """The release's episode features; `drop_keys` ('/'-paths under steps) removes some for tests."""
  observation = {
      "image": tfds.features.Image(
          shape=IMAGE_SHAPE, dtype=np.uint8, encoding_format="jpeg",
          doc="Main camera RGB observation."),
      "wrist_image": tfds.features.Image(
          shape=IMAGE_SHAPE, dtype=np.uint8, encoding_format="jpeg",
          doc="Wrist camera RGB observation."),
      "state": tfds.features.Tensor(
          shape=(STATE_DIM,), dtype=np.float32, doc="Robot EEF state (6D pose, 2D gripper)."),
      "joint_state": tfds.features.Tensor(
          shape=(JOINT_DIM,), dtype=np.float32, doc="Robot joint angles."),
  }
  steps = {
      "observation": observation,
      "action": tfds.features.Tensor(
          shape=(ACTION_DIM,), dtype=np.float32, doc="Robot EEF action."),
      "discount": tfds.features.Scalar(
          dtype=np.float32, doc="Discount if provided, default to 1."),
      "reward": tfds.features.Scalar(
          dtype=np.float32, doc="Reward if provided, 1 on final step for demos."),
      "is_first": tfds.features.Scalar(dtype=np.bool_, doc="True on first step of the episode."),
      "is_last": tfds.features.Scalar(dtype=np.bool_, doc="True on last step of the episode."),
      "is_terminal": tfds.features.Scalar(
          dtype=np.bool_,
          doc="True on last step of the episode if it is a terminal step, True for demos."),
      "language_instruction": tfds.features.Text(doc="Language Instruction."),
  }
  for key in drop_keys:
    _delete(steps, key)
  return rlds_writer.episode_features(
      steps, {"file_path": tfds.features.Text(doc="Path to the original data file.")})


def _delete(tree: dict, path: str) -> None:
  *parents, leaf = path.split("/")
  for part in parents:
    tree = tree[part]
  del tree[leaf]


def make_episode(rng: np.random.Generator, num_steps: int, instruction: str,
                 file_path: str) -> dict:
  """One random-but-plausible demo: smooth EEF motion, a closing gripper, scenes with a moving
  object, reward 1 on the final step (numpy arrays, `steps` as a dict of [T, ...])."""
  t = np.arange(num_steps)
  delta = rng.uniform(-0.5, 0.5, (num_steps, 6)).astype(np.float32)
  close_at = num_steps // 2
  gripper = np.where(t >= close_at, 1.0, -1.0).astype(np.float32)
  action = np.concatenate([delta, gripper[:, None]], axis=1)

  state = np.repeat(_INIT_STATE[None], num_steps, axis=0)
  state[:, :3] += np.cumsum(delta[:, :3], axis=0) * 0.01  # ~1 cm per unit action and step
  state[:, 3:6] += np.cumsum(delta[:, 3:], axis=0) * 0.01
  finger = np.where(t >= close_at, 0.01, 0.0388).astype(np.float32)
  state[:, 6], state[:, 7] = finger, -finger
  joints = _INIT_JOINTS[None] + np.cumsum(
      rng.normal(0.0, 0.01, (num_steps, JOINT_DIM)), axis=0).astype(np.float32)

  return {
      "steps": {
          "observation": {
              "image": _render(rng, num_steps, wrist=False),
              "wrist_image": _render(rng, num_steps, wrist=True),
              "state": state.astype(np.float32),
              "joint_state": joints.astype(np.float32),
          },
          "action": action,
          "discount": np.ones(num_steps, np.float32),
          "reward": (t == num_steps - 1).astype(np.float32),
          "is_first": t == 0,
          "is_last": t == num_steps - 1,
          "is_terminal": t == num_steps - 1,
          "language_instruction": [instruction] * num_steps,
      },
      "episode_metadata": {"file_path": file_path},
  }


def _render(rng: np.random.Generator, num_steps: int, wrist: bool) -> np.ndarray:
  """uint8 [T, 256, 256, 3]: a table-coloured background with a square moving across it."""
  height, width, _ = IMAGE_SHAPE
  background = np.array([90, 70, 50] if wrist else [160, 140, 110], np.uint8)
  frames = np.empty((num_steps, height, width, 3), np.uint8)
  frames[:] = background
  color = rng.integers(0, 256, 3, dtype=np.uint8)
  y0, x0 = rng.integers(32, 160, 2)
  for t in range(num_steps):
    y, x = y0 + 4 * t % 64, x0 + 3 * t % 64
    frames[t, y:y + 32, x:x + 32] = color
  return frames


def write_tiny_libero_dataset(
    data_dir: str,
    name: str = "libero_spatial_no_noops",
    num_episodes: int = 3,
    *,
    min_steps: int = 6,
    max_steps: int = 10,
    episodes_per_file: int = 2,
    episodes_per_shard: int = 2,
    drop_keys: Sequence[str] = (),
    seed: int = 0,
) -> str:
  """Writes a tiny dataset with the release's exact schema; returns `<data_dir>/<name>/1.0.0`.

  Args:
    data_dir: parent folder.
    name: dataset name; one of LIBERO_DATASETS unless a test wants another.
    num_episodes: episodes in the `train` split.
    min_steps, max_steps: episode lengths are drawn uniformly from [min_steps, max_steps].
    episodes_per_file: consecutive episodes sharing one `file_path`, as demos of one task share
      one HDF5 file in the release.
    episodes_per_shard: episodes per tfrecord file.
    drop_keys: step keys to leave out (e.g. 'observation/wrist_image'), to test missing keys.
    seed: random seed.
  """
  rng = np.random.default_rng(seed)
  instructions = _INSTRUCTIONS.get(name, _INSTRUCTIONS["libero_spatial_no_noops"])
  episodes = []
  for i in range(num_episodes):
    task = (i // episodes_per_file) % len(instructions)
    file_index = i // episodes_per_file
    file_path = (f"/data/LIBERO/{name}/"
                 f"{instructions[task].replace(' ', '_')}_{file_index}_demo.hdf5")
    num_steps = int(rng.integers(min_steps, max_steps + 1))
    episode = make_episode(rng, num_steps, instructions[task], file_path)
    for key in drop_keys:
      _delete(episode["steps"], key)
    episodes.append(episode)

  writer = rlds_writer.ShardedRLDSWriter(
      data_dir, name, libero_features(drop_keys), version=LIBERO_VERSION,
      description=f"Tiny synthetic stand-in for {name} (OpenVLA LIBERO RLDS schema).",
      config=dict(generator="write_tiny_libero_dataset", num_episodes=num_episodes,
                  min_steps=min_steps, max_steps=max_steps, seed=seed,
                  drop_keys=list(drop_keys)))
  num_shards = max(1, -(-num_episodes // episodes_per_shard))
  for index in range(num_shards):
    shard = episodes[index * episodes_per_shard:(index + 1) * episodes_per_shard]
    writer.write_shard("train", index, num_shards, shard)
  return os.fspath(writer.finalize())
