"""Reads any RLDS dataset from a directory into standardized trajectories.

RLDS -> per-dataset standardize function -> trajectories in the common schema
(`data_pipeline/schema.py`), one `tf.data` element per episode, images still encoded.

Episodes are read from the split's shard files directly (`tf.data.TFRecordDataset` and the
dataset's own tfds features), not through `builder.as_dataset`, for three reasons:
  * a stable id: the episode id names the record's shard file and index, which do not change with
    the file-shuffle seed or the number of processes;
  * disjoint per-process shards at file level when there are enough files, at record level
    otherwise (a 1-file fixture split over 2 processes still covers every episode once);
  * corrupted records: the bad file is named, and `skip_corrupted=True` reads only each file's
    intact prefix and counts what it skipped;
  * short shards: before reading, every shard file's record count is checked against the count
    dataset_info.json records for it (`shardLengths`), so a missing, 0-byte or truncated file is
    an error naming it, never silently fewer episodes (`check_shard_lengths`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipeline import registry
from data_pipeline import schema

_MAX_STEPS = 1 << 30


@dataclasses.dataclass
class CorruptionReport:
  """Result of scanning shard files: intact record counts and what could not be read."""
  readable: dict[str, int]           # file path -> number of intact leading records
  expected: dict[str, int]           # file path -> records the dataset metadata promises
  errors: dict[str, str]             # file path -> the read error

  @property
  def skipped(self) -> dict[str, int]:
    return {f: self.expected[f] - n for f, n in self.readable.items() if n < self.expected[f]}

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())


def open_builder(dataset_dir: str) -> tfds.core.DatasetBuilder:
  """`tfds.builder_from_directory` with a clear error for a missing or non-TFDS directory."""
  dataset_dir = os.fspath(dataset_dir)
  if not os.path.isdir(dataset_dir):
    raise schema.DatasetNotFoundError(f"dataset directory {dataset_dir!r} does not exist")
  if not os.path.exists(os.path.join(dataset_dir, "dataset_info.json")):
    raise schema.DatasetNotFoundError(
        f"{dataset_dir!r} is not a TFDS dataset directory (no dataset_info.json); pass the "
        "versioned folder, e.g. <data_dir>/<name>/1.0.0")
  try:
    return tfds.builder_from_directory(dataset_dir)
  except Exception as e:  # e.g. a protobuf parse error that names no file
    raise schema.DatasetError(
        f"{os.path.join(dataset_dir, 'dataset_info.json')} (or the features.json beside it) "
        f"could not be read as TFDS metadata: {type(e).__name__}: {e}") from e


def scan_for_corruption(files: list[str], expected: list[int]) -> CorruptionReport:
  """Reads every record of `files` (CRC-checked) and reports the intact prefix of each."""
  readable, errors = {}, {}
  for path, num in zip(files, expected):
    count = 0
    try:
      for _ in tf.data.TFRecordDataset(path):
        count += 1
    except (tf.errors.DataLossError, tf.errors.NotFoundError) as e:
      errors[path] = e.message.strip().splitlines()[0] if e.message else type(e).__name__
    readable[path] = min(count, num)
    if count < num and path not in errors:
      errors[path] = f"file holds {count} records, metadata says {num}"
  return CorruptionReport(readable, dict(zip(files, expected)), errors)


_record_counts: dict[tuple[str, int, int], int] = {}  # (path, size, mtime_ns) -> records


def _stat(path: str) -> tuple[int, int]:
  if "://" in path:
    st = tf.io.gfile.stat(path)
    return int(st.length), int(st.mtime_nsec)
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


def count_records(path: str) -> int:
  """Complete records in a TFRecord file, from its record headers only (no payload is read:
  one 12-byte read and one seek per record); a record cut short is not counted. Cached in
  memory per (path, size, mtime), so a file is scanned once per process unless it changes.

  TFRecord framing: uint64 length, uint32 masked CRC of the length, payload, uint32 CRC.
  """
  size, mtime = _stat(path)
  key = (path, size, mtime)
  if key in _record_counts:
    return _record_counts[key]
  count, position = 0, 0
  opener = tf.io.gfile.GFile if "://" in path else open
  with opener(path, "rb") as f:
    while position + 12 <= size:
      header = f.read(12)
      if len(header) < 12:
        break
      end = position + 12 + int.from_bytes(header[:8], "little") + 4
      if end > size:
        break
      count, position = count + 1, end
      f.seek(position)
  _record_counts[key] = count
  return count


def check_shard_lengths(files: list[str], expected: list[int]) -> dict[str, tuple[int, int]]:
  """{file: (expected, found)} for every shard file holding fewer records than the dataset
  metadata says (a missing file counts 0); empty when all are complete."""
  short = {}
  for path, num in zip(files, expected):
    try:
      found = count_records(path)
    except (OSError, tf.errors.NotFoundError):
      found = 0
    if found < num:
      short[path] = (num, found)
  return short


def raise_for_short_shards(files: list[str], expected: list[int]) -> None:
  """Raises CorruptedRecordError naming every shard file with fewer records than promised."""
  short = check_shard_lengths(files, expected)
  if short:
    details = "; ".join(f"{f}: dataset_info.json says {num} records, the file holds {found}"
                        for f, (num, found) in short.items())
    raise schema.CorruptedRecordError(
        f"incomplete shard files (missing, empty or truncated): {details}. Pass "
        "skip_corrupted=True to skip and count the missing episodes.")


def raise_for_corruption(files: list[str], expected: list[int]) -> None:
  """Raises CorruptedRecordError naming the corrupted files, if any."""
  report = scan_for_corruption(files, expected)
  if report.skipped:
    details = "; ".join(f"{f}: {report.errors.get(f, '')} ({n} unreadable records)"
                        for f, n in report.skipped.items())
    raise schema.CorruptedRecordError(
        f"corrupted records in {details}. Pass skip_corrupted=True to skip and count them.")


def _image_decoders(features: tfds.features.FeatureConnector) -> Any:
  """SkipDecoding for every Image feature: images stay encoded until the frame transforms."""
  if isinstance(features, tfds.features.Image):
    return tfds.decode.SkipDecoding()
  if isinstance(features, tfds.features.Sequence):  # Dataset is a Sequence.
    return _image_decoders(features.feature)
  if isinstance(features, tfds.features.FeaturesDict):
    decoders = {k: _image_decoders(v) for k, v in features.items()}
    decoders = {k: v for k, v in decoders.items() if v is not None}
    return decoders or None
  return None


@dataclasses.dataclass
class TrajectorySource:
  """One split of one RLDS dataset on disk, ready to be read as trajectories."""
  dataset_dir: str
  name: str
  split: str
  files: list[str]
  shard_lengths: list[int]
  builder: Any

  @property
  def num_episodes(self) -> int:
    return sum(self.shard_lengths)


def get_source(dataset_dir: str, name: str | None = None, split: str = "train") -> TrajectorySource:
  """Opens `dataset_dir` and checks that `name` is registered and `split` exists."""
  builder = open_builder(dataset_dir)
  name = name or builder.name
  registry.get_standardize_fn(name)  # unknown names fail here, before any reading
  if split not in builder.info.splits:
    raise schema.DatasetError(
        f"dataset {name!r} at {dataset_dir!r} has no split {split!r}; "
        f"splits: {sorted(builder.info.splits.keys())}")
  info = builder.info.splits[split]
  files = [os.fspath(p) for p in info.filepaths]
  missing = [f for f in files if not os.path.exists(f)]
  if missing:
    raise schema.DatasetNotFoundError(f"dataset {name!r}: shard files missing: {missing}")
  return TrajectorySource(os.fspath(dataset_dir), name, split, files, list(info.shard_lengths),
                          builder)


def read_trajectories(
    dataset_dir: str,
    name: str | None = None,
    split: str = "train",
    *,
    shuffle_seed: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    skip_corrupted: bool = False,
    num_parallel_reads: int = 2,
    deterministic: bool = True,
    source: TrajectorySource | None = None,
) -> tf.data.Dataset:
  """Standardized trajectories of one split, one element per episode (a single pass).

  Args:
    dataset_dir: the versioned TFDS folder, e.g. `data/babyai_bosslevel/1.0.0`.
    name: registry name of the dataset; defaults to the name stored in the dataset.
    split: split name.
    shuffle_seed: if set, shard files are read in an order shuffled by this seed (episode ids do
      not change). None reads files in order.
    process_index, process_count: this process's disjoint share of the episodes.
    skip_corrupted: scan the files first and read only intact records; the skipped count is logged
      and stored on the returned dataset as `num_skipped_records`. If False, a shard file with
      fewer records than dataset_info.json says (missing, 0-byte, truncated) raises here, and a
      corrupted record raises (via `iterate_numpy` / `raise_for_corruption`) an error naming
      the file.
    num_parallel_reads: files read concurrently (interleave cycle length).
    deterministic: keep element order a function of the seeds only.
    source: an already opened `get_source(...)` (avoids reopening the builder).

  Returns:
    tf.data.Dataset of trajectories: the common schema plus `episode_id` and `frame_index` [T].
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  source = source or get_source(dataset_dir, name, split)
  name = source.name
  standardize_fn = registry.get_standardize_fn(name)

  take = list(source.shard_lengths)
  num_skipped = 0
  if skip_corrupted:
    report = scan_for_corruption(source.files, source.shard_lengths)
    take = [report.readable[f] for f in source.files]
    num_skipped = report.num_skipped
    if num_skipped:
      tf.get_logger().warning(
          "dataset %s: skipping %d corrupted/unreadable records: %s", name, num_skipped,
          {os.path.basename(f): n for f, n in report.skipped.items()})
  else:
    raise_for_short_shards(source.files, source.shard_lengths)

  # Global index of each file's first record, for record-level process sharding.
  offsets = [sum(source.shard_lengths[:i]) for i in range(len(source.files))]
  file_ids = list(range(len(source.files)))
  shard_by_file = process_count > 1 and len(source.files) >= process_count
  if shard_by_file:
    file_ids = [i for i in file_ids if i % process_count == process_index]

  files_ds = tf.data.Dataset.from_tensor_slices((
      tf.constant([source.files[i] for i in file_ids], tf.string),
      tf.constant([take[i] for i in file_ids], tf.int64),
      tf.constant([offsets[i] for i in file_ids], tf.int64),
  ))
  if shuffle_seed is not None:
    files_ds = files_ds.shuffle(len(file_ids), seed=shuffle_seed, reshuffle_each_iteration=False)

  def read_file(path, count, offset):
    records = tf.data.TFRecordDataset(path).take(count).enumerate()
    basename = tf.strings.split(path, "/")[-1]
    return records.map(lambda idx, record: (basename, idx, offset + idx, record))

  ds = files_ds.interleave(read_file, cycle_length=max(1, num_parallel_reads), block_length=1,
                           num_parallel_calls=num_parallel_reads, deterministic=deterministic)
  if process_count > 1 and not shard_by_file:
    ds = ds.filter(lambda f, i, global_idx, r: global_idx % process_count == process_index)

  features = source.builder.info.features
  decoders = _image_decoders(features)

  def to_trajectory(basename, index, global_index, record):
    del global_index
    episode = features.deserialize_example(record, decoders=decoders)
    raw = {"steps": episode["steps"].batch(_MAX_STEPS).get_single_element()}
    if "episode_metadata" in episode:
      raw["episode_metadata"] = episode["episode_metadata"]
    try:
      traj = dict(standardize_fn(raw))
    except schema.MissingKeyError as e:
      raise schema.MissingKeyError(f"{e} (reading {source.dataset_dir} as {name!r})") from None
    except KeyError as e:
      raise schema.MissingKeyError(
          f"dataset {name!r} ({source.dataset_dir}): standardize function needs key {e} that "
          f"the dataset does not have; it has {sorted(schema.flatten_keys(raw))}") from None
    schema.validate_trajectory(traj, name)
    num_steps = tf.shape(traj["is_first"])[0]
    source_str = traj.pop("episode_source")
    episode_id = tf.strings.join(
        [name, source_str, tf.strings.join([basename, tf.strings.as_string(index)], ":")], "|")
    traj["episode_id"] = tf.fill([num_steps], episode_id)
    traj["frame_index"] = tf.range(num_steps, dtype=tf.int32)
    return traj

  # No autograph: errors raised while tracing (a missing key) surface as themselves.
  ds = ds.map(tf.autograph.experimental.do_not_convert(to_trajectory), num_parallel_calls=num_parallel_reads, deterministic=deterministic)
  ds.num_skipped_records = num_skipped
  ds.source = source
  return ds
