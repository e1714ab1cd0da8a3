"""Writes RLDS datasets with tensorflow-datasets directly (no dm-reverb / rlds package).

An RLDS dataset is a TFDS dataset whose examples are episodes: a `steps` sub-dataset of per-step
features plus `episode_metadata`. `ShardedRLDSWriter` writes one shard file at a time, atomically
(temporary file + rename) and records each finished shard in a small progress file, so a generator
that is interrupted resumes where it stopped: it asks `is_done(split, index)` and skips finished
shards. `finalize()` writes `dataset_info.json` / `features.json`, after which the folder reads with
`tfds.builder_from_directory(writer.dataset_dir)`.

Layout: `<data_dir>/<name>/<version>/<name>-<split>.tfrecord-0000i-of-0000N`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

from data_pipeline import run_info

_PROGRESS_DIR = "_progress"
_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def episode_features(
    step_features: Mapping[str, Any],
    metadata_features: Mapping[str, Any] | None = None,
) -> tfds.features.FeaturesDict:
  """RLDS episode features: `steps` (a tfds Dataset of `step_features`) + `episode_metadata`."""
  features = {"steps": tfds.features.Dataset(dict(step_features))}
  if metadata_features:
    features["episode_metadata"] = dict(metadata_features)
  return tfds.features.FeaturesDict(features)


class ShardedRLDSWriter:
  """Writes an RLDS dataset shard by shard; resumable.

  Args:
    data_dir: parent folder; the dataset goes to `<data_dir>/<name>/<version>`.
    name: dataset name (also the file prefix), e.g. `babyai_bosslevel`.
    features: episode features, usually from `episode_features`.
    version: dataset version string.
    description: free text stored in dataset_info.json (generator, config, seed...).
    config: JSON-serializable generation config. A resumed run must pass the same config: shards
      written under another config are refused rather than silently mixed.
  """

  def __init__(
      self,
      data_dir: str,
      name: str,
      features: tfds.features.FeaturesDict,
      version: str = "1.0.0",
      description: str = "",
      config: Mapping[str, Any] | None = None,
  ):
    self.name = name
    self.version = version
    self.features = features
    self.description = description
    self.dataset_dir = os.path.join(os.fspath(data_dir), name, version)
    self._serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    self._progress_dir = os.path.join(self.dataset_dir, _PROGRESS_DIR)
    os.makedirs(self._progress_dir, exist_ok=True)
    self._config = json.loads(json.dumps(dict(config or {}), sort_keys=True))
    config_path = os.path.join(self._progress_dir, "config.json")
    if os.path.exists(config_path):
      with open(config_path) as f:
        previous = json.load(f)
      if previous != self._config:
        raise ValueError(
            f"{self.dataset_dir} holds a partial dataset generated with another config:\n"
            f"  on disk: {previous}\n  now:     {self._config}\n"
            "Delete the folder or rerun with the same settings to resume.")
    else:
      run_info.write_json_atomic(config_path, self._config)

  def is_finalized(self) -> bool:
    return os.path.exists(os.path.join(self.dataset_dir, "dataset_info.json"))

  def shard_path(self, split: str, index: int, num_shards: int) -> str:
    return os.path.join(
        self.dataset_dir,
        f"{self.name}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}")

  def _record_path(self, split: str, index: int) -> str:
    return os.path.join(self._progress_dir, f"{split}-{index:05d}.json")

  def is_done(self, split: str, index: int) -> bool:
    """True if shard `index` of `split` was completely written by an earlier run (its progress
    record exists and parses; a damaged one is warned about and the shard is redone)."""
    return run_info.read_done_json(self._record_path(split, index)) is not None

  def write_shard(self, split: str, index: int, num_shards: int,
                  episodes: Iterable[Mapping[str, Any]]) -> int:
    """Encodes and writes `episodes` (nested dicts of numpy, `steps` a dict of [T, ...] arrays
    or a list of step dicts) as one shard; returns the episode count."""
    if not 0 <= index < num_shards:
      raise ValueError(f"shard index {index} outside [0, {num_shards})")
    path = self.shard_path(split, index, num_shards)
    tmp_path = path + ".tmp"
    count, num_bytes = 0, 0
    try:
      with tf.io.TFRecordWriter(tmp_path) as writer:
        for episode in episodes:
          try:
            serialized = self._serialize(episode)
          except Exception as e:
            raise ValueError(
                f"could not encode episode {count} of {split} shard {index} for dataset "
                f"{self.name}: {e}") from e
          writer.write(serialized)
          count += 1
          num_bytes += len(serialized)
    except BaseException:  # an interrupted shard leaves nothing behind; a rerun redoes it
      if os.path.exists(tmp_path):
        os.remove(tmp_path)
      raise
    os.replace(tmp_path, path)
    run_info.write_json_atomic(self._record_path(split, index),
                               {"num_examples": count, "num_bytes": num_bytes,
                                "num_shards": num_shards})
    return count

  def _serialize(self, episode: Mapping[str, Any]) -> bytes:
    """Encodes one episode to bytes that depend on the data only.

    tfds' own `serialize_example` writes the tf.train.Example feature map in hash-table order,
    which differs between processes with the upb protobuf backend; sorted-key serialization
    makes a shard's bytes identical however many worker processes generated it.
    """
    encoded = self.features.encode_example(_steps_as_list(episode))
    return self._serializer.get_tf_example(encoded).SerializeToString(deterministic=True)

  def finalize(self) -> str:
    """Writes the TFDS metadata for every split with recorded shards; returns the dataset dir."""
    records: dict[str, dict[int, dict]] = {}
    for fname in sorted(os.listdir(self._progress_dir)):
      if fname == "config.json" or not fname.endswith(".json"):
        continue
      split, index = fname[:-len(".json")].rsplit("-", 1)
      record = run_info.read_done_json(os.path.join(self._progress_dir, fname))
      if record is not None:  # a damaged record: that shard is reported missing below
        records.setdefault(split, {})[int(index)] = record
    if not records:
      raise ValueError(f"no finished shards in {self.dataset_dir}")
    split_infos = []
    for split, shards in records.items():
      num_shards = next(iter(shards.values()))["num_shards"]
      missing = sorted(set(range(num_shards)) - set(shards))
      if missing:
        raise ValueError(f"split {split!r} of {self.dataset_dir} misses shards {missing}")
      split_infos.append(tfds.core.SplitInfo(
          name=split,
          shard_lengths=[shards[i]["num_examples"] for i in range(num_shards)],
          num_bytes=sum(shards[i]["num_bytes"] for i in range(num_shards))))
    tfds.folder_dataset.write_metadata(
        data_dir=self.dataset_dir,
        features=self.features,
        split_infos=split_infos,
        filename_template=_TEMPLATE,
        check_data=False,
        description=self.description)
    run_info.write_run_info(self.dataset_dir, self._config, filename="generation_info.json")
    return self.dataset_dir


def _steps_as_list(episode: Mapping[str, Any]) -> dict:
  """tfds Dataset features encode a list of step dicts; accept a dict of [T, ...] arrays too."""
  episode = dict(episode)
  steps = episode["steps"]
  if isinstance(steps, Mapping):
    steps = _unstack(steps)
  episode["steps"] = steps
  return episode


def _unstack(tree: Mapping[str, Any]) -> list[dict]:
  flat = {}

  def visit(prefix, node):
    for key, value in node.items():
      if isinstance(value, Mapping):
        visit(prefix + (key,), value)
      else:
        flat[prefix + (key,)] = value

  visit((), tree)
  lengths = {k: len(v) for k, v in flat.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"step arrays have different lengths: {lengths}")
  num_steps = next(iter(lengths.values()))
  steps = []
  for t in range(num_steps):
    step: dict = {}
    for path, value in flat.items():
      node = step
      for key in path[:-1]:
        node = node.setdefault(key, {})
      node[path[-1]] = value[t]
    steps.append(step)
  return steps
