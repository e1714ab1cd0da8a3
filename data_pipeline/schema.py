"""The common trajectory schema every registered dataset is standardized into.

A standardize function (see `data_pipeline/standardize/`) receives one *raw episode*, a dict of
tensors traced inside `tf.data`:

  steps:            the episode's `steps` as dense tensors with leading dim T (nested like the
                    dataset's features); images are still encoded strings [T].
  episode_metadata: the episode's metadata dict (absent if the dataset has none).

and returns a *trajectory* in the common schema (T = episode length, leading dim of every key
but `episode_source`):

  observation/image_primary  string [T]     encoded JPEG/PNG of the main camera      (required)
  observation/image_wrist    string [T]     encoded wrist camera image               (optional)
  observation/proprio        float32 [T, P] proprioception                            (optional)
  action                     float32 [T, A] continuous, or int32 [T] discrete          (optional:
                                             absent for action-free video)
  language_instruction       string [T]                                               (required)
  is_first, is_last          bool [T]                                                 (required)
  reward                     float32 [T]                                              (optional)
  subtask/boundary           bool [T]       ground truth: frame t starts a new subtask
                                             (True at t=0)                             (optional)
  subtask/instruction_boundary bool [T]     the same, grouped per sub-instruction     (optional)
  subtask/leaf_boundary      bool [T]       the same at the finest level of the expert's plan
                                             (helper subgoals included)                (optional)
  episode_source             string []      where the episode came from (source file path,
                                             simulator level + seed, ...)              (required)

The reader then adds `episode_id` string [T] (dataset name + episode_source + the record's file
and index: stable across reads with any shuffle seed) and `frame_index` int32 [T].
Keys are nested dicts; "observation/image_primary" means traj["observation"]["image_primary"].
"""
from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

REQUIRED_KEYS = (
    "observation/image_primary",
    "language_instruction",
    "is_first",
    "is_last",
    "episode_source",
)
OPTIONAL_KEYS = (
    "observation/image_wrist",
    "observation/proprio",
    "action",
    "reward",
    "subtask/boundary",
    "subtask/instruction_boundary",
    "subtask/leaf_boundary",
)


class DatasetError(Exception):
  """Base class of the data pipeline's errors on bad input."""


class UnknownDatasetError(DatasetError, KeyError):

  def __str__(self):  # KeyError would repr() the message.
    return str(self.args[0])


class DatasetNotFoundError(DatasetError, FileNotFoundError):
  pass


class MissingKeyError(DatasetError, KeyError):

  def __str__(self):
    return str(self.args[0])


class CorruptedRecordError(DatasetError):
  pass


def flatten_keys(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten_keys(value, path + "/"))
    else:
      flat[path] = value
  return flat


def get_key(tree: Mapping[str, Any], path: str, dataset_name: str) -> Any:
  """Returns tree[path] for a '/'-separated path, or raises MissingKeyError naming key and dataset."""
  node = tree
  for part in path.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      available = sorted(flatten_keys(tree)) if isinstance(tree, Mapping) else []
      raise MissingKeyError(
          f"dataset {dataset_name!r}: required key {path!r} is missing. "
          f"Available keys: {available}")
    node = node[part]
  return node


def validate_trajectory(traj: Mapping[str, Any], dataset_name: str) -> None:
  """Checks a standardized trajectory (at trace time) against the common schema."""
  flat = flatten_keys(traj)
  for key in REQUIRED_KEYS:
    if key not in flat:
      raise MissingKeyError(
          f"dataset {dataset_name!r}: standardized trajectory lacks required key {key!r}; "
          f"it has {sorted(flat)}")
  unknown = set(flat) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)
  extras = {k for k in unknown if k.startswith("extras/")}
  if unknown - extras:
    raise ValueError(
        f"dataset {dataset_name!r}: keys {sorted(unknown - extras)} are not in the common schema "
        "(put dataset-specific fields under 'extras/')")
  expected = {
      "observation/image_primary": tf.string, "observation/image_wrist": tf.string,
      "language_instruction": tf.string, "is_first": tf.bool, "is_last": tf.bool,
      "episode_source": tf.string, "observation/proprio": tf.float32, "reward": tf.float32,
      "subtask/boundary": tf.bool, "subtask/instruction_boundary": tf.bool,
      "subtask/leaf_boundary": tf.bool,
  }
  for key, dtype in expected.items():
    if key in flat and flat[key].dtype != dtype:
      raise TypeError(f"dataset {dataset_name!r}: {key} has dtype {flat[key].dtype}, "
                      f"expected {dtype}")
  if "action" in flat and flat["action"].dtype not in (tf.float32, tf.int32):
    raise TypeError(f"dataset {dataset_name!r}: action has dtype {flat['action'].dtype}, "
                    "expected float32 (continuous) or int32 (discrete)")


def boundary_mask(start_steps: tf.Tensor, num_steps: tf.Tensor) -> tf.Tensor:
  """bool [T] with True at t=0 and at every start step in [1, T); other indices are ignored."""
  start_steps = tf.cast(tf.reshape(start_steps, [-1]), tf.int32)
  num_steps = tf.cast(num_steps, tf.int32)
  inside = tf.boolean_mask(start_steps, (start_steps >= 0) & (start_steps < num_steps))
  hits = tf.scatter_nd(inside[:, None], tf.ones_like(inside), [num_steps]) > 0
  return hits | tf.equal(tf.range(num_steps), 0)
