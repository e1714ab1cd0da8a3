"""Config of `experiments/label_latent_actions.py`: latent-action labels for whole datasets.

  # label the BabyAI train and val splits with the LAM trained in runs/lam_babyai
  python -m experiments.label_latent_actions \
      --config=experiments/configs/label_latent_actions.py:babyai \
      --config.frozen_model=lam:runs/lam_babyai --config.out_dir=runs/labels_babyai

Rerun the same command to resume: finished shards are skipped. On a multi-host job every
process runs the same command and labels a disjoint set of shards.
"""
import ml_collections


def get_config(arg: str = "babyai") -> ml_collections.ConfigDict:
  if arg not in ("babyai", "metaworld"):
    raise ValueError(f"unknown variant {arg!r}; variants: babyai, metaworld")
  root = {"babyai": "runs/main/data/babyai_unlocklocal_video/1.0.0",
          "metaworld": "data/metaworld_experts/1.0.0"}[arg]
  config = ml_collections.ConfigDict()
  # 'lam:<train_lam workdir>' or 'uniskill:<converted dir>' (hilam_jax.lam.frozen_models.
  # load_frozen_model; a bare path is a LAM workdir).
  config.frozen_model = f"lam:runs/lam_{arg}"
  config.lam_step = ml_collections.config_dict.placeholder(int)  # lam: only; None: latest
  config.datasets = ({"dataset_dir": root, "split": "train"},
                     {"dataset_dir": root, "split": "val"})
  config.out_dir = f"runs/labels_{arg}"
  config.batch_size = 256
  config.max_shards = ml_collections.config_dict.placeholder(int)  # None: all shards
  return config
