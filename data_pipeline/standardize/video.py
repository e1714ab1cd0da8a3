"""Standardize function of action-free video datasets (`video_*`).

These datasets are written by `data_pipeline/generators/video_files.py` (see its docstring for
the raw keys). The trajectory carries no `action`: downstream stages label such episodes with
latent actions from the frozen IDM instead. `episode_source` is the video's path relative to
the converted folder, which is unique per episode.
"""
from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from data_pipeline.registry import register
from data_pipeline.schema import get_key


@register("video_*")
def standardize_video(episode: Mapping[str, Any], dataset_name: str = "video_*") -> dict:
  """Raw video episode (steps dense [T], images encoded) -> common schema.

  Pure TF: runs eagerly and when traced inside `tf.data.Dataset.map`.

  Args:
    episode: {"steps": {...}, "episode_metadata": {...}} as described in `data_pipeline.schema`.
    dataset_name: only used in error messages.

  Returns:
    observation/image_primary, language_instruction, is_first, is_last, episode_source.
  """
  image = get_key(episode, "steps/observation/image_primary", dataset_name)
  return {
      "observation": {"image_primary": tf.convert_to_tensor(image, tf.string)},
      "language_instruction": tf.convert_to_tensor(
          get_key(episode, "steps/language_instruction", dataset_name), tf.string),
      "is_first": tf.cast(get_key(episode, "steps/is_first", dataset_name), tf.bool),
      "is_last": tf.cast(get_key(episode, "steps/is_last", dataset_name), tf.bool),
      "episode_source": tf.convert_to_tensor(
          get_key(episode, "episode_metadata/file_path", dataset_name), tf.string),
  }
