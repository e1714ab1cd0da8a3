"""Trains the HiLAM skill model on windows of per-frame latent actions (METHOD.md section 3).

`train_and_evaluate(config, workdir)` is what `experiments/train_skill_model.py` runs. Its input is
a latent-action label folder written by `experiments/label_latent_actions.py` (a manifest plus
`<dataset>/<split>/<shard>.npz` files of z^0 keyed by episode id). Each episode's latents are cut
into windows of `config.data.window` frames (hop `config.data.window_hop`; the last window of an
episode is padded and masked), and batches of windows are drawn at random with numpy. This is the
"trajectories first" half of the pipeline without frames: latents are small, so the whole split
lives in memory and no tf.data is needed.

With `config.lambda_rec > 0` the reconstruction term L_rec also needs frames and the frozen LAM
(`config.frozen_model`, default: the LAM named in the label manifest; its k and latent size must
match the manifest's). The frames of the labelled episodes are read once through the data
pipeline (`data_pipeline.reader` on the manifest's datasets), resized to the LAM's image size and
kept in memory as one uint8 array [F, H, W, 3] (BabyAI train at 56x56: ~85k frames, ~0.8 GB);
windows carry the index of I_t for each of their positions. Each batch window draws
`config.data.rec_positions` random positions t >= 1 and gets their pairs (I_t, I_{t+k}): the FDM
runs on B * rec_positions pairs per step instead of B * L (the CPU-heavy part).

The shared core is reused unchanged (`hilam_jax.training`): one data mesh, sharded TrainState,
orbax checkpoints that carry the config (a mismatched config refuses to resume), TensorBoard
scalars, a progress line with boundary rates, NaN guard.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
from typing import Any, Iterator, Optional

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


NORMALIZATION_FILE = "latent_normalization.json"
# Config keys a resumed run may change: a longer run, and skipping corrupted records (turned on
# after one was found; also absent from checkpoints written before the option existed).
ALLOWED_CHANGES = ("num_steps", "data.skip_corrupted")


def latent_statistics(latents: dict[str, np.ndarray]) -> dict[str, list[float]]:
  """Per-dimension mean and std (floored at 1e-6) over every frame of every episode."""
  if not latents:
    raise ValueError("latent statistics need at least one episode's latents; got none")
  dim = np.shape(next(iter(latents.values())))[-1]
  mean, std = statistics.per_dimension_mean_std(latents.values(), dim)
  return {"mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist()}


def normalize_latents(latents: dict[str, np.ndarray],
                      stats: Optional[dict[str, list[float]]]) -> dict[str, np.ndarray]:
  """(z - mean) / std per dimension (float32); `stats` None returns the latents unchanged."""
  if stats is None:
    return latents
  mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
  return {e: (np.asarray(z, np.float32) - mean) / std for e, z in latents.items()}


def resolve_normalization(config: Any, workdir: str,
                          train_latents: Optional[dict[str, np.ndarray]] = None
                          ) -> Optional[dict[str, list[float]]]:
  """The latent normalisation of a run: None for `data.normalize` "none" (or unset); for
  "zscore" the train split's per-dimension mean / std, computed from `train_latents` and written
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


def window_starts(length: int, window: int, hop: int) -> list[int]:
  """Start frames of the windows covering an episode of `length` frames (the last may be short)."""
  if length <= window:
    return [0]
  starts = list(range(0, length - window + 1, hop))
  if starts[-1] + window < length:
    starts.append(starts[-1] + hop)
  return starts


def _window_origins(latents: dict[str, np.ndarray], window: int,
                    hop: int) -> list[tuple[str, int, int]]:
  """(episode_id, start, valid length) of every window, sorted ids; episodes < 2 latents skipped."""
  origins = []
  for episode_id in sorted(latents):
    length = len(latents[episode_id])
    if length < 2:  # no (t, t+1) pair to predict
      continue
    for start in window_starts(length, window, hop):
      origins.append((episode_id, start, min(window, length - start)))
  if not origins:
    raise ValueError("no episode with at least 2 latents")
  return origins


def make_windows(latents: dict[str, np.ndarray], window: int,
                 hop: int) -> tuple[np.ndarray, np.ndarray]:
  """All windows of all episodes (sorted ids): latents [N, window, Dz] float32, mask [N, window]."""
  rows, masks = [], []
  for episode_id, start, valid in _window_origins(latents, window, hop):
    piece = np.asarray(latents[episode_id][start:start + valid], np.float32)
    rows.append(np.pad(piece, ((0, window - valid), (0, 0))))
    masks.append(np.arange(window) < valid)
  return np.stack(rows), np.stack(masks)


