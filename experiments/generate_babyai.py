"""Generates a BabyAI benchmark dataset (bot demonstrations with subtask labels) as RLDS.

  python -m experiments.generate_babyai --config=experiments/configs/generate_babyai.py:tiny \
      --data_dir=/tmp/babyai_tiny

More launch commands are in the config's docstring; the logic is in
`data_pipeline.generators.babyai`.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from data_pipeline.generators import babyai

from hilam_jax import preemption

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/generate_babyai.py:default", "Generation config.",
    lock_config=True)
_DATA_DIR = flags.DEFINE_string("data_dir", "./data", "Parent folder of the written dataset.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  stats = babyai.generate(_CONFIG.value, _DATA_DIR.value)
  print(f"wrote {stats['dataset_dir']}: {stats['episodes']} episodes in {stats['shards_written']} "
        f"shards this run ({stats['shards_skipped']} already done), "
        f"{stats['episodes_per_second']:.2f} episodes/s")


if __name__ == "__main__":
  app.run(preemption.exit_on_preemption(main))
