"""One trainer for every policy of the experiment: BAKU on demos, latent pretraining, HiLAM levels.

A run trains a `BakuPolicy` whose heads each regress one target (METHOD.md §4):

  target "action"  real actions of action-labelled demos (categorical for BabyAI, tanh otherwise)
  target <label>   a per-frame pseudo-label joined by episode id: "z0" (latent actions from the
                   labeling job) or "s1"/"s2" (per-frame skills z̄^1/z̄^2 from skill extraction)

Every head predicts a chunk of `chunk` future steps (BAKU's action chunking). What the policy sees:

  role "flat"  π(o_t, lang)                        BAKU, and the flat latent-pretraining baselines
  role "high"  π^h(o_t, lang)                      HiLAM's high level (targets: a skill)
  role "low"   π^l(o_t, skill_t)                   HiLAM's low level; the skill enters as
               `condition` (BakuConfig.condition_mode), from
                 condition.source "labels":      the extracted skill of frame t (teacher forcing,
                                                 the default for pretraining), or
                 condition.source "high_policy": a frozen π^h's offset-0 prediction for frame t
                                                 (`networks.high_level_skill`, the same function
                                                 the test-time HierarchicalPolicy uses; the
                                                 paper's fine-tuning). π^h's params are a
                                                 constant of the jitted step, not part of the
                                                 TrainState, and never updated.
               The low level gets no language (the paper's π^l(o, skill)): its network has no
               language prompt token and no language FiLM input (BakuConfig.use_lang=False,
               stored with the checkpoint). `lang_for_low=True` gives it the instruction.

Fine-tuning starts from another run's parameters (`init_from`): the image encoder, trunk and
embeddings must match exactly (strict), heads that the new config does not have are dropped and
new heads start fresh. A fraction of the demonstrations is a nested subset of episode ids
(`data.episode_fraction`): the 10% episodes are among the 50%, which are among the 100%.

Batches come from the project's tf.data pipeline over RLDS (`data_pipeline.make_dataset`): label
joins by episode id, action and label chunks with masks, decode/resize/augment; instructions are
embedded on the host with a cached sentence encoder.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np

from data_pipeline import dataset as dp
from data_pipeline import frame_transforms
from data_pipeline import run_info
from data_pipeline import statistics
from data_pipeline import traj_transforms as tt
from hilam_jax import training
from hilam_jax.lam import labeling
from hilam_jax.language import CachedEncoder, make_encoder
from hilam_jax.policy import baku
from hilam_jax.policy import heads as heads_lib
from hilam_jax.policy import networks
from hilam_jax.skill import extract as skill_extract
from hilam_jax.training import augment as augment_lib

ROLES = ("flat", "high", "low")
# Config keys a resumed run may change: a longer run, and skipping corrupted records (turned on
# after one was found; also absent from checkpoints written before the option existed).
# Where augmentation runs (`data.augment_on`) may change too: the same transforms either way.
ALLOWED_CHANGES = ("num_steps", "data.skip_corrupted", "data.augment_on")
# A latent head's `normalize`: None (regress the labels as they are) or "zscore" (in units of the
# per-dimension mean and std of the labels of the run's training episodes: `target_statistics`).
NORMALIZE = (None, "zscore")


# ----------------------------------------------------------------------------- configuration


def eval_metric_names(config: Any) -> list[str]:
  """The validation metrics a run logs (eval/<name>): `heads.heads_loss`'s names."""
  names = ["loss"]
  for name, head in config.heads.items():
    kinds = ("loss", "accuracy") if head["kind"] == "categorical" else ("loss", "mse", "l1", "r2")
    names += [f"{name}/{k}" for k in kinds]
  return names


def early_stopping(config: Any) -> training.EarlyStopping | None:
  """The run's `config.early_stopping` rule, or None when its metric is "" (off)."""
  rule = config.get("early_stopping")
  if rule is None or not rule.metric:
    return None
  if rule.metric not in eval_metric_names(config):
    raise ValueError(f"early_stopping.metric {rule.metric!r} is not a validation metric of this "
                     f"run: {eval_metric_names(config)}")
  if not config.data.val:
    raise ValueError("early stopping needs validation data (config.data.val is empty)")
  return training.EarlyStopping(rule.metric, rule.patience, rule.mode)


