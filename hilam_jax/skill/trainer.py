"""Trains the HiLAM skill model on windows of per-frame latent actions (METHOD.md section 3).

`train_and_evaluate(config, workdir)` is what `experiments/train_skill_model.py` runs. Its input is
a latent-action label folder written by `experiments/label_latent_actions.py` (a manifest plus
`<dataset>/<split>/<shard>.npz` files of z^0 keyed by episode id). Each episode's latents are cut
into windows of `config.data.window` frames (hop `config.data.window_hop`; the last window of an
episode is padded and masked), and batches of windows are drawn at random with numpy. This is the
"trajectories first" half of the pipeline without frames: latents are small, so the whole split
lives in memory and no tf.data is needed.

The reconstruction term L_rec needs the frames (I_t, I_{t+k}) of every window position and the
frozen FDM. It is a knob (`config.lambda_rec`, 0 by default for CPU speed) but NOT wired here:
`lambda_rec > 0` is refused with a clear error rather than silently ignored.

The shared core is reused unchanged (`hilam_jax.training`): one data mesh, sharded TrainState,
orbax checkpoints that carry the config (a mismatched config refuses to resume), TensorBoard
scalars, a progress line with boundary rates, NaN guard.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterator

import jax
import numpy as np
import optax
from absl import logging

from hilam_jax import run_info
from hilam_jax import training
from hilam_jax.lam import labeling
from hilam_jax.skill import losses
from hilam_jax.skill import model as skill_model


def label_shard_paths(labels_dir: str, split: str) -> list[str]:
  """Paths of the finished label shards of `split` (manifest order; missing shards are an error)."""
  with open(os.path.join(labels_dir, labeling.MANIFEST)) as f:
    manifest = json.load(f)
  rels = [r for r in manifest["shards"] if r.split(os.sep)[-2] == split]
  if not rels:
    raise ValueError(f"{labels_dir} has no label shards of split {split!r}")
  paths = [os.path.join(labels_dir, r) for r in rels]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"label shards missing (labeling unfinished?): {missing}")
  return paths


def load_split_latents(labels_dir: str, split: str) -> dict[str, np.ndarray]:
  """{episode_id: z^0 [T-k, Dz] float32} of one split of a label folder."""
  latents: dict[str, np.ndarray] = {}
  for path in label_shard_paths(labels_dir, split):
    latents.update(labeling.read_shard(path))
  return latents


def window_starts(length: int, window: int, hop: int) -> list[int]:
  """Start frames of the windows covering an episode of `length` frames (the last may be short)."""
  if length <= window:
    return [0]
  starts = list(range(0, length - window + 1, hop))
  if starts[-1] + window < length:
    starts.append(starts[-1] + hop)
  return starts


def make_windows(latents: dict[str, np.ndarray], window: int,
                 hop: int) -> tuple[np.ndarray, np.ndarray]:
  """All windows of all episodes (sorted ids): latents [N, window, Dz] float32, mask [N, window]."""
  rows, masks = [], []
  for episode_id in sorted(latents):
    z = np.asarray(latents[episode_id], np.float32)
    if len(z) < 2:  # no (t, t+1) pair to predict
      continue
    for start in window_starts(len(z), window, hop):
      piece = z[start:start + window]
      pad = window - len(piece)
      rows.append(np.pad(piece, ((0, pad), (0, 0))))
      masks.append(np.arange(window) < len(piece))
  if not rows:
    raise ValueError("no episode with at least 2 latents")
  return np.stack(rows), np.stack(masks)


def random_batches(windows: tuple[np.ndarray, np.ndarray], batch_size: int,
                   seed: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches {"latents", "mask"} of windows drawn uniformly (with a numpy RNG)."""
  latents, mask = windows
  rng = np.random.default_rng(seed)
  while True:
    index = rng.integers(0, len(latents), batch_size)
    yield {"latents": latents[index], "mask": mask[index]}


