"""Config of `experiments/train_skill_model.py`: the HiLAM skill model on latent-action labels.

Launch (big_vision style: `:variant` selects a named config, flags override fields):

  # BabyAI: labels from experiments/label_latent_actions.py (LAM runs/lam_babyai, k = 1, Dz = 16)
  python -m experiments.train_skill_model \
      --config=experiments/configs/train_skill_model.py:babyai --workdir=runs/skill_babyai

  # tests / smoke runs on any tiny label folder (latent_dim must match the labels)
  python -m experiments.train_skill_model --config=experiments/configs/train_skill_model.py:tiny \
      --config.data.labels_dir=/tmp/labels --workdir=/tmp/skill

  # OPEN knobs from the command line, e.g. other target ratios N^1, N^2:
  #   --config.model.target_ratios='(4.0, 5.0)' --config.lambda_ratio=0.03

Rerunning with the same workdir resumes from the latest checkpoint; `num_steps` may be raised.
"""
import ml_collections

from hilam_jax.skill import model as skill_model


def _model(config: skill_model.SkillModelConfig) -> dict:
  """SkillModelConfig as a dict with tuples (lists cannot be overridden on the command line)."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in config.to_dict().items()}


def get_config(arg: str = "babyai") -> ml_collections.ConfigDict:
  if arg not in ("babyai", "tiny"):
    raise ValueError(f"unknown train_skill_model variant {arg!r}; variants: babyai, tiny")
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.labels_dir = "runs/labels_babyai"
  config.data.train_split = "train"
  config.data.val_split = "val"
  # OPEN (METHOD.md section 3): the window length L. BabyAI BossLevel subtasks last ~21 frames,
  # so 64 frames hold ~3 of them: enough for stage 2 (N^1 N^2 = 9 frames per chunk) to matter.
  config.data.window = 64
  config.data.window_hop = 32

  # SkillModelConfig fields; OPEN: sizes and N^s (target_ratios), here N^1 = N^2 = 3.
  config.model = _model(skill_model.SkillModelConfig(latent_dim=16, target_ratios=(3.0, 3.0)))
  # OPEN loss weights. lambda_rec > 0 needs frames and the frozen FDM: not wired in the trainer.
  config.lambda_rec = 0.0
  config.lambda_ratio = 0.03

  config.batch_size = 32
  config.num_steps = 2000
  config.learning_rate = 1e-3
  config.warmup_steps = 100
  config.weight_decay = 1e-4
  config.grad_clip = 1.0
  config.log_every = 50
  config.eval_every = 500
  config.num_eval_batches = 10
  config.checkpoint_every = 500

  if arg == "tiny":
    config.data.window = 16
    config.data.window_hop = 8
    config.model = _model(skill_model.SkillModelConfig.tiny(latent_dim=4))
    config.batch_size = 4
    config.num_steps = 4
    config.warmup_steps = 1
    config.log_every = 2
    config.eval_every = 4
    config.num_eval_batches = 1
    config.checkpoint_every = 2
  return config
