"""Config of the main job `experiments/main.py`: HiLAM's data-efficiency experiment on BabyAI.

One command runs the whole pipeline (hilam_jax/experiment.py): generate action-free video and
action-labelled demos in the BabyAI simulator, train the LAM, label, train the skill model,
extract skills, pretrain and fine-tune every method at each demo fraction, evaluate in the
simulator and write the report. Rerunning the same command resumes.

  # full variant (README table; ~60 min on 2 CPU cores) -> ./runs/main/report/report.md
  python -m experiments.main

  # quick variant (<= 15 min on 2 cores; same pipeline, fewer episodes and steps)
  python -m experiments.main --config=experiments/configs/main.py:quick --workdir=runs/main_quick

  # smoke variant (tiny sizes, a few steps: the CI test)
  python -m experiments.main --config=experiments/configs/main.py:smoke --workdir=/tmp/main_smoke

  # only generate the datasets (what the main job did before the training stages existed)
  python -m experiments.main --config.stop_after=data
"""
import ml_collections

from experiments.configs import generate_babyai
from experiments.configs import train_lam
from experiments.configs import train_skill_model

VARIANTS = ("default", "quick", "smoke")
# BabyAI level of the experiment: "go to the <color> <object>" in one room with distractors,
# ~7 steps per episode. Chosen by measurement: on BabyAI-PutNextLocal-v0 (4 subgoals, ~13 steps)
# BAKU of this size trained on all 200 demos (500 steps) reached 0/50 successes (first-step
# action accuracy 0.57 on val), which would leave every comparison at 0; on GoToLocal the same
# run reaches 0.20-0.26.
LEVEL = "BabyAI-GoToLocal-v0"


def _babyai(seed: int, action_free: bool, train: int, val: int) -> ml_collections.ConfigDict:
  config = generate_babyai.get_config("default")
  config.level = LEVEL
  config.seed = seed
  config.action_free = action_free
  config.num_train_episodes = train
  config.num_val_episodes = val
  config.episodes_per_shard = 100
  config.num_workers = 2  # this machine's cores; the output does not depend on it
  return config


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"unknown main config variant {arg!r}; variants: {', '.join(VARIANTS)}")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.level = LEVEL
  config.stop_after = ""  # "data": stop after generating the datasets
  # Action-free video (seed 1) and demonstrations (seed 0): disjoint environment seeds.
  config.video = _babyai(seed=1, action_free=True, train=1500, val=100)
  config.demos = _babyai(seed=0, action_free=False, train=200, val=50)

  config.lam = train_lam.get_config("babyai")
  config.lam.num_steps = 600
  config.lam.eval_every = 300
  config.skill = train_skill_model.get_config("babyai")
  # GoToLocal episodes are ~7 frames: much shorter windows than BossLevel's.
  config.skill.data.window = 16
  config.skill.data.window_hop = 8
  config.skill.num_steps = 600
  config.skill.eval_every = 300
  config.skill.checkpoint_every = 300

  config.policy = ml_collections.ConfigDict()
  # CPU size: a 4x4 stride-4 stem (56 -> 14 px: 2 per BabyAI tile), channels (16, 32, 32).
  config.policy.model_size = "cpu"
  config.policy.condition_mode = "token"
  config.policy.lang_encoder = "minilm"
  config.policy.chunk = 10
  config.policy.head_hidden = (64,)
  config.policy.batch_size = 64
  config.policy.learning_rate = 1e-3
  config.policy.warmup_steps = 100
  config.policy.pretrain_steps = 600
  config.policy.finetune_steps = 400
  config.policy.shuffle_buffer = 5000
  config.policy.log_every = 50
  config.policy.num_eval_batches = 5
  config.policy.high_every = 1  # query pi^h at every step (OPEN in the paper)

  config.fractions = (0.1, 0.5, 1.0)
  config.methods = ("baku", "flat_z0", "flat_z2", "hilam", "hilam_no_pretrain")
  config.ablations = ("hilam_s1_z0", "hilam_s2_s1")  # at the largest fraction

  config.eval = ml_collections.ConfigDict()
  config.eval.num_episodes = 150
  config.eval.max_steps = ml_collections.config_dict.placeholder(int)  # None: the level's limit
  config.eval.num_envs = 16
  config.eval.seed = 0
  config.eval.num_videos = 2
  config.report = ml_collections.ConfigDict()
  config.report.num_filmstrips = 3

  if arg == "quick":
    config.video.num_train_episodes, config.video.num_val_episodes = 300, 30
    config.demos.num_train_episodes, config.demos.num_val_episodes = 100, 20
    config.lam.num_steps = 150
    config.lam.eval_every = 150
    config.skill.num_steps = 150
    config.skill.eval_every = 150
    config.skill.checkpoint_every = 150
    config.policy.pretrain_steps = 120
    config.policy.finetune_steps = 100
    config.fractions = (0.1, 1.0)
    config.ablations = ()
    config.eval.num_episodes = 50
  elif arg == "smoke":
    for key, train, val in (("video", 6, 3), ("demos", 4, 2)):
      config[key].num_train_episodes, config[key].num_val_episodes = train, val
      config[key].episodes_per_shard = 3
      config[key].num_workers = 1
    config.lam = train_lam.get_config("tiny")
    config.skill = train_skill_model.get_config("tiny")
    config.policy.model_size = "tiny"
    config.policy.lang_encoder = "hash"
    config.policy.chunk = 4
    config.policy.head_hidden = (16,)
    config.policy.batch_size = 8
    config.policy.pretrain_steps = 3
    config.policy.finetune_steps = 3
    config.policy.shuffle_buffer = 64
    config.policy.num_eval_batches = 1
    config.fractions = (1.0,)
    config.ablations = ()
    config.eval.num_episodes = 4
    config.eval.num_envs = 2
    config.eval.max_steps = 16
    config.eval.num_videos = 1
    config.report.num_filmstrips = 1
  return config