@dataclasses.dataclass(frozen=True)
class EpisodeFrames:
  """Decoded frames of a split, all episodes concatenated (episodes in sorted-id order).

  Attributes:
    frames: uint8 [F, H, W, 3] at the frozen LAM's image size.
    offsets: {episode_id: index of the episode's frame 0 in `frames`}.
    lengths: {episode_id: number of frames T of the episode}.
  """
  frames: np.ndarray
  offsets: dict[str, int]
  lengths: dict[str, int]


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


@dataclasses.dataclass(frozen=True)
class WindowFrames:
  """Where the frame pairs (I_t, I_{t+k}) of every window position live.

  Attributes:
    frames: uint8 [F, H, W, 3] (`EpisodeFrames.frames`).
    frame_index: int64 [N, window], index of I_t in `frames` for window position t (0 at padding).
    pair_valid: bool [N, window], position t is a real frame and t + k is inside the episode.
    frame_gap: k; I_{t+k} is frames[frame_index + k].
  """
  frames: np.ndarray
  frame_index: np.ndarray
  pair_valid: np.ndarray
  frame_gap: int


def make_window_frames(latents: dict[str, np.ndarray], frames: EpisodeFrames, window: int,
                       hop: int, frame_gap: int) -> WindowFrames:
  """Frame indices of the windows of `make_windows(latents, window, hop)` (same order)."""
  index_rows, valid_rows = [], []
  for episode_id, start, valid in _window_origins(latents, window, hop):
    num_frames = frames.lengths[episode_id]
    if num_frames != len(latents[episode_id]) + frame_gap:
      raise ValueError(f"episode {episode_id}: {num_frames} frames but "
                       f"{len(latents[episode_id])} latents with k = {frame_gap}")
    t = start + np.arange(window)
    pair_valid = (np.arange(window) < valid) & (t + frame_gap < num_frames)
    index_rows.append(np.where(pair_valid, frames.offsets[episode_id] + t, 0))
    valid_rows.append(pair_valid)
  return WindowFrames(frames.frames, np.stack(index_rows).astype(np.int64), np.stack(valid_rows),
                      frame_gap)


