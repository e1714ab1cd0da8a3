"""Config of `experiments/train_skill_model.py`: the HiLAM skill model on latent-action labels.

Launch (big_vision style: `:variant` selects a named config, flags override fields):

  # BabyAI: labels from experiments/label_latent_actions.py (LAM runs/lam_babyai, k = 1, Dz = 16)
  python -m experiments.train_skill_model \
      --config=experiments/configs/train_skill_model.py:babyai --workdir=runs/skill_babyai

  # Meta-World: labels of the k = 4 LAM (runs/lam_metaworld, Dz = 16)
  python -m experiments.label_latent_actions \
      --config=experiments/configs/label_latent_actions.py:metaworld
  python -m experiments.train_skill_model \
      --config=experiments/configs/train_skill_model.py:metaworld --workdir=runs/skill_metaworld

  # with the frozen-LAM reconstruction term (frames are read from the labelled datasets; the LAM
  # is the one the label manifest names unless --config.frozen_model is given)
  python -m experiments.train_skill_model --config=experiments/configs/train_skill_model.py:babyai \
      --config.lambda_rec=1.0 --workdir=runs/skill_babyai_rec

  # tests / smoke runs on any tiny label folder (latent_dim must match the labels)
  python -m experiments.train_skill_model --config=experiments/configs/train_skill_model.py:tiny \
      --config.data.labels_dir=/tmp/labels --workdir=/tmp/skill

  # OPEN knobs from the command line, e.g. other target ratios N^1, N^2:
  #   --config.model.target_ratios='(4.0, 5.0)' --config.lambda_ratio=0.03

Rerunning with the same workdir resumes from the latest checkpoint; `num_steps` may be raised.
"""
import ml_collections

from hilam_jax.skill import model as skill_model
from hilam_jax.training import hyperparams


def _model(config: skill_model.SkillModelConfig) -> dict:
  """SkillModelConfig as a dict with tuples (lists cannot be overridden on the command line)."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in config.to_dict().items()}


def get_config(arg: str = "babyai") -> ml_collections.ConfigDict:
  if arg not in ("babyai", "metaworld", "tiny"):
    raise ValueError(f"unknown train_skill_model variant {arg!r}; variants: babyai, metaworld, "
                     "tiny")
  config = ml_collections.ConfigDict()

  config.data = ml_collections.ConfigDict()
  config.data.labels_dir = "runs/labels_babyai"
  config.data.train_split = "train"
  config.data.val_split = "val"
  # OPEN (METHOD.md section 3): the window length L. BabyAI BossLevel subtasks last ~21 frames,
  # so 64 frames hold ~3 of them: enough for stage 2 (N^1 N^2 = 9 frames per chunk) to matter.
  config.data.window = 64
  config.data.window_hop = 32
  # Latent normalisation before the model (input and L1 target): "none", or "zscore" (per
  # dimension, train-split statistics, stored in the workdir and applied again by extraction).
  config.data.normalize = "none"
  # Windows are streamed from the label shards (hilam_jax.skill.window_stream) through a shuffle
  # buffer of this many windows: memory ~ buffer * L * Dz * 4 bytes (4096 * 64 * 16 * 4: 17 MB),
  # with L_rec plus 2 * rec_positions frames per window (56x56: 37 KB each at 2 positions).
  config.data.shuffle_buffer = 4096

  # SkillModelConfig fields; OPEN: sizes and N^s (target_ratios), here N^1 = N^2 = 3.
  config.model = _model(skill_model.SkillModelConfig(latent_dim=16, target_ratios=(3.0, 3.0)))
  # OPEN loss weights. lambda_rec > 0 adds the frozen-FDM reconstruction term: the trainer then
  # streams the labelled episodes' frames with their latents (shard by shard) and runs the
  # frozen FDM on `data.rec_positions` random positions t >= 1 of every window (B * rec_positions
  # pairs per step; 0: all L positions). The FDM dominates the step: on this shared 2-core CPU,
  # BabyAI ran ~0.45 steps/s with 8 positions and ~1.3 with 2 (~4-7 without L_rec). On BabyAI val
  # (800 steps, 2 positions) lambda_rec = 1 gave stage-2 F1 0.170 / 0.133 for seeds 0 / 1 against
  # 0.129 / 0.137 without it: within seed noise, so the default stays 0.
  config.lambda_rec = 0.0
  config.lambda_ratio = 0.03
  # Weight of the bottleneck heads' next-latent l1 (model.bottleneck_heads; 0: off). A
  # segment-level objective beside the paper's: each stage's chunks alone must predict z^0_{t+1}.
  config.lambda_aux = 0.0
  # Weight of the paper's next-latent l1 (1). A non-causal model (model.causal = False, segment
  # reconstruction with model.bottleneck_target = "current") must set 0: it sees its target.
  config.lambda_latent = 1.0
  # H-Net pools the ratio loss over the batch, so windows may trade boundaries (none in one,
  # many in another); True applies it to every window and averages (a budget per window).
  config.ratio_per_sequence = False
  config.data.rec_positions = 2
  # L_rec's frames: a corrupted record fails with its file named; True reads only intact records
  # and leaves out the windows of the episodes it skipped. May be turned on when resuming.
  config.data.skip_corrupted = False
  # True: every process reads the whole stream and keeps its rows of each global batch, so the
  # batches (and the run) do not depend on the process count: 2 x 4 devices train as 1 x 8, at
  # process_count times the input work. False: each process reads its own shard files (scale).
  config.data.global_order = False
  # The frozen model of L_rec, 'lam:<workdir>' or 'uniskill:<converted dir>'
  # (frozen_models.load_frozen_model); None: the LAM named in the label manifest (must match its
  # k and Dz).
  config.frozen_model = ml_collections.config_dict.placeholder(str)

  config.update(hyperparams.trainer_config(
      batch_size=32, num_steps=2000, learning_rate=1e-3, warmup_steps=100, eval_every=500,
      num_eval_batches=10, checkpoint_every=500))
  # Per-level multipliers of the rate, outermost level first, comma-separated (one per entry of
  # model.widths), or "hnet" (H-Net's modulation sqrt(N^s D^S / D^s), innermost 1); "": one
  # rate everywhere.
  config.level_lr_multipliers = ""

  if arg == "metaworld":
    # Labels of runs/lam_metaworld (k = 4, Dz = 16). Episodes have ~71 frames (67 latents) and
    # 2.7 scripted phases of mean length 24.5 frames (median 23) on train: a 64-frame window
    # holds a whole episode, and N^1 N^2 = 4 * 6 = 24 frames per stage-2 chunk matches a phase.
    config.data.labels_dir = "runs/labels_metaworld"
    config.model = _model(skill_model.SkillModelConfig(latent_dim=16, target_ratios=(4.0, 6.0)))
    config.num_steps = 800

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
