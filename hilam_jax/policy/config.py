"""Default config of one policy run (`trainer.train_and_evaluate`): flat, HiLAM high or low level.

`default_config(variant)` is the library's config; `experiments/configs/train_policy.py` (the
launch config of `experiments/train_policy.py`) and the main job (`hilam_jax/experiment.py`) build
on it. Launch (`:variant` picks a preset):

  # BAKU on BabyAI demos (categorical actions), 10% of the episodes
  python -m experiments.train_policy --config=experiments/configs/train_policy.py:baku \
      --config.data.train='({"dataset_dir": "runs/main/data/babyai_putnextlocal/1.0.0"},)' \
      --config.data.val='({"dataset_dir": "runs/main/data/babyai_putnextlocal/1.0.0"},)' \
      --config.data.episode_fraction=0.1 --workdir=runs/policy_baku

  # HiLAM high level pi^h(o, lang) -> skill z̄^2 on action-free video (skills from extract_skills)
  python -m experiments.train_policy --config=experiments/configs/train_policy.py:high \
      --config.data.labels='{"s2": {"dir": "runs/main/skills", "key": "skill/s2"}}' ...

  # HiLAM low level pi^l(o, z̄^2) -> z^0 (teacher-forced skills), then fine-tuning on demos with
  # the frozen pi^h's predicted skill: condition.source=high_policy, init_from=<pretrain workdir>

OPEN choices of the paper, with our defaults (METHOD.md §4): the skill enters pi^l as one token
per step (model.condition_mode "token"; "film" and "concat" are the alternatives); pretraining is
teacher-forced (condition.source "labels"); latent heads regress with MSE; every head predicts
chunks of `chunk` steps and evaluation aggregates the ACTION chunks ACT-style (decay 0.01).
The skill pi^l is conditioned on is pi^h's offset-0 (current-step) prediction, in fine-tuning and
at test time alike (`networks.high_level_skill`; at test time refreshed every `high_every` steps,
see hilam_jax/policy/policies.py). The low level sees no language (the paper's pi^l(o, skill));
`lang_for_low=True` gives it the instruction (prompt token and FiLM input) like pi^h.
"""
import ml_collections
from ml_collections import config_dict

from hilam_jax.policy import baku
from hilam_jax.training import hyperparams

VARIANTS = ("baku", "flat_latent", "high", "low", "tiny")


def model(size: str = "small", **overrides) -> dict:
  """BakuConfig fields (without heads) of a size preset: paper, small, cpu, grid or tiny.

  "cpu" is the experiment's size for 56x56 BabyAI frames: a 4x4 stride-4 stem (56 -> 14 px, two
  per grid tile), channels (16, 32, 32), 16 keypoints, repr/GPT width 64, 2 layers (~250k
  params; ~4x fewer FLOPs than "small").
  "grid" is for BabyAI's room view (8x8 cells of 7 px): the grid-aligned encoder (7x7 stride-7
  cell conv, 32 channels, 2 FiLM'd residual blocks, flatten + Linear), repr/GPT width 128, 2
  layers (the probe of issue 10 and `experiments/benchmark_regime.py`).
  """
  if size == "paper":
    cfg = baku.BakuConfig.paper()
  elif size == "small":
    cfg = baku.BakuConfig.small()
  elif size == "cpu":
    cfg = baku.BakuConfig.small(encoder_channels=(16, 32, 32), stem_kernel=4, stem_stride=4,
                                norm_groups=8, num_keypoints=16, repr_dim=64, gpt_layers=2,
                                gpt_heads=2, gpt_width=64)
  elif size == "grid":
    cfg = baku.BakuConfig.small(encoder="grid", grid_cell=7, grid_blocks=2, pooling="flatten",
                                encoder_channels=(32, 32, 32), norm_groups=8)
  elif size == "tiny":
    cfg = baku.BakuConfig.small(encoder_channels=(8, 8, 16), norm_groups=4, num_keypoints=8,
                                repr_dim=32, gpt_layers=1, gpt_heads=2, gpt_width=32)
  else:
    raise ValueError(f"unknown model size {size!r}; sizes: paper, small, cpu, grid, tiny")
  # heads come from config.heads, use_lang from the role (networks.model_config).
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.to_dict().items()
            if k not in ("heads", "use_lang")}
  fields.update(overrides)
  return fields


