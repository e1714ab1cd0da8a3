"""Config of `experiments/train_lam.py`: the stage-0 latent action model on frame pairs.

Launch (big_vision style: `:variant` selects a named config, flags override fields):

  # BabyAI (the main job's dataset; k = 1: one bot action per latent)
  python -m experiments.train_lam --config=experiments/configs/train_lam.py:babyai \
      --workdir=runs/lam_babyai

  # Meta-World (k = 4 frames at 64x64)
  python -m experiments.train_lam --config=experiments/configs/train_lam.py:metaworld \
      --workdir=runs/lam_metaworld

  # tests / smoke runs on any tiny dataset
  python -m experiments.train_lam --config=experiments/configs/train_lam.py:tiny \
      --config.data.train='({"dataset_dir": "/tmp/d/babyai_bosslevel/1.0.0"},)' --workdir=/tmp/lam

Rerunning with the same workdir resumes from the latest checkpoint; `num_steps` may be raised.
"""
import ml_collections

from hilam_jax.lam import model as lam_model
from hilam_jax.training import hyperparams


def get_config(arg: str = "babyai") -> ml_collections.ConfigDict:
  if arg not in ("babyai", "metaworld", "tiny"):
    raise ValueError(f"unknown train_lam variant {arg!r}; variants: babyai, metaworld, tiny")
  config = ml_collections.ConfigDict()

  config.data = ml_collections.ConfigDict()
  # Lists of DatasetSpec fields (dataset_dir, optional name, split, weight).
  config.data.train = ({"dataset_dir": "runs/main/data/babyai_unlocklocal_video/1.0.0", "split": "train"},)
  config.data.val = ({"dataset_dir": "runs/main/data/babyai_unlocklocal_video/1.0.0", "split": "val"},)
  # OPEN in the paper (METHOD.md §2): the frame gap k. BabyAI moves one cell / 90° per action,
  # so k = 1 makes one latent per bot action; Meta-World's small 4-D deltas need a few frames.
  config.data.frame_gap = 1
  config.data.image_size = (56, 56)
  config.data.shuffle_buffer = 10_000
  # Augmentation off by default: a random crop of grid-world frames moves the grid itself.
  config.data.augment = None
  # Where augmentation runs when on: "device" (inside the jitted train step; tf.data only
  # decodes, resizes and batches) or "host" (tf.data; also the only place of crop="resized").
  config.data.augment_on = "device"
  # A corrupted record fails with its file named; True reads only intact records (and counts
  # the rest). May be turned on when resuming.
  config.data.skip_corrupted = False
  # True: every process reads the whole stream and keeps its rows of each global batch, so the
  # batches (and the run) do not depend on the process count: 2 x 4 devices train as 1 x 8, at
  # process_count times the input work. False: each process reads its own shard files (scale).
  config.data.global_order = False

  # The LAM (hilam_jax/lam/model.py LAMConfig fields). A CPU-sized model.
  config.lam = lam_model.LAMConfig.tiny(latent_dim=16, z_l2_weight=1e-3).to_dict()

  # num_steps: ~0.35 s/step on 2 CPU cores at 56x56, ~12 minutes.
  config.update(hyperparams.trainer_config(
      batch_size=32, num_steps=2000, learning_rate=1e-3, warmup_steps=200, eval_every=500,
      num_eval_batches=20, checkpoint_every=500))

  if arg == "metaworld":
    config.data.train = ({"dataset_dir": "data/metaworld_experts/1.0.0", "split": "train"},)
    config.data.val = ({"dataset_dir": "data/metaworld_experts/1.0.0", "split": "val"},)
    config.data.frame_gap = 4
    config.data.image_size = (64, 64)
  elif arg == "tiny":
    config.data.shuffle_buffer = 64
    config.lam = lam_model.LAMConfig.tiny(
        latent_dim=4, idm_widths=(8, 16, 16), fdm_widths=(8, 16, 16), idm_mlp_width=16,
        fdm_cond_width=8).to_dict()
    config.batch_size = 8
    config.num_steps = 6
    config.warmup_steps = 2
    config.log_every = 2
    config.eval_every = 4
    config.num_eval_batches = 2
    config.checkpoint_every = 4
  return config
