"""LIBERO as released for OpenVLA: `libero_{spatial,object,goal,10}_no_noops` (v1.0.0).

Raw schema: `data_pipeline/libero_schema.py`. Mapping into the common schema:

  observation/image        -> observation/image_primary   (JPEG, 256x256)
  observation/wrist_image  -> observation/image_wrist     (JPEG, 256x256)
  observation/state [8]    -> observation/proprio [8]     (EEF pos 3, axis-angle 3, gripper 2)
  action [7]               -> action [7] float32, as recorded (gripper -1 open ... +1 close)
  language_instruction, is_first, is_last, reward           unchanged
  episode_metadata/file_path -> episode_source

`observation/joint_state`, `discount` and `is_terminal` are dropped.

Images are NOT rotated here. The release already stores them rotated 180° relative to the
simulator's render, so a policy trained on this data sees rotated frames; evaluation in the LIBERO
simulator must rotate each rendered frame by 180° (`frame[::-1, ::-1]`) the same way.

Several demos of one task share one `file_path` (their source HDF5 file), so `episode_source` is
not unique per episode; the reader's episode id adds the record's shard file and index.
"""
from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from data_pipeline.libero_schema import LIBERO_90, LIBERO_DATASETS
from data_pipeline.registry import register
from data_pipeline.schema import get_key


@register(*LIBERO_DATASETS, LIBERO_90)
def standardize_libero(episode: Mapping[str, Any],
                       dataset_name: str = "libero_*_no_noops") -> dict:
  """Raw LIBERO episode (steps dense [T], images encoded) -> common schema; pure TF.

  Args:
    episode: {"steps": {...}, "episode_metadata": {...}} as described in `data_pipeline.schema`.
    dataset_name: only used in error messages.
  """

  def get(path):
    return get_key(episode, path, dataset_name)

  return {
      "observation": {
          "image_primary": tf.convert_to_tensor(get("steps/observation/image"), tf.string),
          "image_wrist": tf.convert_to_tensor(get("steps/observation/wrist_image"), tf.string),
          "proprio": tf.cast(get("steps/observation/state"), tf.float32),
      },
      "action": tf.cast(get("steps/action"), tf.float32),
      "language_instruction": tf.convert_to_tensor(get("steps/language_instruction"), tf.string),
      "is_first": tf.cast(get("steps/is_first"), tf.bool),
      "is_last": tf.cast(get("steps/is_last"), tf.bool),
      "reward": tf.cast(get("steps/reward"), tf.float32),
      "episode_source": tf.convert_to_tensor(get("episode_metadata/file_path"), tf.string),
  }
