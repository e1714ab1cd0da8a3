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
  steps = episode["steps"]
  metadata = get_key(episode, "episode_metadata", NAME)
  source = tf.strings.join([
      get_key(metadata, "file_path", NAME),
      tf.strings.as_string(get_key(metadata, "episode_id", NAME)),
  ], "#")
  return {
      "observation": {
          "image_primary": get_key(steps, "observation/image_0", NAME),
          "proprio": tf.cast(get_key(steps, "observation/state", NAME), tf.float32),
      },
      "action": tf.cast(get_key(steps, "action", NAME), tf.float32),
      "language_instruction": get_key(steps, "language_instruction", NAME),
      "is_first": get_key(steps, "is_first", NAME),
      "is_last": get_key(steps, "is_last", NAME),
      "reward": tf.cast(get_key(steps, "reward", NAME), tf.float32),
      "episode_source": source,
  }
