"""Config of `experiments/benchmark_regime.py`: the BabyAI benchmark and policy regime, measured.

The regime issue 10's probe found to make flat BAKU learn from pixels on BabyAI, as config:
  benchmark  BabyAI-UnlockLocal-v0 (exactly 2 ground-truth subtasks per episode: fetch the key,
             open the door), recorded with the "room" view (the agent's room fully observed,
             8x8 cells of 7 px = 56x56; data_pipeline/sim/babyai.py), 1,000 train demos
             (100% = 1,000; 10% = 100) + 200 validation demos;
  policy     the "grid" model (grid-aligned encoder, flatten pooling; policy_config.model), chunk 1,
             no augmentation, lr 1e-3 with 300 warm-up steps and cosine decay to 1e-4
             (`hilam_jax.training.make_optimizer`), batch 64, 6,000 steps.
`policy_regime` applies the policy part to any train_policy config (the main job uses it too).

  python -m experiments.benchmark_regime --workdir=runs/benchmark_regime            # default
  python -m experiments.benchmark_regime --config=experiments/configs/benchmark_regime.py:smoke \
      --workdir=/tmp/benchmark_regime_smoke
"""
import ml_collections

from experiments.configs import generate_babyai
from experiments.configs import train_policy
from hilam_jax.policy import config as policy_config

VARIANTS = ("default", "smoke")
LEVEL = "BabyAI-UnlockLocal-v0"
VIEW = "room"
TILE_SIZE = 7


def demos(seed: int = 0, train: int = 1000, val: int = 200, action_free: bool = False,
          level: str = LEVEL) -> ml_collections.ConfigDict:
  """Generation config of the benchmark's demonstrations (or action-free video)."""
  config = generate_babyai.get_config("default")
  config.level, config.view, config.tile_size = level, VIEW, TILE_SIZE
  config.seed = seed
  config.action_free = action_free
  config.num_train_episodes, config.num_val_episodes = train, val
  config.episodes_per_shard = 100
  config.num_workers = 2  # this machine's cores; the output does not depend on it
  return config


def policy_regime(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets the benchmark's policy regime on a train_policy config (in place; returns it)."""
  config.model = policy_config.model("grid", proprio_dim=4,
                                    condition_dim=config.model.condition_dim)
  config.head_hidden = (128,)
  config.chunk = 1
  config.data.augment = False
  config.data.image_size = (8 * TILE_SIZE, 8 * TILE_SIZE)
  config.batch_size = 64
  config.learning_rate = 1e-3
  config.warmup_steps = 300
  config.num_steps = 6000
  return config


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"unknown benchmark_regime variant {arg!r}; variants: {', '.join(VARIANTS)}")
  config = ml_collections.ConfigDict()
  config.demos = demos()
  config.policy = policy_regime(train_policy.get_config("baku"))
  config.policy.eval_every = 500
  config.policy.num_eval_batches = 10
  config.policy.checkpoint_every = 1000
  config.policy.log_every = 250
  config.fractions = (1.0, 0.1)
  config.seeds = (0, 1, 2)
  config.num_workers = 2  # runs in parallel single-threaded processes; 0 = in this process
  # The plateau runs (fraction 1.0, seed 0): the main job's former regime (chunk 10 +
  # random-shift augmentation) and each of its two parts alone, on the same data, to tell which
  # part keeps the policy on the majority-action plateau. (chunk, augment) per run.
  config.plateau = ml_collections.ConfigDict()
  config.plateau.enabled = True
  config.plateau.variants = ((10, True), (10, False), (1, True))
  config.plateau.eval_every = 250
  config.plateau.num_steps = 3000  # the probe: the former regime stays on the plateau >= 3,000
  config.plateau.eval_modes = ("argmax",)  # its curves are the point; one evaluation
  config.eval = ml_collections.ConfigDict()
  config.eval.num_episodes = 100
  config.eval.num_envs = 20
  config.eval.seed = 0
  # Step limit per episode, as in the main job (configs/main.py): 64 = 2.4x the longest
  # demonstration; None = the level's 576, where a sampling policy succeeds by wandering.
  config.eval.max_steps = 64
  # Action selection, headline first: "sample" (BabyAI's convention) and "argmax" (greedy).
  config.eval.modes = ("sample", "argmax")
  if arg == "smoke":
    config.demos = demos(train=6, val=3)
    config.demos.episodes_per_shard = 3
    config.demos.num_workers = 1
    config.policy.lang_encoder = "hash"
    config.policy.model = policy_config.model("grid", proprio_dim=4, gpt_layers=1,
                                             encoder_channels=(8, 8, 8), repr_dim=32,
                                             gpt_width=32, lang_dim=384)
    config.policy.head_hidden = (16,)
    config.policy.batch_size = 8
    config.policy.num_steps = 4
    config.policy.warmup_steps = 1
    config.policy.eval_every = 2
    config.policy.num_eval_batches = 1
    config.policy.checkpoint_every = 4
    config.policy.log_every = 2
    config.policy.data.shuffle_buffer = 64
    config.fractions = (1.0, 0.5)
    config.seeds = (0,)
    config.num_workers = 0
    config.plateau.variants = ((2, True), (1, True))
    config.plateau.eval_every = 2
    config.plateau.num_steps = 4
    config.eval.num_episodes = 2
    config.eval.num_envs = 2
  return config
