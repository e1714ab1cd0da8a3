"""Video files -> action-free RLDS: real mp4/gif files written here, converted, read back."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipeline import reader
from data_pipeline import schema
from data_pipeline.generators import video_files
from data_pipeline.standardize import video as video_standardize
from experiments.configs import convert_videos as convert_videos_config

imageio = pytest.importorskip("imageio")
pytest.importorskip("imageio_ffmpeg")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_HW = (48, 64)
# relative path -> number of frames
VIDEOS = {"clip_a.mp4": 10, "sub/clip_b.mp4": 14, "sub/deeper/clip_c.mp4": 20, "anim.gif": 12}
CAPTIONS_CSV = (
    "path,caption\n"
    "clip_a,push the red square right\n"         # by file stem
    "sub/clip_b.mp4,\"move it, then stop\"\n"    # by relative path, quoted comma
    "anim,wave the flag\n"
    "not_there.mp4,unused\n")                    # clip_c has no caption


def _frames(num_frames: int, seed: int) -> np.ndarray:
  """A coloured square moving over a flat background (codec-friendly: large flat areas)."""
  rng = np.random.default_rng(seed)
  height, width = SOURCE_HW
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  frames[:] = rng.integers(0, 120, 3)
  color = rng.integers(150, 256, 3)
  for t in range(num_frames):
    y, x = 8 + t % 16, 2 * t % 40
    frames[t, y:y + 16, x:x + 16] = color
  return frames


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos") / "My Clips"
  for seed, (rel, num_frames) in enumerate(VIDEOS.items()):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _frames(num_frames, seed)
    if rel.endswith(".gif"):
      imageio.v3.imwrite(path, frames, plugin="pillow", duration=100, loop=0)
    else:
      imageio.v2.mimwrite(path, frames, format="FFMPEG", fps=10, macro_block_size=1)
  (root / "notes.txt").write_text("not a video")
  captions = root.parent / "captions.csv"
  captions.write_text(CAPTIONS_CSV)
  return root


@pytest.fixture(scope="module")
def converted(video_dir, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("rlds")
  result = video_files.convert_videos(
      video_dir, data_dir, captions_csv=str(video_dir.parent / "captions.csv"), resize=(32, 32),
      episodes_per_shard=2, val_fraction=0.5, seed=3)
  return result, data_dir


def _source_frames(rel: str, resize) -> np.ndarray:
  frames = _frames(VIDEOS[rel], list(VIDEOS).index(rel))
  return np.stack([video_files._to_rgb(f, resize) for f in frames])


def _read_back(dataset_dir):
  """{file_path: (frames uint8 [T,H,W,3], captions, is_first, is_last, metadata)} over splits."""
  builder = tfds.builder_from_directory(dataset_dir)
  episodes = {}
  for split in builder.info.splits:
    for episode in tfds.as_numpy(builder.as_dataset(split=split)):
      steps = list(episode["steps"])
      rel = episode["episode_metadata"]["file_path"].decode()
      episodes[rel] = dict(
          split=split,
          frames=np.stack([s["observation"]["image_primary"] for s in steps]),
          captions=[s["language_instruction"].decode() for s in steps],
          is_first=[bool(s["is_first"]) for s in steps],
          is_last=[bool(s["is_last"]) for s in steps],
          metadata=episode["episode_metadata"])
  return builder, episodes


def test_convert_and_read_back(converted):
  result, data_dir = converted
  assert result.dataset_dir == os.path.join(data_dir, "video_my_clips", "1.0.0")
  assert result.num_videos == 4 and not result.unreadable
  assert result.num_missing_captions == 1
  builder, episodes = _read_back(result.dataset_dir)
  assert "action" not in builder.info.features["steps"]
  assert builder.info.features["steps"]["observation"]["image_primary"].shape == (32, 32, 3)
  assert sorted(episodes) == sorted(VIDEOS)
  expected_captions = {"clip_a.mp4": "push the red square right",
                       "sub/clip_b.mp4": "move it, then stop",
                       "sub/deeper/clip_c.mp4": "", "anim.gif": "wave the flag"}
  for rel, episode in episodes.items():
    num_frames = VIDEOS[rel]
    assert episode["frames"].shape == (num_frames, 32, 32, 3), rel
    error = np.abs(episode["frames"].astype(float) - _source_frames(rel, (32, 32))).mean()
    assert error < 8.0, (rel, error)  # h264 + JPEG; the gif is lossless before JPEG
    assert episode["captions"] == [expected_captions[rel]] * num_frames
    assert episode["is_first"] == [True] + [False] * (num_frames - 1)
    assert episode["is_last"] == [False] * (num_frames - 1) + [True]
    assert episode["metadata"]["num_source_frames"] == num_frames
    assert episode["metadata"]["frame_stride"] == 1
    # Deterministic split by hash of the relative path.
    assert episode["split"] == ("val" if video_files.is_val(rel, 0.5, 3) else "train")


def test_standardize_eager_and_in_reader(converted):
  result, _ = converted
  builder = tfds.builder_from_directory(result.dataset_dir)
  split = next(iter(builder.info.splits))
  decoders = {"steps": {"observation": {"image_primary": tfds.decode.SkipDecoding()}}}
  episode = next(iter(builder.as_dataset(split=split, decoders=decoders)))
  raw = {"steps": episode["steps"].batch(10_000).get_single_element(),
         "episode_metadata": episode["episode_metadata"]}
  traj = video_standardize.standardize_video(raw)  # eager
  schema.validate_trajectory(traj, "video_my_clips")
  assert traj["observation"]["image_primary"].dtype == tf.string
  assert "action" not in traj
  assert traj["episode_source"].numpy().decode() in VIDEOS

  seen = {}
  for split in builder.info.splits:  # in tf.data, through the registry
    for traj in reader.read_trajectories(result.dataset_dir, split=split).as_numpy_iterator():
      seen[traj["episode_id"][0].decode().split("|")[1]] = len(traj["frame_index"])
      assert set(traj) == {"observation", "language_instruction", "is_first", "is_last",
                           "episode_id", "frame_index"}
  assert seen == VIDEOS


def test_resume_skips_finished_shards(converted, video_dir):
  result, data_dir = converted
  again = video_files.convert_videos(
      video_dir, data_dir, captions_csv=str(video_dir.parent / "captions.csv"), resize=(32, 32),
      episodes_per_shard=2, val_fraction=0.5, seed=3)
  assert sum(again.num_written.values()) == 0 and again.num_resumed_shards >= 2
  with pytest.raises(ValueError, match="another config"):
    video_files.convert_videos(video_dir, data_dir, resize=(16, 16), episodes_per_shard=2,
                               val_fraction=0.5, seed=3)


def test_stride_max_frames_and_native_size(video_dir, tmp_path):
  result = video_files.convert_videos(video_dir, tmp_path, name="video_strided", resize=None,
                                      frame_stride=3, max_frames=4, val_fraction=0.0)
  builder, episodes = _read_back(result.dataset_dir)
  assert builder.info.features["steps"]["observation"]["image_primary"].shape == (None, None, 3)
  for rel, episode in episodes.items():
    kept = min(-(-VIDEOS[rel] // 3), 4)
    assert episode["frames"].shape == (kept,) + SOURCE_HW + (3,), rel
    expected = _source_frames(rel, None)[::3][:kept]
    assert np.abs(episode["frames"].astype(float) - expected).mean() < 8.0, rel
    assert episode["metadata"]["num_source_frames"] == VIDEOS[rel]
    assert episode["metadata"]["frame_stride"] == 3
  for rel in ("clip_a.mp4", "anim.gif"):  # both written at 10 fps
    frames, num_source, stride = video_files.read_video(str(video_dir / rel), target_fps=5.0)
    assert stride == 2 and num_source == VIDEOS[rel] and len(frames) == -(-VIDEOS[rel] // 2)


def test_captions_files(tmp_path):
  csv_path = tmp_path / "labels.csv"
  csv_path.write_text("Id,Label\n42,Holding something\n")
  captions = video_files.load_captions(str(csv_path))
  assert video_files.caption_for("videos/42.webm", captions) == "Holding something"
  json_path = tmp_path / "ssv2.json"  # Something-Something-v2's label files
  json_path.write_text('[{"id": "7", "label": "putting a cup on a table", '
                       '"template": "Putting [something] on [something]"}]')
  assert video_files.caption_for("7.webm", video_files.load_captions(str(json_path))) == (
      "putting a cup on a table")
  bad = tmp_path / "bad.csv"
  bad.write_text("name,whatever\nx,y\n")
  with pytest.raises(schema.DatasetError, match="key column"):
    video_files.load_captions(str(bad))


def test_missing_and_empty_folders(tmp_path):
  with pytest.raises(schema.DatasetNotFoundError, match="does not exist"):
    video_files.convert_videos(tmp_path / "nope", tmp_path / "out")
  (tmp_path / "empty").mkdir()
  with pytest.raises(schema.DatasetNotFoundError, match="no video files"):
    video_files.convert_videos(tmp_path / "empty", tmp_path / "out")
  with pytest.raises(ValueError, match="video_"):
    video_files.convert_videos(tmp_path / "empty", tmp_path / "out", name="clips")


def test_unreadable_video_is_named_or_skipped(video_dir, tmp_path):
  broken_dir = tmp_path / "broken"
  broken_dir.mkdir()
  for rel in ("clip_a.mp4", "anim.gif"):
    (broken_dir / rel).write_bytes((video_dir / rel).read_bytes())
  good = (video_dir / "sub" / "clip_b.mp4").read_bytes()
  (broken_dir / "corrupt.mp4").write_bytes(good[:200] + b"\x00garbage" * 50)  # header only
  with pytest.raises(video_files.UnreadableVideoError, match="corrupt.mp4"):
    video_files.convert_videos(broken_dir, tmp_path / "out", val_fraction=0.0,
                               episodes_per_shard=1)
  # The rerun with skip_unreadable resumes the stopped conversion.
  result = video_files.convert_videos(broken_dir, tmp_path / "out", val_fraction=0.0,
                                      episodes_per_shard=1, skip_unreadable=True)
  assert result.unreadable == ["corrupt.mp4"]
  # Sorted order anim.gif, clip_a.mp4, corrupt.mp4: the first two shards were finished before the
  # error; the third (the corrupt file alone) is written empty.
  assert result.num_resumed_shards == 2
  assert result.num_written == {"train": 0, "val": 0}
  builder = tfds.builder_from_directory(result.dataset_dir)
  assert builder.info.splits["train"].num_examples == 2
  assert len(list(reader.read_trajectories(result.dataset_dir))) == 2


def test_config_and_script(video_dir, tmp_path):
  config = convert_videos_config.get_config("default")
  assert tuple(config.resize) == (64, 64) and config.name is None
  config.video_dir = str(video_dir)
  config.max_frames = 3
  config.val_fraction = 0.0
  result = video_files.convert_from_config(config, str(tmp_path / "lib"))
  assert result.num_written == {"train": 4, "val": 0}

  cmd = [sys.executable, os.path.join(REPO, "experiments", "convert_videos.py"),
         f"--config={os.path.join(REPO, 'experiments/configs/convert_videos.py')}:default",
         f"--config.video_dir={video_dir}", "--config.name=video_smoke",
         "--config.resize=(16, 16)", "--config.max_frames=2", f"--data_dir={tmp_path / 'cli'}"]
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  builder = tfds.builder_from_directory(tmp_path / "cli" / "video_smoke" / "1.0.0")
  assert builder.info.features["steps"]["observation"]["image_primary"].shape == (16, 16, 3)