def make_optimizer(config: Any) -> optax.GradientTransformation:
  """AdamW with warmup + cosine decay and global-norm clipping (optimiser is OPEN in the paper)."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps, max(config.num_steps, config.warmup_steps + 1),
      end_value=config.learning_rate * 0.1)
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.inject_hyperparams(optax.adamw)(learning_rate=schedule,
                                           weight_decay=config.weight_decay))


def _loss(params, batch, rng, *, module, lambda_ratio):
  return losses.skill_loss(params, module, batch, rng, lambda_rec=0.0,
                           lambda_ratio=lambda_ratio)


def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
  """Trains (or resumes) a skill model in `workdir`; returns the final eval metrics."""
  if config.lambda_rec:
    raise NotImplementedError(
        "lambda_rec > 0: the frozen-FDM reconstruction term needs frames per window position, "
        "which this trainer does not load yet (losses.skill_loss supports it given frame_t/"
        "frame_tk); train with lambda_rec=0")
  os.makedirs(workdir, exist_ok=True)
  run_info.write_run_info(workdir, config)
  model_config = skill_model.SkillModelConfig.from_dict(dict(config.model))
  module = skill_model.SkillModel(model_config)
  window, hop = config.data.window, config.data.window_hop
  mesh = training.make_mesh()
  tx = make_optimizer(config)

  train_latents = load_split_latents(config.data.labels_dir, config.data.train_split)
  dims = {z.shape[-1] for z in train_latents.values()}
  if dims != {model_config.latent_dim}:
    raise ValueError(f"labels have latent dims {dims}, model.latent_dim is "
                     f"{model_config.latent_dim}")
  train_windows = make_windows(train_latents, window, hop)
  val_windows = make_windows(load_split_latents(config.data.labels_dir, config.data.val_split),
                             window, hop)
  logging.info("skill model data: %d train windows, %d val windows of %d frames",
               len(train_windows[0]), len(val_windows[0]), window)

  def init_params(rng):
    return skill_model.SkillModel(model_config).init(
        rng, np.zeros((1, window, model_config.latent_dim), np.float32),
        np.ones((1, window), bool))["params"]

  checkpointer = training.Checkpointer(
      os.path.join(workdir, "checkpoints"), config, max_to_keep=2,
      save_interval_steps=config.checkpoint_every, allowed_config_changes=("num_steps",))
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(training.abstract_train_state(init_params, tx, mesh))
    logging.info("resumed from step %d", int(state.step))
  else:
    state = training.create_train_state(init_params, tx, jax.random.key(config.seed), mesh)
  start_step = int(state.step)

  loss_fn = functools.partial(_loss, module=module, lambda_ratio=config.lambda_ratio)
  train_step = training.make_train_step(loss_fn, tx, mesh)
  eval_step = training.make_eval_step(lambda p, b, r: loss_fn(p, b, r)[1], mesh)

  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size {config.batch_size} not divisible by {jax.process_count()} "
                     "processes")
  per_process = config.batch_size // jax.process_count()
  # Each process draws from its own seed; a resumed run draws under a new one (no replay).
  seed = config.seed + 1000 * jax.process_index() + start_step
  train_batches = training.shard_batches(random_batches(train_windows, per_process, seed), mesh)

  def eval_fn(state):
    val_batches = training.shard_batches(
        random_batches(val_windows, per_process, config.seed + 7), mesh)
    return training.run_eval(eval_step, state.params, val_batches, jax.random.key(1),
                             num_batches=config.num_eval_batches)

  writer = training.MetricWriter(os.path.join(workdir, "tensorboard"))
  logging.info("training skill model (%s params) for %d steps, batch %d on %d devices",
               f"{sum(x.size for x in jax.tree.leaves(state.params)):,}", config.num_steps,
               config.batch_size, jax.device_count())
  state = training.train_loop(
      state=state, train_step=train_step, batches=train_batches, num_steps=config.num_steps,
      checkpointer=checkpointer, writer=writer, log_every=config.log_every,
      eval_every=config.eval_every, eval_fn=eval_fn,
      progress_keys=("loss", "latent_l1", "boundary_rate/s1", "boundary_rate/s2"))
  return training.finish_run(state, eval_fn, writer, checkpointer)
