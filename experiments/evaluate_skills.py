"""Skill discovery: boundary P/R/F1 of both stages vs ground-truth subtasks, with baselines.

  python -m experiments.evaluate_skills --skills_dir=runs/skills_babyai \
      --dataset_dir=runs/main/data/babyai_bosslevel/1.0.0 --out_dir=runs/skills_babyai/eval

Writes skill_discovery.json / .md and filmstrip_<i>.png into --out_dir and prints the table.
Logic: `hilam_jax.skill.discovery.run_evaluation`.
"""
from absl import app
from absl import flags

_SKILLS = flags.DEFINE_string("skills_dir", None, "Output of extract_skills.", required=True)
_DATASET = flags.DEFINE_string("dataset_dir", None, "RLDS dataset with subtask/boundary.",
                               required=True)
_OUT = flags.DEFINE_string("out_dir", None, "Where to write the report.", required=True)
_SPLIT = flags.DEFINE_string("split", "val", "Held-out split to evaluate.")
_TOLERANCE = flags.DEFINE_integer("tolerance", 2, "Boundary matching tolerance in frames.")
_STRIPS = flags.DEFINE_integer("num_filmstrips", 3, "Episodes drawn as filmstrips.")
_LABELS = flags.DEFINE_string("labels_dir", None, "Latent-action labels (default: manifest's).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # pylint: disable=g-import-not-at-top
  from hilam_jax import logs
  from hilam_jax.skill import discovery
  logs.quiet_library_logs()
  report = discovery.run_evaluation(
      _SKILLS.value, _DATASET.value, _OUT.value, split=_SPLIT.value, tolerance=_TOLERANCE.value,
      num_filmstrips=_STRIPS.value, labels_dir=_LABELS.value)
  print(report["table"])


if __name__ == "__main__":
  app.run(main)
