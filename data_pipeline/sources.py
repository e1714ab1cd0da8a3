"""Data sources of the main job: existing RLDS datasets and folders of video files, as RLDS.

A data spec of the main job (`config.video`, `config.demos`) is either a world's generator spec
(the world makes the data) or names its sources:

  sources:
    <source name>:                     any name (the mixture's label in logs and summaries)
      rlds: <tfds dir>/<name>/<version>  an RLDS dataset read through the standardize registry
      videos: <folder>                 or a folder of video files (mp4 / webm / gif), converted
                                       once into an action-free RLDS dataset
      weight: 1.0                      sampling weight in the mixture (frames, not episodes);
                                       0 with no path leaves a config's source out
      captions: <csv or SSv2 json>     (videos) captions file, see generators/video_files.py
      resize: (H, W)                   (videos) stored frame size
      frame_stride, max_frames         (videos) subsampling, as generators/video_files.py
  val_fraction: 0.05                   share held out as `val`: of the shards of an RLDS dataset
                                       that has only a `train` split (e.g. the LIBERO releases),
                                       of a folder's videos; a source's own val_fraction wins

`resolve_sources` returns one DatasetSpec dict per source ({"dataset_dir", "weight"}), each
with a `train` and a `val` split:

* an RLDS dataset that has both splits is used where it is (nothing is copied);
* one with only `train` gets a *split view* under `<data_dir>/views/`: a dataset folder whose
  shard files are symbolic links to the original's, the last `ceil(val_fraction * shards)`
  shards named `val` and the others `train`, with the original's features and metadata (whole
  shards, so no episode is read to split them; TFDS writers shuffle episodes across shards);
* a video folder is converted into `<data_dir>/videos/<fingerprint>/`, where the fingerprint
  hashes every file's relative path, size and modification time with the conversion settings:
  a rerun reuses the conversion while the folder is unchanged and converts again (into a new
  folder) when a file was added, removed or changed; an interrupted conversion resumes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from typing import Any, Mapping

from absl import logging

from data_pipeline import reader
from data_pipeline import run_info
from data_pipeline.schema import DatasetError

SOURCE_KINDS = ("rlds", "videos")
VIDEO_FIELDS = {"captions": None, "resize": (64, 64), "frame_stride": 1, "max_frames": None,
                "val_fraction": 0.05, "episodes_per_shard": 64}
VIEW_INFO = "split_view.json"


def has_sources(spec: Any) -> bool:
  """True if a data spec names its sources (else it is a world's generator spec)."""
  return hasattr(spec, "get") and spec.get("sources", None) is not None


def _fields(source: Any) -> dict:
  return dict(source.to_dict() if hasattr(source, "to_dict") else source)


def check_sources(spec: Any, what: str) -> dict[str, dict]:
  """The sources of a data spec as plain dicts, refused with a clear error if malformed (before
  any work)."""
  sources = _fields(spec["sources"])
  if not sources:
    raise ValueError(f"{what}.sources is empty: name at least one RLDS dataset or video folder")
  out = {}
  for name, source in sources.items():
    source = _fields(source)
    if not any(source.get(k) for k in SOURCE_KINDS) and source.get("weight", 1.0) == 0:
      continue  # a source of the config left out: no path, weight 0
    unset = [k for k in SOURCE_KINDS if k in source and not source[k]]
    if unset and not any(source.get(k) for k in SOURCE_KINDS):
      raise ValueError(f"{what}.sources.{name}.{unset[0]} is not set: "
                       f"--config.{what}.sources.{name}.{unset[0]}=<path>")
    kinds = [k for k in SOURCE_KINDS if source.get(k)]
    if len(kinds) != 1:
      raise ValueError(f"{what}.sources.{name}: give exactly one of 'rlds' (a dataset folder) "
                       f"or 'videos' (a folder of video files), got {source}")
    unknown = set(source) - {*SOURCE_KINDS, "weight", *VIDEO_FIELDS}
    if unknown:
      raise ValueError(f"{what}.sources.{name}: unknown fields {sorted(unknown)}")
    if kinds[0] == "rlds" and set(source) & (set(VIDEO_FIELDS) - {"val_fraction"}):
      raise ValueError(f"{what}.sources.{name}: {sorted(set(source) & set(VIDEO_FIELDS))} "
                       "apply to video folders only")
    weight = float(1.0 if source.get("weight") is None else source["weight"])
    if weight < 0:
      raise ValueError(f"{what}.sources.{name}: weight {weight} < 0")
    path = source[kinds[0]]
    if not os.path.isdir(path):
      raise DatasetError(f"{what}.sources.{name}: no folder at {path!r}")
    out[name] = dict(source, kind=kinds[0], weight=weight)
  if not out:
    raise ValueError(f"{what}.sources: every source is left out (weight 0, no path)")
  if sum(s["weight"] for s in out.values()) <= 0:
    raise ValueError(f"{what}.sources: the weights must have a positive sum")
  return out


def resolve_sources(spec: Any, data_dir: str, what: str = "data") -> list[dict]:
  """[{"dataset_dir", "weight", "source", "kind"}] of a data spec's sources (module docstring),
  each with `train` and `val` splits; converts and builds split views as needed."""
  default_fraction = spec.get("val_fraction", VIDEO_FIELDS["val_fraction"])
  out = []
  for name, source in check_sources(spec, what).items():
    # A source's own val_fraction, else the spec's.
    if source.get("val_fraction") is None:
      source["val_fraction"] = default_fraction
    if source["kind"] == "rlds":
      dataset_dir = with_val_split(source["rlds"], os.path.join(data_dir, "views"),
                                   float(source["val_fraction"] or 0.0))
    else:
      dataset_dir = convert_video_folder(source, os.path.join(data_dir, "videos"))
    out.append({"dataset_dir": dataset_dir, "weight": source["weight"], "source": name,
                "kind": source["kind"]})
  return out


# ----------------------------------------------------------------------------- split views


def with_val_split(dataset_dir: str, views_dir: str, val_fraction: float) -> str:
  """`dataset_dir` if it has a `val` split, else a split view of it (module docstring)."""
  builder = reader.open_builder(dataset_dir)
  splits = set(builder.info.splits.keys())
  if "val" in splits and "train" in splits:
    return os.fspath(dataset_dir)
  if "train" not in splits:
    raise DatasetError(f"{dataset_dir}: no 'train' split (splits: {sorted(splits)})")
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"{dataset_dir} has no 'val' split and val_fraction={val_fraction}: give a "
                     "val_fraction in (0, 1) to hold out shards as validation")
  source = reader.get_source(dataset_dir, split="train")
  files, lengths = source.files, source.shard_lengths
  if len(files) < 2:
    raise DatasetError(f"{dataset_dir}: its 'train' split is one shard file; a held-out 'val' "
                       "split needs at least two (whole shards are held out)")
  num_val = min(len(files) - 1, max(1, math.ceil(val_fraction * len(files))))
  identity = {"source": os.path.abspath(dataset_dir), "val_fraction": val_fraction,
              "files": [[os.path.basename(f), os.path.getsize(f), os.stat(f).st_mtime_ns]
                        for f in files]}
  digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
  version = builder.info.version
  view = os.path.join(views_dir, f"{builder.name}-{digest}", builder.name, str(version))
  if run_info.read_done_json(os.path.join(view, VIEW_INFO)) is not None:
    return view
  tmp = view + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  template = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
  parts = {"train": list(range(len(files) - num_val)),
           "val": list(range(len(files) - num_val, len(files)))}
  split_infos = []
  for split, indices in parts.items():
    for j, i in enumerate(indices):
      os.symlink(os.path.abspath(files[i]), os.path.join(
          tmp, f"{builder.name}-{split}.tfrecord-{j:05d}-of-{len(indices):05d}"))
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[lengths[i] for i in indices],
        num_bytes=sum(os.path.getsize(files[i]) for i in indices)))
  tfds.folder_dataset.write_metadata(
      data_dir=tmp, features=builder.info.features, split_infos=split_infos,
      filename_template=template, check_data=False,
      description=f"Split view of {dataset_dir}: its last {num_val} of {len(files)} train "
                  "shards as 'val' (symbolic links).")
  run_info.write_json_atomic(os.path.join(tmp, VIEW_INFO),
                             dict(identity, num_val_shards=num_val,
                                  episodes={s: sum(i.shard_lengths) for s, i in
                                            zip(parts, split_infos)}))
  shutil.rmtree(view, ignore_errors=True)
  os.makedirs(os.path.dirname(view), exist_ok=True)
  os.replace(tmp, view)
  logging.info("%s has no 'val' split: %d of its %d shards held out as 'val' in %s",
               dataset_dir, num_val, len(files), view)
  return view


