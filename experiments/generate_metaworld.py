"""Generates the Meta-World v3 scripted-expert RLDS dataset; launch commands in the config file.

The library is imported inside `main`, not at the top: the simulation workers are spawned, and a
spawned child re-imports this __main__ module. A top-level TensorFlow import here would load TF
next to the workers' MuJoCo GL context, which segfaults.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from hilam_jax import preemption

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/generate_metaworld.py:default", lock_config=True)
_DATA_DIR = flags.DEFINE_string("data_dir", "./data", "Parent folder of the dataset.")


def main(argv):
  del argv
  from data_pipeline.generators import metaworld  # pylint: disable=g-import-not-at-top
  stats = metaworld.generate(_CONFIG.value, _DATA_DIR.value)
  print(f"generator: {stats['episodes']} episodes in {stats['seconds']:.1f} s = "
        f"{stats['episodes_per_second']:.2f} episodes/s (one worker: "
        f"{stats['worker_episodes_per_second']:.2f} episodes/s) -> {stats['dataset_dir']}")


if __name__ == "__main__":
  app.run(preemption.exit_on_preemption(main))
