"""Config of `experiments/generate_babyai.py`: BabyAI bot demonstrations -> RLDS.

Launch (the dataset goes to <data_dir>/<name>/1.0.0; rerun the same command to resume, finished
shards are skipped; the worker count may change between runs, the output does not depend on it):

  # BossLevel, 1000 train + 100 val episodes -> ./data/babyai_bosslevel/1.0.0
  python -m experiments.generate_babyai --config=experiments/configs/generate_babyai.py:default \
      --config.num_workers=2 --data_dir=./data

  # the same episodes as action-free video -> ./data/babyai_bosslevel_video/1.0.0
  python -m experiments.generate_babyai --config=experiments/configs/generate_babyai.py:default \
      --config.action_free=True --data_dir=./data

  # another level -> ./data/babyai_synthseq/1.0.0
  python -m experiments.generate_babyai --config=experiments/configs/generate_babyai.py:default \
      --config.level=BabyAI-SynthSeq-v0 --data_dir=./data

  # a few episodes, for tests and smoke runs
  python -m experiments.generate_babyai --config=experiments/configs/generate_babyai.py:tiny \
      --data_dir=/tmp/babyai_tiny

Field meanings are in `data_pipeline.generators.babyai` (simulation: `data_pipeline.sim.babyai`).
"""
import ml_collections
from ml_collections import config_dict


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """Variants: `default` (BossLevel, 1000 train / 100 val episodes), `tiny` (4 / 2 episodes)."""
  if arg not in ("default", "tiny"):
    raise ValueError(f"unknown generate_babyai config variant {arg!r}; variants: default, tiny")
  config = ml_collections.ConfigDict()
  # Any BabyAI level the shipped bot solves (BossLevel, SynthSeq, GoToSeq, ...).
  config.level = "BabyAI-BossLevel-v0"
  # Dataset name; None: babyai_<level in snake case>, e.g. babyai_bosslevel. `_video` is appended
  # when action_free.
  config.name = config_dict.placeholder(str)
  # Store video, language and subtask labels only: no action, reward or discount.
  config.action_free = False
  # Successful episodes per split; failed bot runs are retried with the next seed.
  config.num_train_episodes = 1000
  config.num_val_episodes = 100
  config.episodes_per_shard = 50
  # A shard gives up after max_attempts_per_episode * its episodes + 10 failed seeds.
  config.max_attempts_per_episode = 3
  # Environment seeds are a function of (seed, split, shard index, attempt) only.
  config.seed = 0
  # What is recorded: "egocentric" (the agent's 7x7-cell partial view) or "room" (its whole room,
  # fully observed: 8x8 cells in BabyAI's rooms). See data_pipeline/sim/babyai.py.
  config.view = "egocentric"
  # Pixels per grid cell; egocentric 7 cells x 8 -> 56x56 frames; room 8 cells x 7 -> 56x56.
  config.tile_size = 8
  # Simulation processes ("spawn"); 1 simulates in the main process. Does not change the output.
  config.num_workers = 1
  if arg == "tiny":
    config.num_train_episodes = 4
    config.num_val_episodes = 2
    config.episodes_per_shard = 2
  return config
