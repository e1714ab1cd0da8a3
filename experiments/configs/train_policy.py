"""Config of `experiments/train_policy.py`: one BAKU-style policy (flat, HiLAM high or low level).

The config itself, its variants and its OPEN choices live in the library
(`hilam_jax/policy/config.py`, `default_config`); this file is the launch-side entry point:

  python -m experiments.train_policy --config=experiments/configs/train_policy.py:baku \
      --config.data.train='({"dataset_dir": "runs/main/data/babyai_putnextlocal/1.0.0"},)' \
      --workdir=runs/policy_baku
"""
import ml_collections

from hilam_jax.policy import config as policy_config

VARIANTS = policy_config.VARIANTS


def get_config(arg: str = "baku") -> ml_collections.ConfigDict:
  return policy_config.default_config(arg)
