"""Builds training/evaluation input pipelines: trajectories first, frames last (Octo / dlimp).

  per dataset: RLDS -> standardize -> [label joins] -> [action chunks] -> [frame pairs | windows]
               -> repeat -> flatten to frames
  then:        weighted interleave -> frame-level shuffle (bounded buffer, still encoded: a
               10,000-frame buffer of 256x256 JPEGs costs ~150 MB instead of ~2 GB decoded)
               -> fixed-shape batches -> decode / resize / augment (per batch) -> prefetch

Keys of the batches: the common schema (`schema.py`) minus `episode_source`, plus `episode_id`
and `frame_index`; `next_observation/*` with frame pairs; `pad_mask` with windows (every key then
has a [size] time axis); `action_pad_mask` with action chunks; `<label>` and `<label>_mask` for
each joined label. Images are uint8 [..., H, W, 3]; strings stay bytes.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Collection, Iterator, Mapping, Sequence

from absl import logging
import tensorflow as tf

from data_pipeline import frame_transforms
from data_pipeline import reader
from data_pipeline import schema
from data_pipeline import traj_transforms


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset split in a mixture."""
  dataset_dir: str
  name: str | None = None          # registry name; default: the name stored in the dataset
  split: str = "train"
  weight: float = 1.0              # sampling weight in the mixture (frames, not episodes)


@dataclasses.dataclass(frozen=True)
class TransformConfig:
  """Trajectory and frame transforms; None disables each one."""
  frame_pair_k: int | None = None          # emit (t, t+k) pairs
  window_size: int | None = None           # emit fixed-length windows ...
  window_shift: int | None = None          # ... starting every shift steps (default: size)
  action_horizon: int | None = None        # action chunks of this length
  chunk_actions: bool = True               # False: chunk only labels (action-free video)
  chunk_labels: tuple[str, ...] = ()       # joined labels chunked like actions (action_horizon)
  resize: tuple[int, int] | None = None    # decode to this (H, W)
  augment: frame_transforms.AugmentConfig | None = None
  keys: tuple[str, ...] | None = None      # keep only these flat keys (e.g. to mix datasets)


@dataclasses.dataclass
class Pipeline:
  """A batched tf.data pipeline and what it reads."""
  dataset: tf.data.Dataset
  sources: list[reader.TrajectorySource]
  num_skipped_records: int

  def as_numpy_iterator(self, skip_batches: int = 0) -> Iterator[dict]:
    """Yields numpy batches; a corrupted record raises CorruptedRecordError naming the file.

    `skip_batches` starts after that many batches of the same (seeded, deterministic) pipeline:
    a trainer resumed at step s passes s and sees exactly the batches the uninterrupted run saw
    from step s on (the skipped ones are still read and decoded, not returned: seconds for our
    runs, read time proportional to s at scale).
    """
    if skip_batches < 0:
      raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
    dataset = self.dataset.skip(skip_batches) if skip_batches else self.dataset
    iterator = dataset.as_numpy_iterator()
    while True:
      try:
        batch = next(iterator)
      except StopIteration:
        return
      except tf.errors.DataLossError:
        for source in self.sources:
          reader.raise_for_corruption(source.files, source.shard_lengths)
        raise
      yield batch


def _as_spec(spec: DatasetSpec | Mapping[str, Any]) -> DatasetSpec:
  return spec if isinstance(spec, DatasetSpec) else DatasetSpec(**spec)


