"""Extracts per-frame skills and boundaries of a trained skill model for whole labelled datasets.

  python -m experiments.extract_skills --workdir=runs/skill_babyai \
      --labels_dir=runs/labels_babyai --out_dir=runs/skills_babyai

Logic: `hilam_jax.skill.extract.extract_skills` (output layout in its module docstring).
"""
from absl import app
from absl import flags
from absl import logging

from hilam_jax import preemption

_WORKDIR = flags.DEFINE_string("workdir", None, "Skill model training folder.", required=True)
_LABELS = flags.DEFINE_string("labels_dir", None, "Latent-action label folder.", required=True)
_OUT = flags.DEFINE_string("out_dir", None, "Output folder for the skills.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_HOP = flags.DEFINE_integer("hop", None, "Window hop (default: half the training window).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Windows per model call.")
_SPLITS = flags.DEFINE_list("splits", None, "Only these splits (default: all).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # pylint: disable=g-import-not-at-top
  from hilam_jax import logs
  from hilam_jax.skill import extract
  logs.quiet_library_logs()
  stats = extract.extract_skills(_WORKDIR.value, _LABELS.value, _OUT.value, step=_STEP.value,
                                 hop=_HOP.value, batch_size=_BATCH.value,
                                 splits=tuple(_SPLITS.value) if _SPLITS.value else None)
  logging.info("extract_skills: %s", stats)
  print(stats)


if __name__ == "__main__":
  app.run(preemption.exit_on_preemption(main))
