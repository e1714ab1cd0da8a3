"""The skill model's input as a stream: windows of latent actions (and with L_rec their frame
pairs) read shard by shard, with a bounded shuffle buffer, in memory that does not grow with the
corpus.

A label folder (`hilam_jax.lam.labeling`) holds one `.npz` shard per RLDS shard file, so the
shard is the unit of reading:

  * latents only: a label shard is read (`labeling.read_shard`), its episodes are put in a seeded
    random order and cut into windows (`make_windows`, per episode);
  * with frames (L_rec): the label shard's own RLDS file (`labeling.plan_shards` on the
    manifest's datasets gives the pairing) is read through the data pipeline's reader, decoded at
    the frozen LAM's image size, and each episode's latents are joined with its frames by episode
    id. Each window draws its `rec_positions` positions t >= 1 right away
    (`sample_frame_pairs`), so a buffered window holds 2 * rec_positions frames, not its episode.

Shards are visited in a seeded random order per epoch; windows pass through a shuffle buffer of
`buffer_size` windows (the same semantics as `tf.data.Dataset.shuffle`) and are stacked into
batches. Everything is single-threaded numpy on top of deterministic tf.data reads: the batches
are a function of the seed, and `batches(start=s)` yields exactly batches s, s + 1, ... of the
stream that starts at 0 (a resumed run's data; the s skipped batches are read again, not
returned). Peak memory: one shard (its latents, with L_rec its decoded frames) plus the buffer.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
from absl import logging

from hilam_jax.lam import labeling


# ---------------------------------------------------------------- windows of one set of episodes

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


# ---------------------------------------------------------------- the stream


@dataclasses.dataclass(frozen=True)
class ShardUnit:
  """One label shard and, for frames, the RLDS shard file it labels."""
  label_path: str
  source: Any = None  # reader.TrajectorySource restricted to one file, or None


@dataclasses.dataclass(frozen=True)
class FrameSpec:
  """What the L_rec join needs: the frozen LAM's image size, k, and positions per window."""
  image_size: tuple[int, int]
  frame_gap: int
  rec_positions: int
  skip_corrupted: bool = False


def read_manifest(labels_dir: str) -> dict:
  with open(os.path.join(labels_dir, labeling.MANIFEST)) as f:
    return json.load(f)


def split_units(labels_dir: str, split: str, with_frames: bool = False) -> list[ShardUnit]:
  """The shards of `split` in manifest order; `with_frames` pairs each with its RLDS file."""
  paths = label_shard_paths(labels_dir, split)
  if not with_frames:
    return [ShardUnit(p) for p in paths]
  specs = [d for d in read_manifest(labels_dir)["datasets"] if d.get("split", "train") == split]
  if not specs:
    raise ValueError(f"label manifest of {labels_dir} names no dataset of split {split!r}")
  sources = {os.path.normpath(job.out_path): job.source
             for job in labeling.plan_shards(specs, labels_dir)}
  unmatched = [p for p in paths if os.path.normpath(p) not in sources]
  if unmatched:
    raise ValueError(f"label shards without an RLDS file in the manifest's datasets (labels of "
                     f"other data?): {unmatched[:3]}")
  return [ShardUnit(p, sources[os.path.normpath(p)]) for p in paths]


def shard_lengths(path: str) -> np.ndarray:
  """Latents per episode of a label shard (reads only its `lengths` member)."""
  with np.load(path) as data:
    return np.asarray(data["lengths"], np.int64)


def count_windows(units: Sequence[ShardUnit], window: int, hop: int) -> tuple[int, int]:
  """(episodes with >= 2 latents, windows) of `units`, from the shards' lengths alone."""
  episodes = windows = 0
  for unit in units:
    for length in shard_lengths(unit.label_path):
      if length >= 2:
        episodes += 1
        windows += len(window_starts(int(length), window, hop))
  return episodes, windows


def iter_shard_latents(units: Iterable[ShardUnit]) -> Iterator[np.ndarray]:
  """Every shard's latents [sum(lengths), Dz] in turn (for one-pass statistics)."""
  for unit in units:
    with np.load(unit.label_path) as data:
      yield np.asarray(data["latents"])


