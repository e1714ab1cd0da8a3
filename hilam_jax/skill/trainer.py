"""Trains the HiLAM skill model on windows of per-frame latent actions (METHOD.md section 3).

`train_and_evaluate(config, workdir)` is what `experiments/train_skill_model.py` runs. Its input is
a latent-action label folder written by `experiments/label_latent_actions.py` (a manifest plus
`<dataset>/<split>/<shard>.npz` files of z^0 keyed by episode id). Each episode's latents are cut
into windows of `config.data.window` frames (hop `config.data.window_hop`; the last window of an
episode is padded and masked). Windows are read as a stream (`hilam_jax.skill.window_stream`):
label shards one at a time in a seeded order per epoch, through a shuffle buffer of
`config.data.shuffle_buffer` windows, into batches; memory holds one shard and the buffer, not
the corpus. The stream is deterministic, and a run resumed at step s reads it again from the
start and skips s batches (exact resume). Validation reads the val split the same way (a fresh
stream of its own seed at every evaluation). `data.normalize = "zscore"` statistics come from one
streaming pass over the train shards.

With `config.lambda_rec > 0` the reconstruction term L_rec also needs frames and the frozen LAM
(`config.frozen_model`, default: the LAM named in the label manifest; its k and latent size must
match the manifest's). Each label shard is then read together with the RLDS shard file it
labels (through `data_pipeline.reader`, decoded at the LAM's image size), joined by episode id;
each window draws `config.data.rec_positions` random positions t >= 1 when it is read and keeps
only their pairs (I_t, I_{t+k}): the FDM runs on B * rec_positions pairs per step instead of
B * L (the CPU-heavy part), and a buffered window holds 2 * rec_positions frames.

The in-memory readers (`load_split_latents`, `load_split_frames`, with `make_windows` and
`make_window_frames`) remain as the plain reference the stream is tested against, and for small
analyses; the stream cuts each episode with the same functions.

The shared core is reused unchanged (`hilam_jax.training`): one data mesh, sharded TrainState,
orbax checkpoints that carry the config (a mismatched config refuses to resume), TensorBoard
scalars, a progress line with boundary rates, NaN guard.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
from typing import Any, Iterable, Mapping, Optional, Union

import jax
import numpy as np
from absl import logging

from data_pipeline import run_info
from data_pipeline import statistics
from hilam_jax import training
from hilam_jax.lam import frozen_models
from hilam_jax.lam import interface
from hilam_jax.lam import labeling
from hilam_jax.skill import losses
from hilam_jax.skill import model as skill_model
from hilam_jax.skill import window_stream
# Window helpers, defined with the stream that uses them (names kept here for callers).
from hilam_jax.skill.window_stream import (  # pylint: disable=unused-import
    EpisodeFrames, WindowFrames, label_shard_paths, make_window_frames, make_windows,
    sample_frame_pairs, window_starts)


def load_split_latents(labels_dir: str, split: str) -> dict[str, np.ndarray]:
  """{episode_id: z^0 [T-k, Dz] float32} of one split of a label folder."""
  latents: dict[str, np.ndarray] = {}
  for path in label_shard_paths(labels_dir, split):
    latents.update(labeling.read_shard(path))
  return latents


NORMALIZATION_FILE = "latent_normalization.json"
# Config keys a resumed run may change: a longer run, and skipping corrupted records (turned on
# after one was found; also absent from checkpoints written before the option existed).
# The shuffle buffer too: absent from checkpoints written before the stream existed (their
# batches were drawn otherwise, so such a resume is not exact anyway).
ALLOWED_CHANGES = ("num_steps", "data.skip_corrupted", "data.shuffle_buffer")
DEFAULT_SHUFFLE_BUFFER = 4096

Latents = Union[Mapping[str, np.ndarray], Iterable[np.ndarray]]


def latent_statistics(latents: Latents) -> dict[str, list[float]]:
  """Per-dimension mean and std (floored at 1e-6) over every frame of every episode.

  `latents`: {episode_id: [T, Dz]} or any iterable of [rows, Dz] arrays (e.g. one per label
  shard, `window_stream.iter_shard_latents`): one pass, one array in memory at a time."""
  arrays = iter(latents.values() if isinstance(latents, Mapping) else latents)
  first = next(arrays, None)
  if first is None:
    raise ValueError("latent statistics need at least one episode's latents; got none")
  mean, std = statistics.per_dimension_mean_std(
      itertools.chain([first], arrays), np.shape(first)[-1])
  return {"mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist()}


def normalize_latents(latents: dict[str, np.ndarray],
                      stats: Optional[dict[str, list[float]]]) -> dict[str, np.ndarray]:
  """(z - mean) / std per dimension (float32); `stats` None returns the latents unchanged."""
  if stats is None:
    return latents
  mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
  return {e: (np.asarray(z, np.float32) - mean) / std for e, z in latents.items()}


def resolve_normalization(config: Any, workdir: str,
                          train_latents: Optional[Latents] = None
                          ) -> Optional[dict[str, list[float]]]:
  """The latent normalisation of a run: None for `data.normalize` "none" (or unset); for
  "zscore" the train split's per-dimension mean / std, computed from `train_latents` (a dict or
  an iterable of arrays, `latent_statistics`; read only when the file is missing) and written
  to <workdir>/latent_normalization.json on the first call, read from there afterwards (so
  extraction applies exactly the statistics the model was trained with)."""
  mode = config.get("data", {}).get("normalize", "none") or "none"
  if mode == "none":
    return None
  if mode != "zscore":
    raise ValueError(f"data.normalize={mode!r}: expected 'none' or 'zscore'")
  path = os.path.join(workdir, NORMALIZATION_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  if train_latents is None:
    raise FileNotFoundError(f"{path} missing: data.normalize='zscore' needs the statistics the "
                            "model was trained with")
  stats = latent_statistics(train_latents)
  run_info.write_json_atomic(path, stats)
  return stats


def load_split_frames(labels_dir: str, split: str, image_size: tuple[int, int],
                      episode_ids: set[str], skip_corrupted: bool = False) -> EpisodeFrames:
  """Frames of the labelled episodes of `split`, read from the datasets named in the manifest.

  A corrupted record raises `CorruptedRecordError` naming its file; with `skip_corrupted` only
  intact records are read and the episodes of the others are left out (with a warning).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from data_pipeline import dataset as dp  # pylint: disable=g-import-not-at-top
  from data_pipeline import frame_transforms as ft  # pylint: disable=g-import-not-at-top
  from data_pipeline import reader  # pylint: disable=g-import-not-at-top

  with open(os.path.join(labels_dir, labeling.MANIFEST)) as f:
    manifest = json.load(f)
  specs = [d for d in manifest["datasets"] if d.get("split", "train") == split]
  if not specs:
    raise ValueError(f"label manifest of {labels_dir} names no dataset of split {split!r}")
  size = tuple(int(s) for s in image_size)
  per_episode: dict[str, np.ndarray] = {}
  for spec in specs:
    source = reader.get_source(spec["dataset_dir"], spec.get("name"), split)
    ds = reader.read_trajectories(spec["dataset_dir"], source=source,
                                  skip_corrupted=skip_corrupted)
    ds = ds.map(lambda t: (t["episode_id"][0],
                           ft.decode_images(t["observation"]["image_primary"], size)),
                num_parallel_calls=tf.data.AUTOTUNE).with_options(dp.pipeline_options())
    try:
      for episode_id, frames in ds.as_numpy_iterator():
        episode_id = episode_id.decode()
        if episode_id in episode_ids:
          per_episode[episode_id] = frames
    except tf.errors.DataLossError:
      reader.raise_for_corruption(source.files, source.shard_lengths)
      raise
  missing = sorted(episode_ids - set(per_episode))
  if missing and skip_corrupted:
    logging.warning("%d labelled episodes of split %r are in unreadable records (skipped), "
                    "e.g. %s", len(missing), split, missing[:3])
  elif missing:
    raise ValueError(f"{len(missing)} labelled episodes of split {split!r} not found in the "
                     f"manifest's datasets, e.g. {missing[:3]}")
  order = sorted(per_episode)
  lengths = {e: len(per_episode[e]) for e in order}
  starts = np.concatenate([[0], np.cumsum([lengths[e] for e in order])[:-1]]).astype(int)
  frames = np.concatenate([per_episode[e] for e in order])  # [F, H, W, 3]
  return EpisodeFrames(frames, dict(zip(order, starts.tolist())), lengths)


