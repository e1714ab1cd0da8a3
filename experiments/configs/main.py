"""Config of the main job `experiments/main.py` (the README's first Quickstart command).

Until the training stages land, the main job generates the default BabyAI benchmark dataset
(BossLevel bot demonstrations with ground-truth subtask boundaries) and writes its summary:
episode count, lengths, subtask counts and a filmstrip of one episode with its boundaries.

  # default: 1000 train + 100 val BossLevel episodes -> ./runs/main
  python -m experiments.main

  # a few episodes (smoke test)
  python -m experiments.main --config=experiments/configs/main.py:tiny --workdir=/tmp/main_tiny

Rerunning resumes: finished dataset shards are kept.
"""
import ml_collections

from experiments.configs import generate_babyai


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  if arg not in ("default", "tiny"):
    raise ValueError(f"unknown main config variant {arg!r}; variants: default, tiny")
  config = ml_collections.ConfigDict()
  config.babyai = generate_babyai.get_config(arg)
  config.babyai.num_workers = 2  # this machine's cores; the output does not depend on it
  return config
