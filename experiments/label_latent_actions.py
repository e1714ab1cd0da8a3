"""Labels RLDS datasets with a frozen model (`config.frozen_model`). Logic: `hilam_jax.lam.labeling.label_datasets`."""
from absl import app
from absl import logging
from ml_collections import config_flags

from experiments import launch
from hilam_jax import preemption

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/label_latent_actions.py:babyai", "Labeling config.",
    lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  launch.init_distributed()
  # pylint: disable=g-import-not-at-top
  from hilam_jax import logs
  from hilam_jax.lam import frozen_models
  from hilam_jax.lam import labeling
  logs.quiet_library_logs()
  config = _CONFIG.value
  lam = frozen_models.load_frozen_model(config.frozen_model, config.lam_step)
  fingerprint = frozen_models.frozen_model_fingerprint(config.frozen_model, config.lam_step)
  stats = labeling.label_datasets(
      lam, [dict(d) for d in config.datasets], config.out_dir, batch_size=config.batch_size,
      fingerprint=fingerprint, max_shards=config.max_shards)
  logging.info("labeling: %s", stats)


if __name__ == "__main__":
  app.run(preemption.exit_on_preemption(main))