def _loss(params, batch, rng, *, module, lambda_ratio, lambda_rec, frozen_lam, lambda_aux=0.0,
          lambda_latent=1.0, ratio_per_sequence=False):
  return losses.skill_loss(params, module, batch, rng, frozen_lam=frozen_lam,
                           lambda_rec=lambda_rec, lambda_ratio=lambda_ratio,
                           lambda_aux=lambda_aux, lambda_latent=lambda_latent,
                           ratio_per_sequence=ratio_per_sequence)


def make_loss_fn(config: Any, module: skill_model.SkillModel,
                 frozen_lam: Optional[interface.FrozenDynamicsModel] = None):
  """The train step's loss `(params, batch, rng) -> (loss, metrics)`: `losses.skill_loss` with the
  config's weights (also what `experiments/device_check.py` times). frozen_lam: the frozen
  model of L_rec, None without it."""
  return functools.partial(_loss, module=module, lambda_ratio=config.lambda_ratio,
                           lambda_rec=config.lambda_rec, frozen_lam=frozen_lam,
                           lambda_aux=config.get("lambda_aux", 0.0),
                           lambda_latent=config.get("lambda_latent", 1.0),
                           ratio_per_sequence=bool(config.get("ratio_per_sequence", False)))


def resolve_frozen_lam(config: Any) -> interface.FrozenDynamicsModel:
  """The frozen model for L_rec: `config.frozen_model` (`frozen_models.load_frozen_model` spec),
  else the LAM the label manifest names.

  Its frame gap k and latent size must be those of the labels (else the pairs would not be the
  ones the latents describe).
  """
  with open(os.path.join(config.data.labels_dir, labeling.MANIFEST)) as f:
    manifest = json.load(f)
  spec = config.get("frozen_model")
  if not spec:
    checkpoint_dir = manifest.get("lam", {}).get("checkpoint_dir")
    if not checkpoint_dir:
      raise ValueError(f"lambda_rec > 0: set config.frozen_model (the label manifest of "
                       f"{config.data.labels_dir} names no LAM checkpoint)")
    spec = f"{frozen_models.LAM_SCHEME}:{os.path.dirname(checkpoint_dir)}"
  lam = frozen_models.load_frozen_model(spec)
  check_lam_matches_labels(lam, manifest)
  logging.info("L_rec: frozen model %s (k = %d, image size %s)", spec, lam.frame_gap,
               lam.image_size)
  return lam