def sample_frame_pairs(window_frames: WindowFrames, index: np.ndarray, mask: np.ndarray,
                       num_positions: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """L_rec inputs for windows `index`: `num_positions` random positions t >= 1 per window.

  Returns:
    "frame_positions" int32 [B, K] (window positions t; the prediction for t is made at t - 1),
    "frame_t", "frame_tk" uint8 [B, K, H, W, 3] (I_t, I_{t+k}), "frame_mask" bool [B, K] (real
    pair with a valid t - 1; windows with fewer than K candidates are padded with masked rows).
  """
  pair_valid = window_frames.pair_valid[index]  # [B, L]
  candidates = pair_valid & mask & np.roll(mask, 1, axis=1)
  candidates[:, 0] = False  # t = 0 has no prediction
  keys = np.where(candidates, rng.random(candidates.shape), np.inf)
  positions = np.argsort(keys, axis=1)[:, :num_positions]  # [B, K]
  frame_mask = np.take_along_axis(keys, positions, axis=1) < np.inf
  frame_index = np.take_along_axis(window_frames.frame_index[index], positions, axis=1)
  frame_index = np.where(frame_mask, frame_index, 0)
  frames = window_frames.frames
  return {"frame_positions": positions.astype(np.int32),
          "frame_t": frames[frame_index],
          "frame_tk": frames[np.where(frame_mask, frame_index + window_frames.frame_gap, 0)],
          "frame_mask": frame_mask}


def random_batches(windows: tuple[np.ndarray, np.ndarray], batch_size: int, seed: int,
                   window_frames: Optional[WindowFrames] = None,
                   rec_positions: int = 0, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches {"latents", "mask"} of windows drawn uniformly (with a numpy RNG).

  Batch i is drawn from its own generator seeded with (seed, i), so the stream seeks: `start=s`
  yields exactly batches s, s + 1, ... of the stream that starts at 0 (a resumed run's data).
  With `window_frames`, each batch also carries the L_rec inputs of `sample_frame_pairs` for
  `rec_positions` positions per window.
  """
  latents, mask = windows
  if start < 0:
    raise ValueError(f"start must be >= 0, got {start}")
  for i in itertools.count(start):
    rng = np.random.default_rng((seed, i))
    index = rng.integers(0, len(latents), batch_size)
    batch = {"latents": latents[index], "mask": mask[index]}
    if window_frames is not None:
      batch.update(sample_frame_pairs(window_frames, index, mask[index], rec_positions, rng))
    yield batch


def _loss(params, batch, rng, *, module, lambda_ratio, lambda_rec, frozen_lam, lambda_aux=0.0,
          lambda_latent=1.0, ratio_per_sequence=False):
  return losses.skill_loss(params, module, batch, rng, frozen_lam=frozen_lam,
                           lambda_rec=lambda_rec, lambda_ratio=lambda_ratio,
                           lambda_aux=lambda_aux, lambda_latent=lambda_latent,
                           ratio_per_sequence=ratio_per_sequence)


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
  """Refuses objective settings that cannot work together (before any data is read)."""
  if config.lambda_rec and config.data.get("normalize", "none") == "zscore":
    raise ValueError("data.normalize='zscore' with lambda_rec > 0 is not supported: the "
                     "frozen FDM decodes raw latents")


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
  check_inputs(config)
  model_config = skill_model.SkillModelConfig.from_dict(dict(config.model))
  lr_multipliers = level_lr_multipliers(config, model_config)
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

  train_latents = load_split_latents(config.data.labels_dir, config.data.train_split)
  dims = {z.shape[-1] for z in train_latents.values()}
  if dims != {model_config.latent_dim}:
    raise ValueError(f"labels have latent dims {dims}, model.latent_dim is "
                     f"{model_config.latent_dim}")
  val_latents = load_split_latents(config.data.labels_dir, config.data.val_split)
  normalization = resolve_normalization(config, workdir, train_latents)
  if normalization is not None:
    check_objective(config)
    logging.info("z-scoring latents per dimension (train std %s)",
                 np.round(normalization["std"], 3).tolist())
    train_latents = normalize_latents(train_latents, normalization)
    val_latents = normalize_latents(val_latents, normalization)
  train_frames = val_frames = None
  rec_positions = 0
  if config.lambda_rec:
    if frozen_lam is None:
      frozen_lam = resolve_frozen_lam(config)
    else:
      with open(os.path.join(config.data.labels_dir, labeling.MANIFEST)) as f:
        check_lam_matches_labels(frozen_lam, json.load(f))
    rec_positions = min(config.data.rec_positions or window, window)
    skip_corrupted = bool(config.data.get("skip_corrupted", False))
    split_frames = [
        load_split_frames(config.data.labels_dir, split, frozen_lam.image_size, set(latents),
                          skip_corrupted=skip_corrupted)
        for latents, split in ((train_latents, config.data.train_split),
                               (val_latents, config.data.val_split))]
    # Episodes in unreadable records (skip_corrupted) have no frames: their windows go too.
    train_latents, val_latents = (
        {e: z for e, z in latents.items() if e in frames.lengths}
        for latents, frames in zip((train_latents, val_latents), split_frames))
    train_frames, val_frames = (
        make_window_frames(latents, frames, window, hop, frozen_lam.frame_gap)
        for latents, frames in zip((train_latents, val_latents), split_frames))
  train_windows = make_windows(train_latents, window, hop)
  val_windows = make_windows(val_latents, window, hop)
  if config.lambda_rec:
    logging.info("L_rec: %s frames of %s in memory (%.0f MB), %d positions per window",
                 f"{len(train_frames.frames) + len(val_frames.frames):,}",
                 frozen_lam.image_size,
                 (train_frames.frames.nbytes + val_frames.frames.nbytes) / 2**20, rec_positions)
  else:
    frozen_lam = None
  logging.info("skill model data: %d train windows, %d val windows of %d frames",
               len(train_windows[0]), len(val_windows[0]), window)

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

  loss_fn = functools.partial(_loss, module=module, lambda_ratio=config.lambda_ratio,
                              lambda_rec=config.lambda_rec, frozen_lam=frozen_lam,
                              lambda_aux=config.get("lambda_aux", 0.0),
                              lambda_latent=config.get("lambda_latent", 1.0),
                              ratio_per_sequence=bool(config.get("ratio_per_sequence", False)))
  dtype = config.get("compute_dtype", "float32")
  train_step = training.make_train_step(loss_fn, tx, mesh, compute_dtype=dtype)
  eval_step = training.make_eval_step(lambda p, b, r: loss_fn(p, b, r)[1], mesh,
                                      compute_dtype=dtype)

  per_process = training.per_process_batch(config.batch_size)
  # Each process draws from its own seed; a run resumed at step s continues the same stream at
  # batch s (exact resume).
  seed = config.seed + 1000 * jax.process_index()
  train_batches = training.shard_batches(
      random_batches(train_windows, per_process, seed, train_frames, rec_positions,
                     start=start_step), mesh)

  def eval_fn(state):
    val_batches = training.shard_batches(
        random_batches(val_windows, per_process, config.seed + 7, val_frames, rec_positions),
        mesh)
    return training.run_eval(eval_step, state.params, val_batches, jax.random.key(1),
                             num_batches=config.num_eval_batches)

  return training.run_training(
      what="skill model", state=state, train_step=train_step, batches=train_batches,
      config=config, workdir=workdir, checkpointer=checkpointer, eval_fn=eval_fn,
      progress_keys=("loss", "latent_l1") + (("rec",) if frozen_lam is not None else ())
      + ("boundary_rate/s1", "boundary_rate/s2"))