def trajectory_dataset(
    spec: DatasetSpec,
    transforms: TransformConfig,
    *,
    labels: Mapping[str, traj_transforms.EpisodeLabels] | None = None,
    drop_unlabeled: bool = False,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    skip_corrupted: bool = False,
    deterministic: bool = True,
    episode_ids: Collection[str] | None = None,
) -> tuple[tf.data.Dataset, reader.TrajectorySource, int]:
  """One dataset's transformed trajectories (not repeated, not flattened)."""
  source = reader.get_source(spec.dataset_dir, spec.name, spec.split)
  ds = reader.read_trajectories(
      spec.dataset_dir, source=source, shuffle_seed=seed, process_index=process_index,
      process_count=process_count, skip_corrupted=skip_corrupted, deterministic=deterministic)
  num_skipped = ds.num_skipped_records
  if episode_ids is not None:
    ds = ds.filter(traj_transforms.EpisodeFilter(episode_ids))
  for key, table in (labels or {}).items():
    if drop_unlabeled:
      ds = ds.filter(table.contains)
    ds = ds.map(lambda t, table=table, key=key: table.join(t, key),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  if transforms.action_horizon and transforms.chunk_actions:
    ds = ds.map(lambda t: traj_transforms.action_chunks(t, transforms.action_horizon),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  if transforms.chunk_labels:
    if not transforms.action_horizon:
      raise ValueError("chunk_labels needs action_horizon (the chunk length)")
    for key in transforms.chunk_labels:
      ds = ds.map(lambda t, key=key: traj_transforms.label_chunks(t, key, transforms.action_horizon),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  if transforms.frame_pair_k and transforms.window_size:
    raise ValueError("choose frame pairs or windows, not both")
  if transforms.frame_pair_k:
    ds = ds.map(lambda t: traj_transforms.frame_pairs(t, transforms.frame_pair_k),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  if transforms.window_size:
    ds = ds.map(lambda t: traj_transforms.windows(t, transforms.window_size,
                                                  transforms.window_shift),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  if transforms.keys is not None:
    ds = ds.map(lambda t: _select_keys(t, transforms.keys, source.name))
  return ds, source, num_skipped


def _select_keys(traj: Mapping[str, Any], keys: Sequence[str], name: str) -> dict:
  flat = schema.flatten_keys(traj)
  missing = [k for k in keys if k not in flat]
  if missing:
    raise schema.MissingKeyError(
        f"dataset {name!r}: requested keys {missing} are missing; it has {sorted(flat)}")
  return frame_transforms.unflatten_keys({k: flat[k] for k in keys})


def _flatten(ds: tf.data.Dataset) -> tf.data.Dataset:
  return ds.flat_map(tf.data.Dataset.from_tensor_slices)


AUTOTUNE_ENV = "HILAM_TF_DATA_AUTOTUNE"


def pipeline_options(deterministic: bool = True, autotune: bool | None = None) -> tf.data.Options:
  """The tf.data options of the project's pipelines.

  autotune: tf.data's autotuning of parallelism and buffer sizes; None reads the environment
  (`HILAM_TF_DATA_AUTOTUNE=0` turns it off; on otherwise). Off, every AUTOTUNE map runs with
  one call per core. `hilam_jax.jobs.single_thread_env` turns it off: on one core there is
  nothing to tune, and destroying an iterator then waits for the autotuning thread's timed
  sleep, measured at up to 60 s of idle time after each of the main job's policy runs. With
  `deterministic=True` the batches do not depend on the choice.
  """
  if autotune is None:
    autotune = os.environ.get(AUTOTUNE_ENV, "1").strip().lower() not in ("0", "false", "no")
  options = tf.data.Options()
  options.deterministic = deterministic
  options.autotune.enabled = bool(autotune)
  return options


def make_dataset(
    datasets: Sequence[DatasetSpec | Mapping[str, Any]],
    *,
    batch_size: int,
    transforms: TransformConfig = TransformConfig(),
    shuffle_buffer: int = 10_000,
    seed: int = 0,
    repeat: bool = True,
    deterministic: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    skip_corrupted: bool = False,
    labels: Mapping[str, traj_transforms.EpisodeLabels] | None = None,
    drop_unlabeled: bool = False,
    drop_remainder: bool = True,
    prefetch: int = 2,
    episode_ids: Collection[str] | None = None,
    cache: str | None = None,
    autotune: bool | None = None,
    fill_missing: bool = False,
    global_order: bool = False,
) -> Pipeline:
  """A batched frame pipeline over a weighted mixture of datasets.

  Args:
    datasets: DatasetSpecs (or dicts with their fields); weights are normalised.
    batch_size: per-process batch size.
    transforms: trajectory and frame transforms.
    shuffle_buffer: frame-level shuffle buffer (0 disables shuffling).
    seed: one seed for file order, mixture sampling, shuffling and augmentation. With
      `deterministic=True` the batches are a function of the seed only.
    repeat: loop over each dataset forever (training); False makes one pass (evaluation,
      labeling): a mixture then ends when every dataset is exhausted.
    process_index, process_count: this process's disjoint share of every dataset.
    skip_corrupted: skip (and count) unreadable records instead of failing.
    global_order: every process reads the whole stream as one process would, builds the
      global batch (batch_size x process_count rows, augmented as one) and keeps its rows
      [process_index x batch_size, (process_index + 1) x batch_size): the global batches do
      not depend on the process count, so a run on 2 x 4 devices sees the batches of 1 x 8
      (at process_count times the input work). False (the default, for scale): each process
      reads its own files.
    labels: {key: EpisodeLabels} joined onto trajectories by episode id.
    drop_unlabeled: drop episodes without labels instead of failing on them.
    drop_remainder: drop the last partial batch (keeps batch shapes fixed).
    prefetch: batches prefetched.
    episode_ids: read only these episodes (ids as the reader makes them; see
      `list_episode_ids`), e.g. a fraction of the demonstrations.
    cache: keep each dataset's transformed trajectories in memory after the first pass, so
      later epochs neither read nor parse the shards again (with `episode_ids` a pass otherwise
      reads every episode to keep a few): None (no cache), "encoded" (images as stored, memory
      about the dataset's size on disk) or "decoded" (images decoded and resized before the
      cache: no per-batch JPEG decoding either; memory H * W * 3 bytes per frame and camera,
      e.g. 1.4 GB for 150k frames of 56x56). Repeated epochs visit the trajectories in the
      first epoch's order; the frame shuffle buffer still mixes them. The batches do not depend
      on the choice.
    autotune: tf.data autotuning (`pipeline_options`; None: from the environment).
    fill_missing: in a mixture, give every dataset the observations another one has
      (`fill_missing_keys`: black frames for a missing camera, zeros for missing proprio) and
      drop the other keys some dataset lacks (e.g. the actions of robot episodes mixed with
      action-free video).
  """
  specs = [_as_spec(s) for s in datasets]
  if not specs:
    raise ValueError("make_dataset needs at least one dataset")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  rows = None  # global_order: this process's rows of each global batch
  if global_order and process_count > 1:
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if not drop_remainder:
      raise ValueError("global_order needs drop_remainder=True (every process needs its rows)")
    rows = (process_index * batch_size, (process_index + 1) * batch_size)
    batch_size, process_index, process_count = batch_size * process_count, 0, 1
  if cache not in (None, "encoded", "decoded"):
    raise ValueError(f"cache must be None, 'encoded' or 'decoded', got {cache!r}")
  frames, sources, num_skipped = [], [], 0
  for i, spec in enumerate(specs):
    ds, source, skipped = trajectory_dataset(
        spec, transforms, labels=labels, drop_unlabeled=drop_unlabeled, seed=seed + i,
        process_index=process_index, process_count=process_count,
        skip_corrupted=skip_corrupted, deterministic=deterministic, episode_ids=episode_ids)
    if cache == "decoded":
      ds = ds.map(lambda t: frame_transforms.apply_frame_transforms(t, transforms.resize),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if cache:
      ds = ds.cache()
    if repeat:
      ds = ds.repeat()
    frames.append(_flatten(ds))
    sources.append(source)
    num_skipped += skipped

  if len(frames) == 1:
    ds = frames[0]
  else:
    if fill_missing:
      frames = fill_missing_keys(frames, specs)
    _check_same_structure(frames, specs)
    weights = [s.weight for s in specs]
    if min(weights) < 0 or sum(weights) <= 0:
      raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {weights}")
    weights = [w / sum(weights) for w in weights]
    ds = tf.data.Dataset.sample_from_datasets(frames, weights, seed=seed,
                                              stop_on_empty_dataset=False)
  if shuffle_buffer:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  augment_config = transforms.augment
  if augment_config is not None:
    # One stateless seed [2] per batch from a seeded stream: deterministic, and different for
    # the same frames in different epochs.
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=seed).batch(2))
    ds = ds.map(lambda x, s: frame_transforms.apply_frame_transforms(
        x, transforms.resize, augment_config, s),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  else:
    ds = ds.map(lambda x: frame_transforms.apply_frame_transforms(x, transforms.resize),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  if rows is not None:
    ds = ds.map(lambda x: tf.nest.map_structure(lambda t: t[rows[0]:rows[1]], x))
  ds = ds.with_options(pipeline_options(deterministic, autotune)).prefetch(prefetch)
  return Pipeline(ds, sources, num_skipped)


def _black_jpeg() -> bytes:
  return tf.io.encode_jpeg(tf.zeros((8, 8, 3), tf.uint8)).numpy()


def fill_missing_keys(frames: list[tf.data.Dataset],
                      specs: list[DatasetSpec]) -> list[tf.data.Dataset]:
  """Frame datasets of a mixture brought to one structure: an `observation/*` or
  `next_observation/*` key that some datasets have is added to the others (an encoded image:
  a black JPEG, resized with the rest at decoding; a decoded image or a numeric key: zeros of
  the same shape); every other key that not all datasets have is dropped. Human video mixed
  with robot episodes thereby reaches a policy with a black wrist camera and zero proprio
  (the policy's inputs keep their shapes; docs/your_data.md)."""
  flats = [schema.flatten_keys(ds.element_spec) for ds in frames]
  union: dict[str, tf.TensorSpec] = {}
  for flat in flats:
    for key, spec in flat.items():
      union.setdefault(key, spec)
  fillable = {k: v for k, v in union.items()
              if k.split("/")[0] in ("observation", "next_observation")}
  for key, spec in fillable.items():
    if not spec.shape.is_fully_defined():
      raise ValueError(f"cannot fill {key!r} (shape {spec.shape}) into the datasets without it")
  common = set.intersection(*(set(f) for f in flats)) | set(fillable)
  black = _black_jpeg()
  out = []
  for ds, flat, spec in zip(frames, flats, specs):
    added = sorted(set(fillable) - set(flat))
    dropped = sorted(set(flat) - common)
    if added or dropped:
      logging.info("mixture: %s gets %s filled, %s dropped", spec.dataset_dir, added or "none",
                   dropped or "none")

    def fill(frame, added=tuple(added)):
      flat_frame = {k: v for k, v in schema.flatten_keys(frame).items() if k in common}
      for key in added:
        want = fillable[key]
        if want.dtype == tf.string:
          flat_frame[key] = tf.fill(want.shape.as_list(), tf.constant(black))
        else:
          flat_frame[key] = tf.zeros(want.shape, want.dtype)
      return frame_transforms.unflatten_keys(flat_frame)

    out.append(ds.map(fill) if added or dropped else ds)
  return out


def check_datasets(datasets: Sequence[DatasetSpec | Mapping[str, Any]]) -> None:
  """Opens every dataset split without reading a record: a missing directory, metadata, split
  or shard file, or an unregistered name, fails now (`schema.DatasetError`), before a trainer
  builds anything."""
  for spec in datasets:
    spec = _as_spec(spec)
    reader.get_source(spec.dataset_dir, spec.name, spec.split)


def list_episode_ids(spec: DatasetSpec | Mapping[str, Any], *,
                     skip_corrupted: bool = False) -> list[str]:
  """The episode ids of one dataset split, in a fixed order (sorted); images are not decoded.
  With `skip_corrupted`, those of the intact records only."""
  spec = _as_spec(spec)
  ds, _, _ = trajectory_dataset(spec, TransformConfig(keys=("episode_id",)),
                                skip_corrupted=skip_corrupted)
  ds = ds.map(lambda t: t["episode_id"][0])
  return sorted(x.decode() for x in ds.as_numpy_iterator())


def _check_same_structure(frames: list[tf.data.Dataset], specs: list[DatasetSpec]) -> None:
  """A mixture needs identical keys and compatible shapes; say which dataset differs."""
  def describe(ds):
    return {k: (v.dtype.name, v.shape.rank)
            for k, v in schema.flatten_keys(ds.element_spec).items()}

  first = describe(frames[0])
  for spec, ds in zip(specs[1:], frames[1:]):
    other = describe(ds)
    if other != first:
      only_a = sorted(set(first) - set(other))
      only_b = sorted(set(other) - set(first))
      changed = sorted(k for k in set(first) & set(other) if first[k] != other[k])
      raise ValueError(
          f"cannot mix {specs[0].dataset_dir} and {spec.dataset_dir}: keys only in the first "
          f"{only_a}, only in the second {only_b}, different dtype/rank {changed}. "
          "Select common keys with TransformConfig(keys=...).")