def check_lam_matches_labels(lam: interface.FrozenDynamicsModel, manifest: dict) -> None:
  if lam.frame_gap != manifest["frame_gap"] or lam.latent_dim != manifest["latent_dim"]:
    raise ValueError(f"frozen LAM (k={lam.frame_gap}, Dz={lam.latent_dim}) does not match the "
                     f"labels (k={manifest['frame_gap']}, Dz={manifest['latent_dim']})")


def check_objective(config: Any) -> None:
  """Refuses objective settings that cannot work together (before any data is read); warns
  about a frozen model that the objective does not use."""
  if config.lambda_rec and config.data.get("normalize", "none") == "zscore":
    raise ValueError("data.normalize='zscore' with lambda_rec > 0 is not supported: the "
                     "frozen FDM decodes raw latents")
  if not config.lambda_rec and config.get("frozen_model"):
    logging.warning("frozen_model=%r is not used: it serves only L_rec, and lambda_rec is 0 "
                    "(set lambda_rec > 0 to train with it).", config.frozen_model)


def check_inputs(config: Any) -> None:
  """The label folder has a manifest; with L_rec the datasets it names (the frames) exist."""
  manifest_path = os.path.join(config.data.labels_dir, labeling.MANIFEST)
  if not os.path.exists(manifest_path):
    raise FileNotFoundError(f"config.data.labels_dir {config.data.labels_dir!r}: no label "
                            f"manifest {labeling.MANIFEST} (labeling not run or unfinished?)")
  if config.lambda_rec:
    from data_pipeline import dataset as dp  # pylint: disable=g-import-not-at-top
    with open(manifest_path) as f:
      manifest = json.load(f)
    dp.check_datasets([{"dataset_dir": d["dataset_dir"], "name": d.get("name"),
                        "split": d.get("split", "train")} for d in manifest.get("datasets", [])
                       if d.get("split", "train") in (config.data.train_split,
                                                      config.data.val_split)])


def parameter_level(path) -> int:
  """The sequence level a skill-model parameter works at (0 = frames): how deep it sits in the
  stage recursion, i.e. how many "main" modules its path passes (stage s's main network is
  stage s + 1, the innermost one the transformer at level num_stages)."""
  return sum(1 for key in path if getattr(key, "key", None) == "main")