def default_config(arg: str = "baku") -> ml_collections.ConfigDict:
  """The config of a policy run; `arg` is a variant of VARIANTS."""
  if arg not in VARIANTS:
    raise ValueError(f"unknown train_policy variant {arg!r}; variants: {', '.join(VARIANTS)}")
  config = ml_collections.ConfigDict()
  config.role = "flat"              # flat | high | low (module docstring of policy/trainer.py)

  config.data = ml_collections.ConfigDict()
  config.data.train = ({"dataset_dir": config_dict.placeholder(str)},)
  config.data.val = ()
  config.data.train_split = "train"
  config.data.val_split = "val"
  config.data.episode_fraction = 1.0    # nested subsets of the train episodes
  config.data.image_size = (56, 56)     # every camera is resized to it
  # The observation cameras the network sees (`image_*` keys of the standardized datasets), each
  # through the shared encoder with its own camera embedding; BAKU on LIBERO takes both:
  # ("image_primary", "image_wrist"). The test-time policy reads the list from the checkpoint.
  config.data.cameras = ("image_primary",)
  config.data.augment = True            # DrQ/BAKU random shift (train only)
  # Where it runs: "device" (inside the jitted train step; tf.data only decodes, resizes and
  # batches) or "host" (tf.data). The same transforms either way.
  config.data.augment_on = "device"
  config.data.shuffle_buffer = 5000
  # A corrupted record fails with its file named; True reads only intact records (and counts
  # the rest). May be turned on when resuming.
  config.data.skip_corrupted = False
  # True: every process reads the whole stream and keeps its rows of each global batch, so the
  # batches (and the run) do not depend on the process count: 2 x 4 devices train as 1 x 8, at
  # process_count times the input work. False: each process reads its own shard files (scale).
  config.data.global_order = False
  # Keep the training split's trajectories in memory after the first epoch (`make_dataset`'s
  # cache: "decoded", "encoded" or "" for none): a demo fraction is otherwise re-filtered from
  # every shard each epoch (measured 118 vs 5 ms per batch at 10% of 1,000 UnlockLocal demos),
  # and decoded frames skip the per-batch JPEG decoding (56x56 frames: 9.4 kB each in memory).
  config.data.cache = "decoded"
  # BabyAI's terminal step carries a placeholder 'done' (6) that the bot never takes: not a target.
  config.data.ignore_action = config_dict.placeholder(int)
  # join key -> {"dir": labels or skills folder, "key": skill key for skill folders}
  config.data.labels = ml_collections.ConfigDict()

  config.lang_encoder = "minilm"
  config.chunk = 10
  config.head_hidden = (128,)
  # head name -> {kind: categorical|continuous|latent, dim, target: "action" or a label key}
  config.heads = ml_collections.ConfigDict()
  config.condition = ml_collections.ConfigDict()
  config.condition.key = config_dict.placeholder(str)       # skill label conditioning pi^l
  config.condition.source = "labels"                         # labels | high_policy
  config.condition.high_workdir = config_dict.placeholder(str)
  config.condition.high_head = "skill"
  # pi^l gets no language instruction unless this is set (role "low" only; flat and high always
  # read it). Stored in the checkpoint's model_config as use_lang for the test-time network.
  config.lang_for_low = False
  config.init_from = config_dict.placeholder(str)            # a pretraining workdir
  # Learning-rate multiplier of everything but the heads (encoder, trunk, embeddings): < 1
  # fine-tunes a pretrained body more gently than its new heads, 0 freezes it (a probe).
  config.body_lr_multiplier = 1.0
  # Length of the learning-rate schedule (warm-up, cosine decay) when it is not num_steps: a run
  # of num_steps=S with schedule_steps=N trains exactly the first S steps of the N-step run (that
  # run stopped early at S, e.g. at its best validation step). None: num_steps.
  config.schedule_steps = config_dict.placeholder(int)
  # Early stopping on a validation metric ("" = off): evaluated every eval_every steps, the run
  # stops `patience` steps after the best value (mode "max" or "min") and keeps the best step's
  # checkpoint as its policy. Metrics: "loss", "<head>/loss", "<head>/accuracy" (categorical
  # heads), "<head>/mse", "<head>/l1", "<head>/r2" (the others).
  config.early_stopping = ml_collections.ConfigDict(
      {"metric": "", "mode": "max", "patience": 1000})
  config.model = model("small", proprio_dim=4)

  config.update(hyperparams.trainer_config(
      batch_size=64, num_steps=2000, learning_rate=3e-4, warmup_steps=100, eval_every=1000,
      num_eval_batches=5, checkpoint_every=1000))

  if arg in ("baku", "tiny"):
    config.data.ignore_action = 6
    config.heads = {"action": {"kind": "categorical", "dim": 7, "target": "action"}}
  elif arg == "flat_latent":
    config.data.labels = {"z0": {"dir": config_dict.placeholder(str)}}
    config.heads = {"latent": {"kind": "latent", "dim": 16, "target": "z0"}}
  elif arg == "high":
    config.role = "high"
    config.data.labels = {"s2": {"dir": config_dict.placeholder(str), "key": "skill/s2"}}
    config.heads = {"skill": {"kind": "latent", "dim": 16, "target": "s2"}}
  elif arg == "low":
    config.role = "low"
    config.data.labels = {"z0": {"dir": config_dict.placeholder(str)},
                          "s2": {"dir": config_dict.placeholder(str), "key": "skill/s2"}}
    config.heads = {"latent": {"kind": "latent", "dim": 16, "target": "z0"}}
    config.condition.key = "s2"
    config.model = model("small", proprio_dim=4, condition_dim=16)
  if arg == "tiny":
    config.lang_encoder = "hash"
    config.model = model("tiny", proprio_dim=4)
    config.head_hidden = (16,)
    config.chunk = 4
    config.batch_size = 8
    config.num_steps = 6
    config.warmup_steps = 1
    config.log_every = 2
    config.eval_every = 4
    config.num_eval_batches = 1
    config.checkpoint_every = 4
    config.data.shuffle_buffer = 64
  return config
