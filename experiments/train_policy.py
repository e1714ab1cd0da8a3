"""Trains one policy (BAKU, flat latent, HiLAM high or low level). Logic: `hilam_jax.policy.trainer`."""
from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import launch
from hilam_jax import preemption

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/train_policy.py:baku", "Policy training config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (checkpoints, TensorBoard).",
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  launch.init_distributed()
  from hilam_jax import logs  # pylint: disable=g-import-not-at-top
  from hilam_jax.policy import trainer  # pylint: disable=g-import-not-at-top
  logs.quiet_library_logs()
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(preemption.exit_on_preemption(main))