def _check_config(config: Any) -> None:
  if config.role not in ROLES:
    raise ValueError(f"role {config.role!r} not in {ROLES}")
  if not config.heads:
    raise ValueError("config.heads is empty: a policy needs at least one head")
  networks.cameras(config)  # raises on a malformed camera list
  early_stopping(config)  # raises on a bad rule
  cond = config.condition
  if config.role == "low":
    if not cond.key or not config.model.condition_dim:
      raise ValueError("role 'low' needs condition.key (a skill label) and model.condition_dim")
    if cond.source not in ("labels", "high_policy"):
      raise ValueError(f"condition.source {cond.source!r} not in ('labels', 'high_policy')")
    if cond.source == "high_policy" and not cond.high_workdir:
      raise ValueError("condition.source 'high_policy' needs condition.high_workdir")
  elif config.model.condition_dim:
    raise ValueError(f"role {config.role!r} takes no condition; set model.condition_dim=0")
  for name, head in config.heads.items():
    if head["target"] != "action" and head["target"] not in config.data.labels:
      raise ValueError(f"head {name!r}: target {head['target']!r} is neither 'action' nor a "
                       f"joined label {sorted(config.data.labels)}")
    normalize = head.get("normalize")
    if normalize not in NORMALIZE:
      raise ValueError(f"head {name!r}: normalize {normalize!r} not in {NORMALIZE}")
    if normalize and (head["kind"] != "latent" or head["target"] == "action"):
      raise ValueError(f"head {name!r}: normalize {normalize!r} is for latent heads that regress "
                       f"a label, not a {head['kind']!r} head on {head['target']!r}")