def _episode_frames(unit: ShardUnit, frames: FrameSpec) -> Iterator[tuple[str, np.ndarray]]:
  """(episode id, decoded frames [T, H, W, 3]) of a unit's RLDS file, in file order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from data_pipeline import dataset as dp  # pylint: disable=g-import-not-at-top
  from data_pipeline import frame_transforms as ft  # pylint: disable=g-import-not-at-top
  from data_pipeline import reader  # pylint: disable=g-import-not-at-top
  size = tuple(int(s) for s in frames.image_size)
  source = unit.source
  ds = reader.read_trajectories(source.dataset_dir, source=source,
                                skip_corrupted=frames.skip_corrupted)
  ds = ds.map(lambda t: (t["episode_id"][0],
                         ft.decode_images(t["observation"]["image_primary"], size)),
              num_parallel_calls=tf.data.AUTOTUNE).with_options(dp.pipeline_options())
  try:
    for episode_id, images in ds.prefetch(2).as_numpy_iterator():
      yield episode_id.decode(), images
  except tf.errors.DataLossError:
    reader.raise_for_corruption(source.files, source.shard_lengths)
    raise


def _unit_episodes(unit: ShardUnit, rng: np.random.Generator, latent_dim: int,
                   frames: Optional[FrameSpec]
                   ) -> Iterator[tuple[str, np.ndarray, Optional[np.ndarray]]]:
  """(episode id, latents, frames or None) of one shard: latents only in a seeded random order;
  with frames in file order, episodes of unreadable records left out (skip_corrupted)."""
  latents = labeling.read_shard(unit.label_path)
  for episode_id, z in latents.items():
    if z.ndim != 2 or z.shape[-1] != latent_dim:
      raise ValueError(f"{unit.label_path}: episode {episode_id} has latents of shape "
                       f"{z.shape}, model.latent_dim is {latent_dim}")
  if frames is None:
    ids = list(latents)
    for i in rng.permutation(len(ids)):
      yield ids[i], latents[ids[i]], None
    return
  seen = set()
  for episode_id, images in _episode_frames(unit, frames):
    if episode_id in latents:
      seen.add(episode_id)
      yield episode_id, latents[episode_id], images
  missing = sorted(set(latents) - seen)
  if missing and frames.skip_corrupted:
    logging.warning("%d labelled episodes of %s are in unreadable records (skipped), e.g. %s",
                    len(missing), unit.label_path, missing[:3])
  elif missing:
    raise ValueError(f"{len(missing)} labelled episodes of {unit.label_path} not found in its "
                     f"RLDS file {unit.source.files}, e.g. {missing[:3]}")


def episode_windows(episode_id: str, z: np.ndarray, images: Optional[np.ndarray], window: int,
                    hop: int, rng: np.random.Generator,
                    frames: Optional[FrameSpec]) -> list[dict[str, np.ndarray]]:
  """The windows of one episode as dicts of per-window arrays (the keys of a batch row)."""
  if len(z) < 2:  # no (t, t+1) pair to predict
    return []
  one = {episode_id: z}
  latents, mask = make_windows(one, window, hop)
  rows = {"latents": latents, "mask": mask}
  if frames is not None:
    episode = EpisodeFrames(images, {episode_id: 0}, {episode_id: len(images)})
    window_frames = make_window_frames(one, episode, window, hop, frames.frame_gap)
    rows.update(sample_frame_pairs(window_frames, np.arange(len(latents)), mask,
                                           frames.rec_positions, rng))
  return [{k: v[i] for k, v in rows.items()} for i in range(len(latents))]


def window_stream(units: Sequence[ShardUnit], *, window: int, hop: int, latent_dim: int,
                  seed: int, repeat: bool = True, frames: Optional[FrameSpec] = None,
                  normalization: Optional[dict[str, list[float]]] = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Windows of every shard, shards in a seeded order per epoch (one pass unless `repeat`)."""
  if not units:
    raise ValueError("window_stream needs at least one label shard")
  if normalization is not None:
    mean = np.asarray(normalization["mean"], np.float32)
    std = np.asarray(normalization["std"], np.float32)
  for epoch in itertools.count():
    produced = 0
    for u in np.random.default_rng((seed, epoch)).permutation(len(units)):
      rng = np.random.default_rng((seed, epoch, int(u)))
      for episode_id, z, images in _unit_episodes(units[u], rng, latent_dim, frames):
        z = np.asarray(z, np.float32)
        if normalization is not None:
          z = (z - mean) / std
        for row in episode_windows(episode_id, z, images, window, hop, rng, frames):
          produced += 1
          yield row
    if not repeat:
      return
    if not produced:
      raise ValueError("no episode with at least 2 latents (and, with L_rec, readable frames)")


def shuffled(items: Iterable[Any], buffer_size: int, rng: np.random.Generator) -> Iterator[Any]:
  """`tf.data.Dataset.shuffle` in numpy: fill a buffer of `buffer_size`, then emit a random
  element and put the next input in its place; drain in random order at the end."""
  if buffer_size <= 1:
    yield from items
    return
  buffer = []
  for item in items:
    if len(buffer) < buffer_size:
      buffer.append(item)
      continue
    i = int(rng.integers(len(buffer)))
    yield buffer[i]
    buffer[i] = item
  while buffer:
    i = int(rng.integers(len(buffer)))
    buffer[i], buffer[-1] = buffer[-1], buffer[i]
    yield buffer.pop()


def batched(rows: Iterable[dict[str, np.ndarray]], batch_size: int
            ) -> Iterator[dict[str, np.ndarray]]:
  """Full batches of `batch_size` rows stacked per key (a last partial batch is dropped)."""
  rows = iter(rows)
  while True:
    chunk = list(itertools.islice(rows, batch_size))
    if len(chunk) < batch_size:
      return
    yield {k: np.stack([r[k] for r in chunk]) for k in chunk[0]}


def batches(units: Sequence[ShardUnit], *, batch_size: int, seed: int, buffer_size: int,
            window: int, hop: int, latent_dim: int, frames: Optional[FrameSpec] = None,
            normalization: Optional[dict[str, list[float]]] = None,
            start: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches {"latents" [B, L, Dz], "mask" [B, L]} (+ with `frames` the L_rec keys of
  `sample_frame_pairs`) of shuffled windows; `start=s` skips the first s batches."""
  if start < 0:
    raise ValueError(f"start must be >= 0, got {start}")
  stream = window_stream(units, window=window, hop=hop, latent_dim=latent_dim, seed=seed,
                         frames=frames, normalization=normalization)
  rng = np.random.default_rng((seed, 1 << 20))  # the buffer's own generator
  return itertools.islice(batched(shuffled(stream, buffer_size, rng), batch_size), start, None)
