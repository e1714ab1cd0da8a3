"""Quality of a trained LAM on held-out episodes: action probes and reconstruction gain.

  python -m experiments.evaluate_lam --lam_workdir=runs/lam_babyai \
      --dataset_dir=runs/main/data/babyai_unlocklocal_video/1.0.0 --split=val
  python -m experiments.evaluate_lam --lam_workdir=runs/lam_metaworld \
      --dataset_dir=data/metaworld_experts/1.0.0 --split=val

Writes <lam_workdir>/quality_<dataset>_<split>.json. Logic: `hilam_jax.lam.probe.evaluate`.
"""
import json
import os

from absl import app
from absl import flags

from hilam_jax import preemption

_LAM = flags.DEFINE_string("lam_workdir", None, "A train_lam workdir.", required=True)
_DATASET = flags.DEFINE_string("dataset_dir", None, "Held-out RLDS dataset folder.",
                               required=True)
_SPLIT = flags.DEFINE_string("split", "val", "Split of held-out episodes.")
_MAX_PAIRS = flags.DEFINE_integer("max_pairs", 20_000, "Pairs used at most.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # pylint: disable=g-import-not-at-top
  from data_pipeline import reader
  from hilam_jax import logs
  from data_pipeline import run_info
  from hilam_jax.lam import probe
  from hilam_jax.lam import trainer
  logs.quiet_library_logs()
  lam = trainer.load_frozen_lam(_LAM.value)
  result = probe.evaluate(lam, {"dataset_dir": _DATASET.value, "split": _SPLIT.value},
                          max_pairs=_MAX_PAIRS.value)
  result["lam"] = trainer.checkpoint_fingerprint(_LAM.value)
  result["dataset_dir"], result["split"] = os.path.abspath(_DATASET.value), _SPLIT.value
  result["versions"] = run_info.package_versions()
  name = reader.open_builder(_DATASET.value).name
  path = os.path.join(_LAM.value, f"quality_{name}_{_SPLIT.value}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  metric = result["metric"]
  print(f"{name}/{_SPLIT.value}: {result['pairs']} pairs (k={result['frame_gap']})")
  print(f"  action probe {metric}: z {result['probe_z']:.3f} | frame-difference baseline "
        f"{result['probe_frame_difference']:.3f} | chance {result['chance']:.3f}")
  print(f"  reconstruction MSE: with z {result['recon_mse']:.5f} | z ablated "
        f"{result['recon_mse_z_ablated']:.5f} | copy frame t {result['recon_mse_copy_frame_t']:.5f}"
        f" | z_gain {result['z_gain']:.3f}")
  print(f"written {path}")


if __name__ == "__main__":
  app.run(preemption.exit_on_preemption(main))