def hnet_level_lr_multipliers(model_config: skill_model.SkillModelConfig) -> tuple[float, ...]:
  """H-Net's learning-rate modulation (Hwang et al. 2025, appendix: lambda^s = sqrt(N^s D^S /
  D^s) with N^s the downsampling from level s to the innermost level): outer levels, which see
  more positions at a smaller width, learn faster. Relative to the innermost level (1.0); e.g.
  widths (64, 96, 128), N = (3, 3): (4.24, 2.0, 1.0)."""
  widths, ratios = model_config.widths, model_config.target_ratios
  multipliers = []
  for level in range(len(widths)):
    downsampling = float(np.prod(ratios[level:])) if level < len(ratios) else 1.0
    multipliers.append(float(np.sqrt(downsampling * widths[-1] / widths[level])))
  return tuple(multipliers)


def level_lr_multipliers(config: Any, model_config: skill_model.SkillModelConfig
                         ) -> tuple[float, ...] | None:
  """`config.level_lr_multipliers`: "" (one rate for every parameter), "hnet"
  (`hnet_level_lr_multipliers`) or one multiplier per sequence level, outermost first, comma-
  separated ("1,0.5,0.25" for widths of 3 levels). Refused with the expected form when
  malformed; None when off."""
  spec = str(config.get("level_lr_multipliers", "") or "").strip()
  if not spec:
    return None
  if spec == "hnet":
    return hnet_level_lr_multipliers(model_config)
  levels = len(model_config.widths)
  try:
    multipliers = tuple(float(m) for m in spec.split(","))
  except ValueError:
    multipliers = ()
  if len(multipliers) != levels or min(multipliers) < 0:
    raise ValueError(f"level_lr_multipliers={spec!r}: expected '', 'hnet' or {levels} "
                     "comma-separated numbers >= 0, one per level of model.widths (outermost "
                     "first)")
  return multipliers


def level_update_scale(multipliers: tuple[float, ...] | None):
  """`training.make_optimizer`'s update_scale for per-level rates (None: no scaling). Scaling a
  level's AdamW updates (weight decay included) is that level's learning rate times the
  multiplier."""
  if multipliers is None:
    return None
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: multipliers[parameter_level(path)], params)


