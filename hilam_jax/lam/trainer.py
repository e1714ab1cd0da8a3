"""Trains the stage-0 latent action model on frame pairs (t, t+k) from RLDS video.

`train_and_evaluate(config, workdir)` is what `experiments/train_lam.py` runs. It reuses the shared
training core unchanged (`hilam_jax.training`): one data mesh over all devices of all processes,
each process reading a disjoint share of the episodes; orbax checkpoints that carry the config;
TensorBoard scalars (losses, latent statistics, z gain, steps/s); progress with ETA; NaN guard.

Checkpoint layout (`<workdir>/checkpoints`): the trainer's composite items, with the config JSON
holding `lam` (the `LAMConfig` dict), `data.frame_gap` and `data.image_size`, so that
`load_frozen_lam(workdir)` rebuilds the frozen model from the checkpoint alone.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from data_pipeline import dataset as dp
from data_pipeline import frame_transforms as ft
from data_pipeline import run_info
from hilam_jax import training
from hilam_jax.lam import frozen_lam
from hilam_jax.training import augment as augment_lib
from hilam_jax.lam import losses
from hilam_jax.lam import model as lam_model

PAIR_KEYS = ("observation/image_primary", "next_observation/image_primary")
# Config keys a resumed run may change: a longer run, and skipping corrupted records (turned on
# after one was found; also absent from checkpoints written before the option existed).
# Where augmentation runs (`data.augment_on`) may change too: the same transforms either way.
ALLOWED_CHANGES = ("num_steps", "data.skip_corrupted", "data.augment_on")


def pair_pipeline(config: Any, split_key: str, *, seed: int, repeat: bool,
                  batch_size: int, shuffle_buffer: int | None = None,
                  extra_keys: tuple[str, ...] = ()) -> dp.Pipeline:
  """Frame pairs (t, t+k) of this process's share of `config.data.<split_key>` datasets.

  Augmented here only with `data.augment_on="host"`; on the device (the default) the train step
  does it (`augment_config`) and validation pairs are not augmented.
  """
  data = config.data
  augment = augment_config(config) if augment_lib.placement(data) == "host" else None
  transforms = dp.TransformConfig(
      frame_pair_k=data.frame_gap, resize=tuple(data.image_size), augment=augment,
      keys=PAIR_KEYS + tuple(extra_keys))
  return dp.make_dataset(
      [dict(d) for d in data[split_key]], batch_size=batch_size, transforms=transforms,
      shuffle_buffer=data.shuffle_buffer if shuffle_buffer is None else shuffle_buffer,
      seed=seed, repeat=repeat, process_index=jax.process_index(),
      process_count=jax.process_count(), skip_corrupted=bool(data.get("skip_corrupted", False)),
      global_order=bool(data.get("global_order", False)))


def augment_config(config: Any) -> ft.AugmentConfig | None:
  """The transforms of `config.data.augment` (None: a dict of `AugmentConfig` fields), or None."""
  data = config.data
  return ft.AugmentConfig(**data.augment) if data.get("augment") else None


def device_augment_fn(config: Any):
  """The train step's `augment_fn` (both frames of a pair get one draw), or None when
  augmentation is off or runs on the host."""
  if augment_lib.placement(config.data) != "device":
    return None
  return augment_lib.make_augment_fn(
      augment_config(config), lambda b: (b["frame_t"], b["frame_tk"]),
      lambda b, images: dict(b, frame_t=images[0], frame_tk=images[1]))


def to_model_batch(batch: dict) -> dict:
  """Pipeline batch -> {"frame_t", "frame_tk"} uint8 [B, H, W, 3] (strings dropped)."""
  return {"frame_t": batch["observation"]["image_primary"],
          "frame_tk": batch["next_observation"]["image_primary"]}


@training.releases_workdir_locks
def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
  """Trains (or resumes) a LAM in `workdir`; returns the final eval metrics.

  The config, the datasets and a resumed run's stored config are checked before anything is
  built or written (a refused run leaves the workdir as it was).
  """
  training.check_run_config(config)
  lam_config = lam_model.LAMConfig.from_dict(dict(config.lam))
  image_size = tuple(config.data.image_size)
  if any(s % lam_config.total_stride for s in image_size):
    raise ValueError(f"image_size {image_size} must be divisible by the LAM's total stride "
                     f"{lam_config.total_stride}")
  dp.check_datasets([dict(d) for d in (*config.data.train, *config.data.val)])
  training.lock_workdir(workdir)  # before anything is written; refuses a second run
  os.makedirs(workdir, exist_ok=True)
  checkpointer = training.Checkpointer(
      os.path.join(workdir, "checkpoints"), config, max_to_keep=2,
      save_interval_steps=config.checkpoint_every, allowed_config_changes=ALLOWED_CHANGES)
  run_info.write_run_info(workdir, config)
  module = lam_model.LatentActionModel(lam_config)
  mesh = training.make_mesh()
  tx = training.make_optimizer(config)

  def init_params(rng):
    frames = jnp.zeros((1, *image_size, 3), jnp.uint8)
    return module.init(rng, frames, frames)["params"]

  rng = jax.random.key(config.seed)
  latest = checkpointer.latest_step()
  if latest is not None:
    state = checkpointer.restore(training.abstract_train_state(init_params, tx, mesh))
    logging.info("resumed from step %d", int(state.step))  # may fall back from `latest`
  else:
    state = training.create_train_state(init_params, tx, rng, mesh)
  start_step = int(state.step)

  loss_fn = functools.partial(_loss, module=module)
  dtype = config.get("compute_dtype", "float32")
  train_step = training.make_train_step(loss_fn, tx, mesh, augment_fn=device_augment_fn(config),
                                        compute_dtype=dtype)
  eval_step = training.make_eval_step(lambda p, b, r: _loss(p, b, r, module=module)[1], mesh,
                                      compute_dtype=dtype)

  per_process = training.per_process_batch(config.batch_size)
  # Exact resume: one seeded pipeline for the whole run; a run resumed at step s skips the s
  # batches the steps before it consumed (one per step), so it trains on the same batches.
  train_pipe = pair_pipeline(config, "train", seed=config.seed, repeat=True,
                             batch_size=per_process)
  train_batches = training.shard_batches(
      (to_model_batch(b) for b in train_pipe.as_numpy_iterator(skip_batches=start_step)), mesh)

  def eval_fn(state):
    val_pipe = pair_pipeline(config, "val", seed=config.seed, repeat=True,
                             batch_size=per_process, shuffle_buffer=1000)
    val_batches = training.shard_batches(
        (to_model_batch(b) for b in val_pipe.as_numpy_iterator()), mesh)
    return training.run_eval(eval_step, state.params, val_batches, jax.random.key(1),
                             num_batches=config.num_eval_batches)

  return training.run_training(
      what="LAM", state=state, train_step=train_step, batches=train_batches, config=config,
      workdir=workdir, checkpointer=checkpointer, eval_fn=eval_fn,
      progress_keys=("loss", "z_gain", "z_var/mean"))


def _loss(params, batch, rng, *, module):
  return losses.lam_loss(params, module, batch, rng)


def _lam_checkpoint_config(workdir: str, step: int | None) -> dict[str, Any]:
  """The stored config of a LAM checkpoint; another model's workdir is refused by name."""
  config = training.load_checkpoint_config(os.path.join(workdir, "checkpoints"), step)
  if "lam" not in config or "frame_gap" not in config.get("data", {}):
    raise ValueError(f"{workdir} is not a LAM workdir (train_lam): its checkpoint config has "
                     f"{sorted(config)} but no 'lam' model config; a frozen model is "
                     "'lam:<train_lam workdir>' or 'uniskill:<converted dir>'")
  return config


def load_frozen_lam(workdir: str, step: int | None = None) -> frozen_lam.FrozenLAM:
  """The trained LAM of `workdir` as a `FrozenLAM` (config and params from the checkpoint)."""
  directory = os.path.join(workdir, "checkpoints")
  config = _lam_checkpoint_config(workdir, step)
  params = training.restore_params(directory, step=step)
  return frozen_lam.FrozenLAM.from_config(config["lam"], params,
                                          frame_gap=config["data"]["frame_gap"],
                                          image_size=tuple(config["data"]["image_size"]))


def checkpoint_fingerprint(workdir: str, step: int | None = None) -> dict[str, Any]:
  """Identifies a LAM checkpoint: directory, hash of its parameters, config (label manifests)."""
  directory = os.path.join(workdir, "checkpoints")
  config = _lam_checkpoint_config(workdir, step)
  return {"checkpoint_dir": os.path.abspath(directory),
          "params_sha256": training.params_sha256(training.restore_params(directory, step=step)),
          "lam": config["lam"], "frame_gap": config["data"]["frame_gap"],
          "image_size": list(config["data"]["image_size"])}
