"""Standardize function of the BabyAI datasets (`data_pipeline/generators/babyai.py`).

Raw steps: `observation/image` (JPEG), `observation/direction` int64, `language_instruction`,
`is_first`, `is_last`, `is_terminal`, and unless action-free `action` int64, `reward`,
`discount`. Metadata: `subgoal_done_steps`, `instruction_done_steps` (frame at which each initial
subgoal / leaf instruction of the bot's plan was done, non-decreasing), `source`, ...

Output (common schema, `data_pipeline/schema.py`):
  observation/image_primary     string [T]     the egocentric 56x56 JPEG
  observation/proprio           float32 [T, 4] one-hot facing direction
  action                        int32 [T]      discrete action (absent in `*_video` datasets)
  reward                        float32 [T]    (absent in `*_video` datasets)
  language_instruction, is_first, is_last
  subtask/boundary              bool [T]       frame t starts a new subgoal
  subtask/instruction_boundary  bool [T]       frame t starts a new leaf instruction
  subtask/leaf_boundary         bool [T]       frame t starts a new leaf subtask (the acting
                                               subgoal, helpers included; datasets generated
                                               since episode format 2)
  extras/subtask_name           string [T]     the initial subgoal frame t belongs to, e.g.
                                               "GoNextTo(red ball, PutNext)" (the last one on
                                               frames after every subgoal is done)
  extras/leaf_subtask_name      string [T]     the acting subgoal of frame t ("GoNextTo(yellow
                                               key)", "Pickup", ...; format 2)
  episode_source                string []      "<level>/seed=<env seed>"

A subgoal done at frame t makes frame t the first frame of the next one, except at the last frame
(the terminal observation), which starts nothing: done steps >= T - 1 are dropped.
"""
from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from data_pipeline import registry
from data_pipeline import schema

NUM_DIRECTIONS = 4


def current_subtask_name(done_steps: tf.Tensor, names: tf.Tensor,
                         num_steps: tf.Tensor) -> tf.Tensor:
  """string [T]: names[i] for the frames t with done_steps[i-1] <= t < done_steps[i].

  Subgoal i runs from the frame its predecessor was done at up to (not including) its own done
  frame; subgoals done at the same frame as their predecessor own no frame. Frames at or after
  the last done step keep the last name ("" if there are no names).
  """
  done_steps = tf.cast(tf.reshape(done_steps, [-1]), tf.int32)
  names = tf.reshape(tf.convert_to_tensor(names, tf.string), [-1])
  frames = tf.range(num_steps, dtype=tf.int32)
  index = tf.searchsorted(done_steps, frames, side="right", out_type=tf.int32)
  padded = tf.concat([names, tf.constant([""])], axis=0)
  last = tf.maximum(tf.size(names) - 1, 0)
  return tf.gather(padded, tf.where(tf.size(names) > 0, tf.minimum(index, last), tf.size(names)))


def _boundary(done_steps: tf.Tensor, num_steps: tf.Tensor) -> tf.Tensor:
  done_steps = tf.cast(tf.reshape(done_steps, [-1]), tf.int32)
  starts = tf.boolean_mask(done_steps, done_steps < num_steps - 1)
  return schema.boundary_mask(starts, num_steps)


@registry.register("babyai_*")
def standardize(episode: Mapping[str, Any], dataset_name: str = "babyai") -> dict[str, Any]:
  """Raw BabyAI episode (steps as dense [T] tensors) -> trajectory in the common schema."""

  def get(path):
    return schema.get_key(episode, path, dataset_name)

  image = get("steps/observation/image")
  num_steps = tf.shape(image)[0]
  direction = get("steps/observation/direction")
  traj = {
      "observation": {
          "image_primary": image,
          "proprio": tf.one_hot(tf.cast(direction, tf.int32), NUM_DIRECTIONS, dtype=tf.float32),
      },
      "language_instruction": get("steps/language_instruction"),
      "is_first": tf.cast(get("steps/is_first"), tf.bool),
      "is_last": tf.cast(get("steps/is_last"), tf.bool),
      "subtask": {
          "boundary": _boundary(get("episode_metadata/subgoal_done_steps"), num_steps),
          "instruction_boundary": _boundary(
              get("episode_metadata/instruction_done_steps"), num_steps),
      },
      "episode_source": get("episode_metadata/source"),
  }
  metadata = episode.get("episode_metadata", {})
  if "subgoal_names" in metadata:
    traj["extras"] = {"subtask_name": current_subtask_name(
        metadata["subgoal_done_steps"], metadata["subgoal_names"], num_steps)}
  if "leaf_names" in metadata:
    traj["subtask"]["leaf_boundary"] = _boundary(metadata["leaf_done_steps"], num_steps)
    traj.setdefault("extras", {})["leaf_subtask_name"] = current_subtask_name(
        metadata["leaf_done_steps"], metadata["leaf_names"], num_steps)
  steps = episode["steps"]
  if "action" in steps:
    traj["action"] = tf.cast(steps["action"], tf.int32)
  if "reward" in steps:
    traj["reward"] = tf.cast(steps["reward"], tf.float32)
  return traj
