"""What a segmenter told each episode's true number of subtasks reaches, on which signal.

  python -m experiments.skill_ceiling --labels_dir=runs/main/labels/video \
      --dataset_dir=runs/main/data/babyai_unlocklocal_video/1.0.0 --out_dir=runs/ceiling_unlock

On the held-out test half (the same hash split as evaluate_skills), for the latent actions z^0,
z-scored z^0 and the dataset's true actions: the exact l2 optimum (dynamic programme: the best
piecewise-constant fit with that many boundaries), binary segmentation asked for that many, the
largest frame-to-frame changes and evenly spaced cuts; boundary P/R/F1, and for the exact optimum
how far the true segmentation's l2 cost is from it. An F1 ceiling for every method that fits the
l2 cost on that signal, and where the subtask information is lost (actions vs latents).
Writes ceiling.json / ceiling.md into --out_dir and prints the table.
Logic: `hilam_jax.skill.discovery.run_ceilings`.
"""
from absl import app
from absl import flags

from hilam_jax import preemption

_LABELS = flags.DEFINE_string("labels_dir", None, "Latent-action labels (labeling job output).",
                              required=True)
_DATASET = flags.DEFINE_string("dataset_dir", None, "RLDS dataset with subtask boundaries.",
                               required=True)
_OUT = flags.DEFINE_string("out_dir", None, "Where to write ceiling.json / ceiling.md.",
                           required=True)
_SPLIT = flags.DEFINE_string("split", "val", "Held-out split (halved into validation / test).")
_TOLERANCE = flags.DEFINE_integer("tolerance", 2, "Boundary matching tolerance in frames.")
_TRUTH = flags.DEFINE_enum("ground_truth", "initial", ["initial", "leaf"],
                           "The expert's initial subgoals / phases, or BabyAI's leaf subtasks.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # pylint: disable=g-import-not-at-top
  from hilam_jax import logs
  from hilam_jax.skill import discovery
  logs.quiet_library_logs()
  report = discovery.run_ceilings(_LABELS.value, _DATASET.value, _OUT.value, split=_SPLIT.value,
                                  tolerance=_TOLERANCE.value, ground_truth=_TRUTH.value)
  print(report["table"])


if __name__ == "__main__":
  app.run(preemption.exit_on_preemption(main))
