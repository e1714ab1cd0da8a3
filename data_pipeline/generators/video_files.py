"""Converts a folder of video files (mp4/webm/gif) into an action-free RLDS dataset.

Action-free video (Something-Something-v2, human demonstrations, robot videos without logs) is
the main pretraining source of HiLAM's latent action and skill models. This module turns such a
folder into the RLDS layout every other dataset uses, so the reader and its per-dataset
standardize step (`data_pipeline/standardize/video.py`) treat it like any robot dataset.

Written dataset (`<data_dir>/<name>/1.0.0`, name `video_...`), T = frames kept per video:

  steps/observation/image_primary  Image (H, W, 3) JPEG; (None, None, 3) when not resized
  steps/language_instruction       Text, the video's caption ('' when it has none)
  steps/is_first, is_last          bool, True at t = 0 / t = T - 1
  steps/is_terminal                bool, always False: a clip ends by truncation, not because
                                   it reached a terminal state
  episode_metadata/file_path       Text, the video's path relative to the video folder
  episode_metadata/num_source_frames  int32, frames in the source file before subsampling
  episode_metadata/frame_stride    int32, source frames between two kept frames

There is no `action` key. Videos are visited in sorted order of relative path; each goes to
`val` when a hash of (seed, relative path) falls below `val_fraction`, else to `train`, so the
split does not depend on which other files are in the folder. Shards are written one at a time
by `ShardedRLDSWriter`: an interrupted conversion resumes at the first unfinished shard.

Frames are resized to (H, W) by stretching (no crop: the aspect ratio is not kept, as in Octo's
frame transforms), with PIL's area-aware bilinear filter.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import time
from typing import Any, Iterator, Sequence

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from data_pipeline import rlds_writer
from data_pipeline.schema import DatasetError, DatasetNotFoundError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif")
# Column names accepted in a captions file, in order of preference.
KEY_COLUMNS = ("path", "file_path", "relative_path", "filename", "file", "video", "video_id", "id")
CAPTION_COLUMNS = ("caption", "label", "language_instruction", "text", "template")
_NAME_PATTERN = re.compile(r"^video_[a-z0-9_]+$")


class UnreadableVideoError(DatasetError):
  """A video file could not be decoded (corrupt, truncated, unsupported codec, no frames)."""


@dataclasses.dataclass
class ConversionResult:
  """What a conversion wrote; counts cover the shards written by this run only."""
  dataset_dir: str
  num_videos: int                   # videos found in the folder
  num_written: dict[str, int]       # split -> episodes written by this run
  num_resumed_shards: int           # shards already finished by an earlier run, skipped
  unreadable: list[str]             # relative paths skipped (skip_unreadable=True)
  num_missing_captions: int         # videos without a caption (written with '')


def default_name(video_dir: str) -> str:
  """`video_<folder name in snake case>`, e.g. '/data/SSv2 Videos' -> 'video_ssv2_videos'."""
  folder = os.path.basename(os.path.normpath(os.fspath(video_dir)))
  snake = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", folder)
  snake = re.sub(r"[^a-z0-9]+", "_", snake.lower()).strip("_")
  return f"video_{snake or 'videos'}"


def find_videos(video_dir: str, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[str]:
  """Sorted relative paths ('/'-separated) of the video files under `video_dir`, recursively."""
  video_dir = os.fspath(video_dir)
  if not os.path.isdir(video_dir):
    raise DatasetNotFoundError(f"video folder {video_dir!r} does not exist")
  extensions = tuple(e.lower() for e in extensions)
  found = []
  for root, dirs, files in os.walk(video_dir):
    dirs.sort()
    for fname in files:
      if fname.lower().endswith(extensions) and not fname.startswith("."):
        rel = os.path.relpath(os.path.join(root, fname), video_dir)
        found.append(rel.replace(os.sep, "/"))
  if not found:
    raise DatasetNotFoundError(
        f"no video files ({', '.join(extensions)}) found under {video_dir!r}")
  return sorted(found)


def load_captions(path: str) -> dict[str, str]:
  """Reads captions keyed by video id / file stem / relative path.

  A CSV needs a header with one key column (`path`, `file_path`, `filename`, `video_id`, `id`,
  ...) and one caption column (`caption`, `label`, `language_instruction`, `text`, `template`).
  A `.json` file may be Something-Something-v2's label list (`[{"id": ..., "label": ...,
  "template": ...}, ...]`) or a plain {key: caption} object. Keys are stored as given
  ('/'-separated) and without their extension, so either form matches (see `caption_for`).
  """
  if not os.path.exists(path):
    raise DatasetNotFoundError(f"captions file {path!r} does not exist")
  if path.lower().endswith(".json"):
    with open(path) as f:
      data = json.load(f)
    rows = list(data.items()) if isinstance(data, dict) else [
        (_pick(row, KEY_COLUMNS, path), _pick(row, CAPTION_COLUMNS, path)) for row in data]
  else:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      header = {c.strip().lower(): c for c in reader.fieldnames or [] if c}
      key_col = next((header[c] for c in KEY_COLUMNS if c in header), None)
      caption_col = next((header[c] for c in CAPTION_COLUMNS if c in header), None)
      if key_col is None or caption_col is None:
        raise DatasetError(
            f"captions file {path!r} has columns {list(header)}; it needs a header with a key "
            f"column (one of {KEY_COLUMNS}) and a caption column (one of {CAPTION_COLUMNS})")
      rows = [(row[key_col], row[caption_col]) for row in reader]
  captions = {}
  for key, caption in rows:
    key = str(key).strip().replace("\\", "/")
    key = key[2:] if key.startswith("./") else key
    caption = "" if caption is None else str(caption).strip()
    captions[key] = caption
    captions.setdefault(os.path.splitext(key)[0], caption)
  return captions


def _pick(row: dict, columns: Sequence[str], path: str) -> Any:
  for column in columns:
    if column in row:
      return row[column]
  raise DatasetError(f"captions file {path!r}: entry {row} has none of the keys {columns}")


def caption_for(rel_path: str, captions: dict[str, str]) -> str | None:
  """Caption of a video by relative path, path without extension, or file stem; None if none."""
  no_ext = os.path.splitext(rel_path)[0]
  for key in (rel_path, no_ext, no_ext.rsplit("/", 1)[-1]):
    if key in captions:
      return captions[key]
  return None


def is_val(rel_path: str, val_fraction: float, seed: int) -> bool:
  """Deterministic split: a hash of (seed, relative path) mapped to [0, 1) vs val_fraction."""
  digest = hashlib.sha256(f"{seed}:{rel_path}".encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction


def read_video(path: str, frame_stride: int = 1, target_fps: float | None = None,
               max_frames: int | None = None,
               resize: Sequence[int] | None = None) -> tuple[np.ndarray, int, int]:
  """Decodes a video; returns (frames uint8 [T, H, W, 3], num_source_frames, stride used).

  Keeps every `stride`-th source frame, starting with the first, at most `max_frames` of them.
  With `target_fps` the stride is round(source fps / target_fps) (at least 1) and `frame_stride`
  is ignored, unless the file does not tell its frame rate. All source frames are counted, even
  past `max_frames`, so `num_source_frames` is the length of the file. Raises
  UnreadableVideoError naming the file.
  """
  if frame_stride < 1:
    raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
  try:
    frames_iter, fps = _open(path)
    stride = frame_stride
    if target_fps and fps and fps > 0:
      stride = max(1, round(fps / target_fps))
    kept, count = [], 0
    for frame in frames_iter:
      if count % stride == 0 and (max_frames is None or len(kept) < max_frames):
        kept.append(_to_rgb(frame, resize))
      count += 1
  except Exception as e:  # imageio/ffmpeg/PIL raise many types; all mean "cannot decode".
    raise UnreadableVideoError(f"cannot decode video {path}: {_first_line(e)}") from e
  if not kept:
    raise UnreadableVideoError(f"cannot decode video {path}: it has no frames")
  return np.stack(kept), count, stride


def _open(path: str) -> tuple[Iterator[np.ndarray], float | None]:
  """A frame iterator and the frame rate (None if unknown); ffmpeg for video, PIL for gif."""
  import imageio  # Optional dependency (extras "sim"): imported where needed.
  import imageio.v3 as iio

  if path.lower().endswith(".gif"):
    meta = iio.immeta(path, plugin="pillow")
    duration_ms = meta.get("duration") or 0
    fps = 1000.0 / duration_ms if duration_ms else None
    return iio.imiter(path, plugin="pillow", mode="RGB"), fps
  reader = imageio.v2.get_reader(path, format="FFMPEG")
  fps = reader.get_meta_data().get("fps")

  def frames():
    try:
      yield from reader
    finally:
      reader.close()

  return frames(), fps


def _to_rgb(frame: np.ndarray, resize: Sequence[int] | None) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.ndim == 2:
    frame = np.repeat(frame[..., None], 3, axis=-1)
  frame = frame[..., :3].astype(np.uint8)
  if resize is not None:
    height, width = int(resize[0]), int(resize[1])
    if frame.shape[:2] != (height, width):
      frame = np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))
  return frame


def _file_sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _first_line(error: Exception) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f"{type(error).__name__}: {lines[0] if lines else ''}"


def video_features(resize: Sequence[int] | None) -> Any:
  """The episode features of a converted video dataset (see the module docstring)."""
  shape = (int(resize[0]), int(resize[1]), 3) if resize is not None else (None, None, 3)
  return rlds_writer.episode_features(
      step_features={
          "observation": {
              "image_primary": tfds.features.Image(
                  shape=shape, encoding_format="jpeg", doc="Video frame, RGB."),
          },
          "language_instruction": tfds.features.Text(
              doc="The video's caption, the same on every step ('' if none)."),
          "is_first": tfds.features.Scalar(np.bool_, doc="True on the first kept frame."),
          "is_last": tfds.features.Scalar(np.bool_, doc="True on the last kept frame."),
          "is_terminal": tfds.features.Scalar(
              np.bool_, doc="Always False: a clip ends by truncation."),
      },
      metadata_features={
          "file_path": tfds.features.Text(doc="Video path relative to the video folder."),
          "num_source_frames": tfds.features.Scalar(
              np.int32, doc="Frames in the source video before subsampling."),
          "frame_stride": tfds.features.Scalar(
              np.int32, doc="Source frames between two kept frames."),
      })


def convert_videos(
    video_dir: str,
    data_dir: str,
    *,
    name: str | None = None,
    captions_csv: str | None = None,
    resize: Sequence[int] | None = (64, 64),
    frame_stride: int = 1,
    target_fps: float | None = None,
    max_frames: int | None = None,
    episodes_per_shard: int = 64,
    val_fraction: float = 0.05,
    seed: int = 0,
    skip_unreadable: bool = False,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    log_every_seconds: float = 30.0,
) -> ConversionResult:
  """Converts every video under `video_dir` into the RLDS dataset `<data_dir>/<name>/1.0.0`.

  Args:
    video_dir: folder searched recursively for files ending in `extensions`.
    data_dir: parent folder of the dataset.
    name: dataset name, must start with `video_`; default `default_name(video_dir)`.
    captions_csv: optional captions file (see `load_captions`); videos without one get ''.
    resize: (H, W) of the stored frames, or None to keep each video's size.
    frame_stride: keep every `frame_stride`-th source frame.
    target_fps: if set, the stride is chosen per video to approach this frame rate.
    max_frames: keep at most this many frames per video (None: all).
    episodes_per_shard: videos per shard file, the unit of resumption.
    val_fraction: expected fraction of videos in the `val` split.
    seed: changes which videos go to `val`.
    skip_unreadable: skip (and count) undecodable videos instead of raising.
    extensions: file name endings that count as videos.
    log_every_seconds: progress logging interval.

  Returns:
    A ConversionResult.

  Raises:
    DatasetNotFoundError: missing folder or captions file, or no videos in the folder.
    UnreadableVideoError: a video cannot be decoded and `skip_unreadable` is False.
  """
  name = name or default_name(video_dir)
  if not _NAME_PATTERN.match(name):
    raise ValueError(f"dataset name {name!r} must match {_NAME_PATTERN.pattern} (the `video_*` "
                     "prefix selects the video standardize function)")
  if resize is not None and (len(resize) != 2 or min(resize) < 1):
    raise ValueError(f"resize must be (H, W) with positive sizes or None, got {resize}")
  if episodes_per_shard < 1 or frame_stride < 1:
    raise ValueError("episodes_per_shard and frame_stride must be >= 1")
  videos = find_videos(video_dir, extensions)
  captions = load_captions(captions_csv) if captions_csv else {}
  resize = None if resize is None else (int(resize[0]), int(resize[1]))
  settings = dict(
      video_dir=os.path.abspath(video_dir), captions_csv=captions_csv, resize=resize,
      frame_stride=frame_stride, target_fps=target_fps, max_frames=max_frames,
      episodes_per_shard=episodes_per_shard, val_fraction=val_fraction, seed=seed,
      # skip_unreadable is left out on purpose: after a run stopped at an unreadable video, a
      # rerun with skip_unreadable=True resumes (the finished shards are the same either way).
      # A folder or captions file that changed since the interrupted run must not be resumed.
      num_videos=len(videos),
      videos_sha256=hashlib.sha256("\n".join(videos).encode()).hexdigest(),
      captions_sha256=_file_sha256(captions_csv) if captions_csv else None)
  writer = rlds_writer.ShardedRLDSWriter(
      data_dir, name, video_features(resize),
      description=f"Action-free video converted by {__name__} from {video_dir}.",
      config=settings)

  splits: dict[str, list[str]] = {"train": [], "val": []}
  for rel in videos:
    splits["val" if is_val(rel, val_fraction, seed) else "train"].append(rel)
  missing = [rel for rel in videos if caption_for(rel, captions) is None]
  if missing:
    logging.warning("%d of %d videos have no caption (written with ''), e.g. %s",
                    len(missing), len(videos), missing[:5])

  unreadable: list[str] = []
  written = {split: 0 for split in splits}
  resumed = 0
  progress = _Progress(len(videos), log_every_seconds)
  for split, rels in splits.items():
    num_shards = math.ceil(len(rels) / episodes_per_shard)
    for index in range(num_shards):
      shard = rels[index * episodes_per_shard:(index + 1) * episodes_per_shard]
      if writer.is_done(split, index):
        resumed += 1
        progress.update(len(shard), resumed=True)
        continue
      episodes = _episodes(video_dir, shard, captions, resize, frame_stride, target_fps,
                           max_frames, skip_unreadable, unreadable, progress)
      written[split] += writer.write_shard(split, index, num_shards, episodes)
  logging.info("converted %d videos into %s: written %s, %d shards resumed, %d unreadable "
               "skipped", len(videos), writer.dataset_dir, written, resumed, len(unreadable))
  dataset_dir = writer.finalize()
  return ConversionResult(dataset_dir, len(videos), written, resumed, unreadable, len(missing))


def convert_from_config(config: Any, data_dir: str) -> ConversionResult:
  """`convert_videos` with the fields of `experiments/configs/convert_videos.py`."""
  if not config.video_dir:
    raise ValueError("config.video_dir is required (--config.video_dir=/path/to/videos)")
  return convert_videos(
      config.video_dir, data_dir, name=config.name, captions_csv=config.captions_csv,
      resize=None if config.resize is None else tuple(config.resize),
      frame_stride=config.frame_stride, target_fps=config.target_fps,
      max_frames=config.max_frames, episodes_per_shard=config.episodes_per_shard,
      val_fraction=config.val_fraction, seed=config.seed,
      skip_unreadable=config.skip_unreadable, extensions=tuple(config.extensions))


def _episodes(video_dir, rels, captions, resize, frame_stride, target_fps, max_frames,
              skip_unreadable, unreadable, progress) -> Iterator[dict]:
  """Decodes one shard's videos lazily (one video in memory at a time)."""
  for rel in rels:
    try:
      frames, num_source, stride = read_video(
          os.path.join(video_dir, rel), frame_stride, target_fps, max_frames, resize)
    except UnreadableVideoError as e:
      if not skip_unreadable:
        raise UnreadableVideoError(
            f"{e}\n(set skip_unreadable=True to skip and count such files)") from e
      logging.warning("skipping unreadable video %s: %s", rel, e)
      unreadable.append(rel)
      progress.update(1)
      continue
    num_steps = len(frames)
    caption = caption_for(rel, captions) or ""
    yield {
        "steps": {
            "observation": {"image_primary": frames},
            "language_instruction": [caption] * num_steps,
            "is_first": np.arange(num_steps) == 0,
            "is_last": np.arange(num_steps) == num_steps - 1,
            "is_terminal": np.zeros(num_steps, bool),
        },
        "episode_metadata": {
            "file_path": rel,
            "num_source_frames": np.int32(num_source),
            "frame_stride": np.int32(stride),
        },
    }
    progress.update(1)


class _Progress:
  """Logs videos done and the decoding rate (videos/s) every `every` seconds."""

  def __init__(self, total: int, every: float):
    self.total, self.every = total, every
    self.done = self.resumed = 0
    self.start = self.last = time.monotonic()

  def update(self, n: int, resumed: bool = False) -> None:
    self.done += n
    self.resumed += n if resumed else 0
    now = time.monotonic()
    if now - self.last >= self.every or self.done == self.total:
      self.last = now
      rate = (self.done - self.resumed) / max(now - self.start, 1e-9)
      logging.info("videos %d / %d (%d in resumed shards), %.1f videos/s", self.done, self.total,
                   self.resumed, rate)
