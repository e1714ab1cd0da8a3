"""BridgeData V2 in the Open X-Embodiment RLDS format (`bridge`, also `bridge_dataset`).

Raw: steps/observation/image_0..image_3 (JPEG; image_0 is the fixed over-the-shoulder camera
present in every episode), steps/observation/state [7], steps/action [7] (Δxyz, Δrpy, gripper),
steps/language_instruction; episode_metadata/file_path + episode_id (index inside that file).
Bridge has no wrist camera. Actions are kept as recorded (no relabelling from states).
"""
import tensorflow as tf

from data_pipeline import registry
from data_pipeline.schema import get_key

NAME = "bridge"


@registry.register("bridge", "bridge_dataset")
def standardize_bridge(episode):
  image = get_key(episode, "steps/observation/image_0", NAME)
  steps = episode["steps"]
  source = tf.strings.join([
      get_key(episode, "episode_metadata/file_path", NAME),
      tf.strings.as_string(get_key(episode, "episode_metadata/episode_id", NAME)),
  ], "#")
  return {
      "observation": {
          "image_primary": image,
          "proprio": tf.cast(get_key(episode, "steps/observation/state", NAME), tf.float32),
      },
      "action": tf.cast(get_key(episode, "steps/action", NAME), tf.float32),
      "language_instruction": get_key(episode, "steps/language_instruction", NAME),
      "is_first": steps["is_first"],
      "is_last": steps["is_last"],
      "reward": tf.cast(get_key(episode, "steps/reward", NAME), tf.float32),
      "episode_source": source,
  }
