"""The main job (README Quickstart, command 1). Logic: `hilam_jax.experiment.run`."""
from absl import app
from absl import flags
from ml_collections import config_flags

from hilam_jax import experiment

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/main.py:default", "Main job config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "./runs/main", "Output folder (datasets, summary).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  experiment.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