def label_arrays(labels: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
  """{join key: {episode id: per-frame array}} from {key: {"dir": folder, "key": skill key
  (skills only)}}, read once per run (the statistics and the join share them).

  A folder with a label manifest (labeling job) gives latent actions; a skill-extraction folder
  gives the per-frame array named by "key" (e.g. "skill/s2"; boundaries as float32 0/1).
  """
  arrays = {}
  for join_key, spec in labels.items():
    folder = spec["dir"]
    if not os.path.exists(os.path.join(folder, labeling.MANIFEST)):
      raise FileNotFoundError(f"label {join_key!r}: no manifest in {folder}")
    if spec.get("key"):
      arrays[join_key] = skill_extract.load_skills_dict(folder, spec["key"], joinable=True)
    else:
      arrays[join_key] = labeling.read_labels(folder)
  return arrays


def label_tables(arrays: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
  """{join key: EpisodeLabels} of `label_arrays`' result (the pipeline's joins)."""
  return {join_key: tt.EpisodeLabels(values) for join_key, values in arrays.items()}


def select_episodes(spec: Mapping[str, Any], fraction: float, seed: int = 0, *,
                    skip_corrupted: bool = False) -> list[str] | None:
  """A nested subset: the first ceil(fraction * n) episode ids in a seeded hash order (of the
  readable episodes with `skip_corrupted`)."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"episode_fraction must be in (0, 1], got {fraction}")
  if fraction == 1.0:
    return None
  ids = dp.list_episode_ids(spec, skip_corrupted=skip_corrupted)
  order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
  return order[:max(1, math.ceil(fraction * len(ids)))]


def target_statistics(config: Any, episode_ids: list[str] | None,
                      arrays: Mapping[str, Mapping[str, np.ndarray]] | None = None
                      ) -> dict[str, tuple]:
  """{head: (mean, std)} per dimension for the heads with `normalize="zscore"`: over every
  labelled frame of the run's training episodes (`episode_ids`, or the whole training split
  for None), never the validation split. A constant dimension gets std 1 (left unscaled).
  `arrays`: the run's `label_arrays` (read here when None)."""
  heads = {n: h for n, h in config.heads.items() if h.get("normalize") == "zscore"}
  if not heads:
    return {}
  if episode_ids is None:
    episode_ids = dp.list_episode_ids(dict(config.data.train[0], split=config.data.train_split),
                                      skip_corrupted=bool(config.data.get("skip_corrupted",
                                                                          False)))
  if arrays is None:
    arrays = label_arrays(config.data.labels)
  stats = {}
  for name, head in heads.items():
    values = arrays[head["target"]]
    frames = [values[i] for i in episode_ids if i in values]
    if not frames:
      raise ValueError(f"head {name!r}: none of the {len(episode_ids)} training episodes has a "
                       f"{head['target']!r} label in {config.data.labels[head['target']]['dir']}")
    mean, std = statistics.per_dimension_mean_std(frames, int(head["dim"]))
    std = np.where(std > 1e-8, std, 1.0)
    stats[name] = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
    logging.info("head %r: targets %r z-scored over %d frames of %d episodes (std %.3g-%.3g)",
                 name, head["target"], sum(map(len, frames)), len(frames), std.min(), std.max())
  return stats


# ----------------------------------------------------------------------------- batches


class BatchConverter:
  """numpy pipeline batch -> model batch {"inputs", "targets", "masks"} (no strings)."""

  def __init__(self, config: Any, encoder: CachedEncoder):
    self.config, self.encoder = config, encoder
    self.model_config = networks.model_config(config)
    low = config.role == "low"
    self.uses_labels_condition = low and config.condition.source == "labels"
    # Instructions are embedded for the network if it reads them, and for a frozen π^h
    # (which always does) that computes the low level's skill from the same batch.
    self.embeds_lang = self.model_config.use_lang or (low and
                                                      config.condition.source == "high_policy")
    self.cameras = networks.cameras(config)

  def inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
    obs = batch["observation"]
    missing = [c for c in self.cameras if c not in obs]
    if missing:
      raise ValueError(f"data.cameras {list(self.cameras)}: the dataset has no {missing}; its "
                       f"observation has {sorted(k for k in obs if k.startswith('image_'))}")
    return networks.model_inputs(
        self.model_config, {c: obs[c] for c in self.cameras},
        lang=self.encoder.embed(batch["language_instruction"]) if self.embeds_lang else None,
        proprio=obs.get("proprio"),
        condition=batch[self.config.condition.key] if self.uses_labels_condition else None)

  def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
    inputs = self.inputs(batch)  # first: names a missing camera before any target is read
    targets, masks = {}, {}
    for name, head in self.config.heads.items():
      if head["target"] == "action":
        target, mask = batch["action"], batch["action_pad_mask"]
        ignore = self.config.data.ignore_action
        if ignore is not None:
          mask = mask & (target != ignore)
      else:
        target, mask = batch[head["target"]], batch[f"{head['target']}_mask"]
      if head["kind"] != "categorical":
        target = target.astype(np.float32)
      targets[name], masks[name] = target[:, None], mask[:, None]
    return {"inputs": inputs, "targets": targets, "masks": masks}


def make_pipeline(config: Any, split: str, tables: Mapping[str, Any], *, batch_size: int,
                  seed: int, episode_ids: list[str] | None = None, train: bool = True):
  """The tf.data pipeline of one split (train: all `config.data.train` datasets)."""
  specs = [dict(s, split=split) for s in (config.data.train if split == config.data.train_split
                                          else config.data.val)]
  uses_action = any(h["target"] == "action" for h in config.heads.values())
  chunk_labels = tuple(sorted({h["target"] for h in config.heads.values()} - {"action"}))
  host = train and augment_lib.placement(config.data) == "host"
  augment = frame_transforms.AugmentConfig() if host else None
  transforms = dp.TransformConfig(
      action_horizon=config.chunk, chunk_actions=uses_action, chunk_labels=chunk_labels,
      resize=tuple(config.data.image_size) if config.data.image_size else None, augment=augment)
  return dp.make_dataset(
      specs, batch_size=batch_size, transforms=transforms, seed=seed, repeat=True,
      shuffle_buffer=config.data.shuffle_buffer if train else 1000, labels=dict(tables),
      drop_unlabeled=bool(tables), episode_ids=episode_ids,
      cache=(config.data.get("cache") or None) if train else None,
      skip_corrupted=bool(config.data.get("skip_corrupted", False)),
      fill_missing=bool(config.data.get("fill_missing", False)),
      process_index=jax.process_index(), process_count=jax.process_count(),
      global_order=bool(config.data.get("global_order", False)))


# ----------------------------------------------------------------------------- models


def device_augment_fn(config: Any):
  """The train step's `augment_fn` for model batches (every camera of an example gets one
  draw), or None when augmentation is off or runs on the host."""
  if augment_lib.placement(config.data) != "device":
    return None
  cameras = lambda b: sorted(b["inputs"]["images"])

  def put(batch, images):
    inputs = dict(batch["inputs"], images=dict(zip(cameras(batch), images)))
    return dict(batch, inputs=inputs)

  return augment_lib.make_augment_fn(
      frame_transforms.AugmentConfig(),
      lambda b: [b["inputs"]["images"][c] for c in cameras(b)], put)


def body_update_scale(config: Any):
  """The optimizer's per-leaf update multipliers: `body_lr_multiplier` for every parameter
  outside the heads (the encoder, trunk and embeddings a fine-tuning run takes from its
  pretraining), 1 for the heads; None (plain optimizer) when the multiplier is 1."""
  multiplier = float(config.get("body_lr_multiplier", 1.0))
  if multiplier < 0:
    raise ValueError(f"body_lr_multiplier must be >= 0, got {multiplier}")
  if multiplier == 1.0:
    return None
  return lambda params: {k: jax.tree.map(lambda _: 1.0 if k.startswith("head_") else multiplier, v)
                         for k, v in params.items()}


def transfer_params(pretrained: Any, fresh: Any, *, source: str) -> tuple[Any, list[str]]:
  """`fresh` with every non-head parameter taken from `pretrained` (strict) and heads that exist
  in both (same shapes) kept from `pretrained`. Returns (params, names of fresh heads)."""
  pretrained, fresh = dict(pretrained), dict(fresh)
  body_new = {k for k in fresh if not k.startswith("head_")}
  body_old = {k for k in pretrained if not k.startswith("head_")}
  if body_new != body_old:
    raise ValueError(f"init_from {source}: module sets differ: only in the pretrained model "
                     f"{sorted(body_old - body_new)}, only in the new one {sorted(body_new - body_old)}")
  out, new_heads = {}, []
  for key, value in fresh.items():
    old = pretrained.get(key)
    if old is None:
      out[key] = value
      new_heads.append(key)
      continue
    shapes_old = jax.tree.map(np.shape, old)
    shapes_new = jax.tree.map(np.shape, value)
    if shapes_old != shapes_new:
      if key.startswith("head_"):
        out[key] = value
        new_heads.append(key)
        continue
      raise ValueError(f"init_from {source}: parameter shapes of {key!r} differ")
    out[key] = old
  return out, new_heads


def policy_loss(params, batch, rng, *, module, head_cfgs, high=None, train=True):
  """(loss, metrics) of `module` on a model batch (`BatchConverter`).

  high: None, or (module, params, head) of a frozen π^h whose skill
    (`networks.high_level_skill`) becomes the low level's `condition`; its params are constants
    here (closed over by the jitted step), never differentiated.
  """
  inputs = batch["inputs"]
  if high is not None:
    high_module, high_params, high_head = high
    skill = networks.high_level_skill(high_module, high_params, inputs, high_head)
    inputs = dict(inputs, condition=jax.lax.stop_gradient(skill))
  out = module.apply({"params": params}, inputs, train=train,
                     heads=tuple(h.name for h in head_cfgs), rngs={"dropout": rng})
  return heads_lib.heads_loss(head_cfgs, out.predictions, batch["targets"], batch["masks"])


# ----------------------------------------------------------------------------- training


@training.releases_workdir_locks
def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
  """Trains (or resumes) one policy in `workdir`; returns the final validation metrics.

  The config, the datasets and label folders, and a resumed run's stored config are checked
  before anything is built or written (a refused run leaves the workdir as it was).
  """
  _check_config(config)
  training.check_run_config(config)
  dp.check_datasets([dict(s, split=config.data.train_split) for s in config.data.train] +
                    [dict(s, split=config.data.val_split) for s in config.data.val])
  arrays = label_arrays(config.data.labels)  # read once: statistics and joins
  train_spec = dict(config.data.train[0], split=config.data.train_split)
  episode_ids = select_episodes(train_spec, config.data.episode_fraction, config.seed,
                                skip_corrupted=bool(config.data.get("skip_corrupted", False)))
  cfg = networks.model_config(config, target_statistics(config, episode_ids, arrays))
  stopping = early_stopping(config)
  training.lock_workdir(workdir)  # before anything is written; refuses a second run
  os.makedirs(workdir, exist_ok=True)
  checkpointer = training.Checkpointer(
      os.path.join(workdir, "checkpoints"), {**config.to_dict(), "model_config": cfg.to_dict()},
      # Early stopping keeps the newest and the best step itself.
      max_to_keep=None if stopping else 1, save_interval_steps=config.checkpoint_every,
      allowed_config_changes=ALLOWED_CHANGES)
  run_info.write_run_info(workdir, config)
  module = baku.BakuPolicy(cfg)
  head_cfgs = cfg.heads
  image_size = tuple(config.data.image_size)
  mesh = training.make_mesh()
  tx = training.make_optimizer(config, update_scale=body_update_scale(config))
  encoder = CachedEncoder(make_encoder(config.lang_encoder))
  if encoder.dim != cfg.lang_dim:
    raise ValueError(f"language encoder {config.lang_encoder!r} gives {encoder.dim}-d "
                     f"embeddings, model.lang_dim is {cfg.lang_dim}")

  cameras = networks.cameras(config)
  high, extra = None, {"model_config": cfg.to_dict()}
  if config.role == "low" and config.condition.source == "high_policy":
    high_module, high_params, high_config = networks.load_policy(config.condition.high_workdir)
    high_cameras = networks.cameras(high_config)
    if high_cameras != cameras:
      raise ValueError(f"high policy {config.condition.high_workdir} sees cameras "
                       f"{list(high_cameras)}, this run {list(cameras)}: they read the same "
                       "batch")
    high_head = config.condition.high_head
    if high_head not in high_module.config.head_configs:
      raise ValueError(f"high policy {config.condition.high_workdir} has no head {high_head!r}")
    if high_module.config.head_configs[high_head].dim != cfg.condition_dim:
      raise ValueError(f"high policy head {high_head!r} predicts "
                       f"{high_module.config.head_configs[high_head].dim}-d skills, "
                       f"model.condition_dim is {cfg.condition_dim}")
    high = (high_module, high_params, high_head)
    extra["high_policy"] = {"workdir": os.path.abspath(config.condition.high_workdir),
                            "params_sha256": training.params_sha256(high_params)}

  pretrained = None
  if config.init_from:
    _, pretrained, _ = networks.load_policy(config.init_from)
    extra["init_from"] = {"workdir": os.path.abspath(config.init_from),
                          "params_sha256": training.params_sha256(pretrained)}

  def init_params(rng):
    params = module.init({"params": rng},
                         networks.example_inputs(cfg, image_size, cameras),
                         train=False)["params"]
    if pretrained is not None:
      params, _ = transfer_params(pretrained, params, source=config.init_from)
    return params

  extra["episodes"] = len(episode_ids) if episode_ids is not None else "all"
  tables = label_tables(arrays)
  del arrays  # the tables hold their own copy

  latest = checkpointer.latest_step()
  if latest is not None:
    state = checkpointer.restore(training.abstract_train_state(init_params, tx, mesh))
    logging.info("resumed from step %d", int(state.step))  # may fall back from `latest`
  else:
    state = training.create_train_state(init_params, tx, jax.random.key(config.seed), mesh)
  start_step = int(state.step)

  loss_fn = functools.partial(policy_loss, module=module, head_cfgs=head_cfgs, high=high)
  dtype = config.get("compute_dtype", "float32")
  train_step = training.make_train_step(loss_fn, tx, mesh, augment_fn=device_augment_fn(config),
                                        compute_dtype=dtype)
  eval_step = training.make_eval_step(
      lambda p, b, r: policy_loss(p, b, r, module=module, head_cfgs=head_cfgs, high=high,
                                  train=False)[1], mesh, compute_dtype=dtype)
  convert = BatchConverter(config, encoder)
  per_process = training.per_process_batch(config.batch_size)
  # Exact resume: one seeded pipeline per run; resumed at step s, skip the s batches consumed.
  train_pipe = make_pipeline(config, config.data.train_split, tables, batch_size=per_process,
                             seed=config.seed, episode_ids=episode_ids)
  train_batches = training.shard_batches(
      (convert(b) for b in train_pipe.as_numpy_iterator(skip_batches=start_step)), mesh)

  val_batches = []  # the validation batches, read once (the same ones at every evaluation)

  def eval_fn(state):
    if not config.data.val:
      return {}
    if not val_batches:
      pipe = make_pipeline(config, config.data.val_split, tables, batch_size=per_process,
                           seed=config.seed, train=False)
      val_batches.extend(training.shard_batches(
          (convert(b) for b in itertools.islice(pipe.as_numpy_iterator(),
                                                config.num_eval_batches)), mesh))
    return training.run_eval(eval_step, state.params, val_batches, jax.random.key(1),
                             num_batches=config.num_eval_batches)

  run_info.write_json_atomic(os.path.join(workdir, "policy.json"), extra)
  progress_keys = ("loss",) + tuple(
      f"{n}/accuracy" for n, h in config.heads.items() if h["kind"] == "categorical")
  return training.run_training(
      what=f"{config.role} policy (heads {list(config.heads)}, {extra['episodes']} train "
      "episodes)", state=state, train_step=train_step, batches=train_batches, config=config,
      workdir=workdir, checkpointer=checkpointer, eval_fn=eval_fn, progress_keys=progress_keys,
      checkpoint_extra=lambda: extra, early_stopping=stopping)
