"""Standardize function of the Meta-World v3 expert datasets (`metaworld_*`).

The datasets are written by `data_pipeline/generators/metaworld.py` (its docstring lists the raw
keys). Proprioception is the hand position and gripper opening (the first 4 of the 39 state
values); the rest of the state describes the objects and the goal, which a policy must infer from
the image. `subtask/boundary` marks the starts of the scripted expert's phases (which branch of
its target selection is active, debounced), stored per episode as `phase_start_steps`.
"""
from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from data_pipeline.registry import register
from data_pipeline.schema import boundary_mask
from data_pipeline.schema import get_key

PROPRIO_DIM = 4  # hand xyz + gripper opening


@register("metaworld_*")
def standardize_metaworld(episode: Mapping[str, Any], dataset_name: str = "metaworld_*") -> dict:
  """Raw Meta-World episode (steps dense [T], images encoded) -> common schema.

  Pure TF: runs eagerly and when traced inside `tf.data.Dataset.map`.

  Args:
    episode: {"steps": {...}, "episode_metadata": {...}} as described in `data_pipeline.schema`.
    dataset_name: only used in error messages.

  Returns:
    observation/{image_primary, proprio [T, 4]}, action [T, 4], language_instruction, is_first,
    is_last, reward, subtask/boundary, episode_source.
  """
  def key(path):
    return get_key(episode, path, dataset_name)

  image = tf.convert_to_tensor(key("steps/observation/image"), tf.string)
  state = tf.cast(key("steps/observation/state"), tf.float32)
  num_steps = tf.shape(image)[0]
  traj = {
      "observation": {
          "image_primary": image,
          "proprio": state[:, :PROPRIO_DIM],
      },
      "action": tf.cast(key("steps/action"), tf.float32),
      "language_instruction": tf.convert_to_tensor(key("steps/language_instruction"), tf.string),
      "is_first": tf.cast(key("steps/is_first"), tf.bool),
      "is_last": tf.cast(key("steps/is_last"), tf.bool),
      "reward": tf.cast(key("steps/reward"), tf.float32),
      "subtask": {
          "boundary": boundary_mask(key("episode_metadata/phase_start_steps"), num_steps),
      },
      "episode_source": tf.convert_to_tensor(key("episode_metadata/source"), tf.string),
  }
  metadata = episode.get("episode_metadata", {})
  if "phase_names" in metadata:
    # extras/subtask_name string [T]: the name of the expert phase frame t belongs to.
    starts = tf.cast(tf.reshape(metadata["phase_start_steps"], [-1]), tf.int32)
    names = tf.concat([tf.reshape(tf.convert_to_tensor(metadata["phase_names"], tf.string), [-1]),
                       tf.constant([""])], axis=0)
    index = tf.searchsorted(starts, tf.range(num_steps, dtype=tf.int32), side="right",
                            out_type=tf.int32) - 1
    traj["extras"] = {"subtask_name": tf.gather(names, tf.clip_by_value(
        index, 0, tf.maximum(tf.size(starts) - 1, 0)))}
  return traj
