"""The main job (README Quickstart, command 1; docs/experiment.md): `hilam_jax.experiment.run`."""
from absl import app
from absl import flags
from ml_collections import config_flags

from hilam_jax import preemption

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/main.py:default", "Main job config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "./runs/main", "Output folder (data, runs, report).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from hilam_jax import experiment  # pylint: disable=g-import-not-at-top
  from hilam_jax import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_library_logs()
  results = experiment.run(_CONFIG.value, _WORKDIR.value)
  if "policies" in results:
    print(f"report: {_WORKDIR.value}/report/report.md")


if __name__ == "__main__":
  app.run(preemption.exit_on_preemption(main))