@training.releases_workdir_locks
def train_and_evaluate(config: Any, workdir: str,
                       frozen_lam: Optional[interface.FrozenDynamicsModel] = None
                       ) -> dict[str, float]:
  """Trains (or resumes) a skill model in `workdir`; returns the final eval metrics.

  The config, the label folder (and with L_rec the datasets it names) and a resumed run's
  stored config are checked before anything is built or written (a refused run leaves the
  workdir as it was).

  Args:
    config: see experiments/configs/train_skill_model.py.
    workdir: checkpoints, TensorBoard logs, run_info.json.
    frozen_lam: the frozen model for L_rec (tests); None loads `resolve_frozen_lam(config)` when
      `config.lambda_rec > 0`. Unused when lambda_rec == 0.
  """
  training.check_run_config(config)
  check_objective(config)
  check_inputs(config)
  model_config = skill_model.SkillModelConfig.from_dict(dict(config.model))
  lr_multipliers = level_lr_multipliers(config, model_config)
  labels_dir = config.data.labels_dir
  manifest = window_stream.read_manifest(labels_dir)
  if manifest.get("latent_dim") not in (None, model_config.latent_dim):
    raise ValueError(f"labels have latent dim {manifest['latent_dim']}, model.latent_dim is "
                     f"{model_config.latent_dim}")
  if config.lambda_rec:  # a missing or mismatched frozen model is refused before any write
    if frozen_lam is None:
      frozen_lam = resolve_frozen_lam(config)
    else:
      check_lam_matches_labels(frozen_lam, manifest)
  else:
    frozen_lam = None
  training.lock_workdir(workdir)  # before anything is written; refuses a second run
  os.makedirs(workdir, exist_ok=True)
  checkpointer = training.Checkpointer(
      os.path.join(workdir, "checkpoints"), config, max_to_keep=2,
      save_interval_steps=config.checkpoint_every, allowed_config_changes=ALLOWED_CHANGES)
  run_info.write_run_info(workdir, config)
  module = skill_model.SkillModel(model_config)
  window, hop = config.data.window, config.data.window_hop
  mesh = training.make_mesh()
  tx = training.make_optimizer(config, update_scale=level_update_scale(lr_multipliers))
  if lr_multipliers is not None:
    logging.info("learning rate per level (outermost first): %s x %g", lr_multipliers,
                 config.learning_rate)

  per_process = training.per_process_batch(config.batch_size)
  normalization = resolve_normalization(
      config, workdir, window_stream.iter_shard_latents(
          window_stream.split_units(labels_dir, config.data.train_split)))
  if normalization is not None:
    logging.info("z-scoring latents per dimension (train std %s)",
                 np.round(normalization["std"], 3).tolist())
  frames = None
  if frozen_lam is not None:
    frames = window_stream.FrameSpec(
        tuple(frozen_lam.image_size), frozen_lam.frame_gap,
        min(config.data.rec_positions or window, window),
        skip_corrupted=bool(config.data.get("skip_corrupted", False)))
  units = {split: window_stream.split_units(labels_dir, split, with_frames=frames is not None)
           for split in (config.data.train_split, config.data.val_split)}
  counts = {split: window_stream.count_windows(u, window, hop) for split, u in units.items()}
  for split, (episodes, windows) in counts.items():
    if not windows:
      raise ValueError(f"split {split!r} of {labels_dir}: no episode with at least 2 latents")
  buffer_size = int(config.data.get("shuffle_buffer", DEFAULT_SHUFFLE_BUFFER))
  logging.info("skill model data (streamed, shuffle buffer %d windows): %s of %d frames%s",
               buffer_size, ", ".join(f"{split} {w:,} windows of {e:,} episodes"
                                      for split, (e, w) in counts.items()), window,
               f"; L_rec: {frames.rec_positions} frame pairs of {frames.image_size} per window"
               if frames is not None else "")

  # data.global_order: every process streams every shard with the same seed and keeps its rows
  # of each global batch (batches independent of the process count); otherwise each process
  # streams its own share of the training shards.
  global_order = bool(config.data.get("global_order", False))
  processes, index = jax.process_count(), jax.process_index()

  def stream(split, seed, start=0):
    shards = units[split]
    if not global_order and split == config.data.train_split and len(shards) >= processes:
      shards = shards[index::processes]  # this process's share
    size = per_process * processes if global_order else per_process
    # A buffer beyond one epoch's windows would only hold repeats (and delay the first batch).
    batches = window_stream.batches(
        shards, batch_size=size, seed=seed,
        buffer_size=min(buffer_size, counts[split][1]), window=window,
        hop=hop, latent_dim=model_config.latent_dim, frames=frames, normalization=normalization,
        start=start)
    if global_order and processes > 1:
      rows = slice(index * per_process, (index + 1) * per_process)
      batches = (jax.tree.map(lambda x: x[rows], batch) for batch in batches)
    return batches

  def init_params(rng):
    return skill_model.SkillModel(model_config).init(
        rng, np.zeros((1, window, model_config.latent_dim), np.float32),
        np.ones((1, window), bool))["params"]

  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(training.abstract_train_state(init_params, tx, mesh))
    logging.info("resumed from step %d", int(state.step))
  else:
    state = training.create_train_state(init_params, tx, jax.random.key(config.seed), mesh)
  start_step = int(state.step)

  loss_fn = make_loss_fn(config, module, frozen_lam)
  dtype = config.get("compute_dtype", "float32")
  train_step = training.make_train_step(loss_fn, tx, mesh, compute_dtype=dtype)
  eval_step = training.make_eval_step(lambda p, b, r: loss_fn(p, b, r)[1], mesh,
                                      compute_dtype=dtype)

  # Each process reads its own share of the shards with its own seed (with global_order: all of
  # them, one seed); a run resumed at step s continues the same stream at batch s (exact resume).
  seed = config.seed if global_order else config.seed + 1000 * index
  train_batches = training.shard_batches(
      stream(config.data.train_split, seed, start=start_step), mesh)

  def eval_fn(state):
    val_batches = training.shard_batches(stream(config.data.val_split, config.seed + 7), mesh)
    return training.run_eval(eval_step, state.params, val_batches, jax.random.key(1),
                             num_batches=config.num_eval_batches)

  return training.run_training(
      what="skill model", state=state, train_step=train_step, batches=train_batches,
      config=config, workdir=workdir, checkpointer=checkpointer, eval_fn=eval_fn,
      progress_keys=("loss", "latent_l1") + (("rec",) if frozen_lam is not None else ())
      + ("boundary_rate/s1", "boundary_rate/s2"))
