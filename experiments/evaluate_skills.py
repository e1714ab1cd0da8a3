"""Skill discovery: boundary P/R/F1 of both stages vs ground-truth subtasks, with baselines, and a
linear probe from the skills to the subtask type.

  python -m experiments.evaluate_skills --skills_dir=runs/skills_babyai \
      --dataset_dir=runs/main/data/babyai_unlocklocal_video/1.0.0 --out_dir=runs/skills_babyai/eval

  # one setting trained with three seeds: mean ± std over the seeds
  python -m experiments.evaluate_skills \
      --skills_dir=runs/skills_babyai_s0,runs/skills_babyai_s1,runs/skills_babyai_s2 \
      --dataset_dir=runs/main/data/babyai_unlocklocal_video/1.0.0 --out_dir=runs/skills_babyai/eval3

The dataset's held-out split is halved by episode-id hash into validation (where the baselines'
thresholds / penalties are set and the probe is fit) and test (every reported figure).
Writes skill_discovery.json / .md and filmstrip_<i>.png into --out_dir and prints the table.
Logic: `hilam_jax.skill.discovery.run_evaluation`.
"""
from absl import app
from absl import flags

from hilam_jax import preemption

_SKILLS = flags.DEFINE_list("skills_dir", None, "Output(s) of extract_skills (one per seed).",
                            required=True)
_DATASET = flags.DEFINE_string("dataset_dir", None, "RLDS dataset with subtask/boundary.",
                               required=True)
_OUT = flags.DEFINE_string("out_dir", None, "Where to write the report.", required=True)
_SPLIT = flags.DEFINE_string("split", "val", "Held-out split (halved into validation / test).")
_TOLERANCE = flags.DEFINE_integer("tolerance", 2, "Boundary matching tolerance in frames.")
_STRIPS = flags.DEFINE_integer("num_filmstrips", 3, "Episodes drawn as filmstrips.")
_LABELS = flags.DEFINE_string("labels_dir", None, "Latent-action labels (default: manifest's).")
_WINDOW = flags.DEFINE_integer("probe_window", None,
                               "Trailing z^0 mean window of the z0_mean probe (default: the "
                               "stage-2 mean chunk length).")
_CHANGE_POINTS = flags.DEFINE_list("change_point_methods", ["binseg", "pelt"],
                                   "ruptures baselines (binseg, pelt; empty for none).")
_TRUTH = flags.DEFINE_enum("ground_truth", "initial", ["initial", "leaf"],
                           "Subtasks to score against: the expert's initial subgoals / phases, "
                           "or (BabyAI) the leaf subtasks of its plan, helpers included.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # pylint: disable=g-import-not-at-top
  from hilam_jax import logs
  from hilam_jax.skill import discovery
  logs.quiet_library_logs()
  report = discovery.run_evaluation(
      _SKILLS.value, _DATASET.value, _OUT.value, split=_SPLIT.value, tolerance=_TOLERANCE.value,
      num_filmstrips=_STRIPS.value, labels_dir=_LABELS.value, probe_window=_WINDOW.value,
      change_point_methods=tuple(_CHANGE_POINTS.value), ground_truth=_TRUTH.value)
  print(report["table"])


if __name__ == "__main__":
  app.run(preemption.exit_on_preemption(main))