# ----------------------------------------------------------------------------- video folders


def folder_fingerprint(folder: str, settings: Mapping[str, Any]) -> str:
  """A hash of every video file's relative path, size and mtime, and the conversion settings."""
  from data_pipeline.generators import video_files  # pylint: disable=g-import-not-at-top
  entries = []
  for rel in video_files.find_videos(folder):
    stat = os.stat(os.path.join(folder, rel))
    entries.append([rel, stat.st_size, stat.st_mtime_ns])
  captions = settings.get("captions")
  if captions:
    stat = os.stat(captions)
    entries.append(["<captions>", os.path.abspath(captions), stat.st_size, stat.st_mtime_ns])
  payload = json.dumps({"files": entries, "settings": dict(settings)}, sort_keys=True,
                       default=list)
  return hashlib.sha256(payload.encode()).hexdigest()[:12]


def convert_video_folder(source: Mapping[str, Any], videos_dir: str) -> str:
  """The action-free RLDS dataset of a video folder (module docstring); converts if needed."""
  from data_pipeline.generators import video_files  # pylint: disable=g-import-not-at-top
  settings = {k: default if source.get(k) is None else source[k]
              for k, default in VIDEO_FIELDS.items()}
  settings["resize"] = None if settings["resize"] is None else [int(x)
                                                                 for x in settings["resize"]]
  folder = source["videos"]
  data_dir = os.path.join(videos_dir, folder_fingerprint(folder, settings))
  name = video_files.default_name(folder)
  dataset_dir = os.path.join(data_dir, name, "1.0.0")
  if os.path.exists(os.path.join(dataset_dir, "dataset_info.json")):
    logging.info("videos of %s: unchanged since their conversion, reusing %s", folder,
                 dataset_dir)
  else:
    if os.path.isdir(videos_dir) and os.listdir(videos_dir):
      logging.info("videos of %s: not converted with these files and settings yet (earlier "
                   "conversions in %s are left as they are)", folder, videos_dir)
    dataset_dir = video_files.convert_videos(
        folder, data_dir, name=name, captions_csv=settings["captions"],
        resize=settings["resize"], frame_stride=int(settings["frame_stride"]),
        max_frames=settings["max_frames"], val_fraction=float(settings["val_fraction"]),
        episodes_per_shard=int(settings["episodes_per_shard"])).dataset_dir
  splits = set(reader.open_builder(dataset_dir).info.splits.keys())
  if splits != {"train", "val"}:
    raise DatasetError(f"videos of {folder}: the conversion {dataset_dir} has splits "
                       f"{sorted(splits)}; with val_fraction={settings['val_fraction']} one "
                       "split got no video: add videos or change val_fraction")
  return dataset_dir
