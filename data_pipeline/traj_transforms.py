"""Trajectory transforms: cheap, per-episode reshaping while images are still encoded strings.

Each function maps one standardized trajectory (every key [T, ...], see `schema.py`) to another,
inside `tf.data.Dataset.map`. Padding never invents data: padded positions repeat the last real
element (so an encoded image stays decodable) and a boolean mask marks the real ones.

  frame_pairs   (t, t+k) pairs for latent action models: `observation` and `next_observation`,
                every key [T-k, ...].
  windows       fixed-length windows for sequence models: every key [W, size, ...] + `pad_mask`.
  action_chunks action[t : t+horizon] per step: `action` [T, horizon, ...] + `action_pad_mask`.
  label_chunks  the same for a joined label: `<key>` [T, horizon, ...] + `<key>_mask` [T, horizon].
  EpisodeFilter keeps only the episodes whose `episode_id` is in a given set.
  EpisodeLabels per-frame label arrays (latent actions, skills) joined by `episode_id`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorflow as tf


def _num_steps(traj: Mapping[str, Any]) -> tf.Tensor:
  return tf.shape(traj["is_first"])[0]


def _map_steps(fn, tree):
  return tf.nest.map_structure(fn, tree)


def frame_pairs(traj: dict, k: int) -> dict:
  """Pairs (frame t, frame t+k) for t in [0, T-k); episodes with T <= k yield no pairs.

  Emits `next_observation` (the observation at t+k) beside `observation` (at t); every other key
  is truncated to the first T-k steps, so `action` at t is the action taken at frame t.
  """
  if k < 1:
    raise ValueError(f"frame gap k must be >= 1, got {k}")
  num_pairs = tf.maximum(_num_steps(traj) - k, 0)
  out = _map_steps(lambda x: x[:num_pairs], traj)
  out["next_observation"] = _map_steps(lambda x: x[k:k + num_pairs], traj["observation"])
  return out


def _gather_padded(x: tf.Tensor, indices: tf.Tensor, num_steps: tf.Tensor) -> tf.Tensor:
  """x[indices] with indices >= num_steps clamped to the last step (the padding value)."""
  return tf.gather(x, tf.minimum(indices, num_steps - 1))


def windows(traj: dict, size: int, shift: int | None = None) -> dict:
  """Splits a trajectory into windows of `size` steps starting every `shift` (default `size`).

  Windows start at 0, shift, 2·shift, ... while the start lies inside the episode and the previous
  window did not already reach the end; the last one is padded. Returns every key as
  [W, size, ...] plus `pad_mask` [W, size] (True on real steps).
  """
  shift = size if shift is None else shift
  if size < 1 or shift < 1:
    raise ValueError(f"window size and shift must be >= 1, got {size}, {shift}")
  num_steps = _num_steps(traj)
  # Number of windows: 1 if T <= size, else enough to cover the end: ceil((T - size) / shift) + 1.
  num_windows = tf.maximum(0, (num_steps - size + shift - 1) // shift) + 1
  num_windows = tf.where(num_steps > 0, num_windows, 0)
  indices = tf.range(num_windows)[:, None] * shift + tf.range(size)[None, :]  # [W, size]
  out = _map_steps(lambda x: _gather_padded(x, indices, num_steps), traj)
  out["pad_mask"] = indices < num_steps
  return out


def action_chunks(traj: dict, horizon: int) -> dict:
  """Replaces `action` [T, ...] by chunks action[t : t+horizon] [T, horizon, ...].

  Steps past the episode end repeat the last action and are False in `action_pad_mask`.
  """
  if "action" not in traj:
    raise KeyError("action_chunks needs an `action` key; this dataset is action-free")
  num_steps = _num_steps(traj)
  indices = tf.range(num_steps)[:, None] + tf.range(horizon)[None, :]  # [T, horizon]
  out = dict(traj)
  out["action"] = _gather_padded(traj["action"], indices, num_steps)
  out["action_pad_mask"] = indices < num_steps
  return out


def label_chunks(traj: dict, key: str, horizon: int) -> dict:
  """Replaces a joined label `key` [T, ...] by chunks key[t : t+horizon] [T, horizon, ...].

  `<key>_mask` [T] becomes [T, horizon]: True where step t+i is inside the episode and labelled.
  """
  mask_key = f"{key}_mask"
  if key not in traj or mask_key not in traj:
    raise KeyError(f"label_chunks: {key!r} / {mask_key!r} missing (join the label first); "
                   f"keys: {sorted(traj)}")
  num_steps = _num_steps(traj)
  indices = tf.range(num_steps)[:, None] + tf.range(horizon)[None, :]  # [T, horizon]
  out = dict(traj)
  out[key] = _gather_padded(traj[key], indices, num_steps)
  out[mask_key] = (indices < num_steps) & _gather_padded(traj[mask_key], indices, num_steps)
  return out


class EpisodeFilter:
  """`Dataset.filter` predicate: keeps trajectories whose episode id is in `episode_ids`."""

  def __init__(self, episode_ids):
    ids = sorted({i.decode() if isinstance(i, bytes) else str(i) for i in episode_ids})
    if not ids:
      raise ValueError("EpisodeFilter needs at least one episode id")
    self.episode_ids = ids
    self._table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(ids, tf.string), tf.ones(len(ids), tf.int64)), default_value=0)

  def __call__(self, traj: Mapping[str, Any]) -> tf.Tensor:
    return self._table.lookup(traj["episode_id"][0]) > 0


class EpisodeLabels:
  """Per-frame label arrays keyed by episode id, joinable onto trajectories inside tf.data.

  Labels for an episode may cover fewer frames than the episode (latent actions of frame-pair
  models exist only for t < T-k); the join pads with zeros and emits `<key>_mask` [T].

  Args:
    labels: {episode_id: array [T_e, ...]}; every array has the same trailing shape and dtype.
  """

  def __init__(self, labels: Mapping[str, np.ndarray]):
    if not labels:
      raise ValueError("EpisodeLabels needs at least one episode")
    ids = sorted(labels)
    arrays = [np.asarray(labels[i]) for i in ids]
    trailing = {a.shape[1:] for a in arrays}
    dtypes = {a.dtype for a in arrays}
    if len(trailing) != 1 or len(dtypes) != 1:
      raise ValueError(f"label arrays disagree in trailing shape {trailing} or dtype {dtypes}")
    lengths = np.array([len(a) for a in arrays], np.int64)
    self.episode_ids = ids
    self._values = tf.constant(np.concatenate(arrays, axis=0))
    self._offsets = tf.constant(np.concatenate([[0], np.cumsum(lengths)[:-1]]), tf.int64)
    self._lengths = tf.constant(lengths, tf.int64)
    self._table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(ids, tf.string), tf.range(len(ids), dtype=tf.int64)),
        default_value=-1)

  def contains(self, traj: Mapping[str, Any]) -> tf.Tensor:
    """bool scalar: whether this trajectory's episode has labels (for `Dataset.filter`)."""
    return self._table.lookup(traj["episode_id"][0]) >= 0

  def join(self, traj: dict, key: str) -> dict:
    """Adds `key` [T, ...] (zero-padded past the label length) and `<key>_mask` [T].

    Raises (at run time) if the episode has no labels or more labels than frames.
    """
    episode_id = traj["episode_id"][0]
    row = self._table.lookup(episode_id)
    num_steps = tf.cast(_num_steps(traj), tf.int64)
    with tf.control_dependencies([
        tf.debugging.Assert(row >= 0, ["no labels for episode", episode_id]),
    ]):
      row = tf.maximum(row, 0)
      length = self._lengths[row]
    with tf.control_dependencies([
        tf.debugging.Assert(length <= num_steps, [
            "labels longer than the episode (labels of another dataset?):", episode_id,
            length, num_steps]),
    ]):
      steps = tf.range(num_steps)
    mask = steps < length
    values = tf.gather(self._values, self._offsets[row] + tf.minimum(steps, tf.maximum(length - 1, 0)))
    zeros = tf.zeros_like(values)
    mask_b = tf.reshape(mask, [-1] + [1] * (len(values.shape) - 1))
    out = dict(traj)
    out[key] = tf.where(mask_b, values, zeros)
    out[f"{key}_mask"] = mask
    return out
