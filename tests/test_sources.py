"""Data sources of the main job (`data_pipeline/sources.py`) and mixtures of unlike datasets."""
import os

import numpy as np
import pytest

from data_pipeline import dataset as dp
from data_pipeline import libero_schema
from data_pipeline import sources
from data_pipeline.schema import DatasetError


def _clips(folder, names, frames=4):
  from PIL import Image
  os.makedirs(folder, exist_ok=True)
  for i, name in enumerate(names):
    images = [Image.fromarray(np.full((24, 24, 3), 10 * i + t, np.uint8)) for t in range(frames)]
    images[0].save(os.path.join(folder, name), save_all=True, append_images=images[1:],
                   duration=100, loop=0)


def test_a_train_only_dataset_gets_a_view_with_whole_shards_held_out(tmp_path):
  original = libero_schema.write_tiny_libero_dataset(str(tmp_path / "rlds"), num_episodes=7,
                                                     episodes_per_shard=2)
  views = str(tmp_path / "views")
  view = sources.with_val_split(original, views, val_fraction=0.3)
  ids = {s: dp.list_episode_ids({"dataset_dir": view, "split": s}) for s in ("train", "val")}
  # 4 shards (2, 2, 2, 1 episodes): ceil(0.3 * 4) = 2 held out, the last two.
  assert (len(ids["train"]), len(ids["val"])) == (4, 3)
  assert not set(ids["train"]) & set(ids["val"])
  links = sorted(f for f in os.listdir(view) if ".tfrecord-" in f)
  assert all(os.path.islink(os.path.join(view, f)) for f in links) and len(links) == 4
  assert os.path.realpath(os.path.join(view, links[-1])).endswith("-00003-of-00004")
  # Reused as it is; a dataset that has a val split is used where it is.
  mtime = os.stat(os.path.join(view, "dataset_info.json")).st_mtime_ns
  assert sources.with_val_split(original, views, 0.3) == view
  assert os.stat(os.path.join(view, "dataset_info.json")).st_mtime_ns == mtime
  assert sources.with_val_split(view, views, 0.3) == view
  with pytest.raises(ValueError, match="val_fraction"):
    sources.with_val_split(original, views, 0.0)
  single = libero_schema.write_tiny_libero_dataset(str(tmp_path / "one"), num_episodes=2)
  with pytest.raises(DatasetError, match="one shard file"):
    sources.with_val_split(single, views, 0.3)


def test_a_video_folder_is_converted_once_and_again_when_it_changes(tmp_path):
  folder = str(tmp_path / "videos")
  _clips(folder, [f"clip_{i}.gif" for i in range(8)])
  spec = {"sources": {"human": {"videos": folder, "resize": (16, 16), "val_fraction": 0.5}}}
  data_dir = str(tmp_path / "data")
  first = sources.resolve_sources(spec, data_dir)
  assert [(d["source"], d["kind"], d["weight"]) for d in first] == [("human", "videos", 1.0)]
  shard = next(f for f in os.listdir(first[0]["dataset_dir"]) if "-train.tfrecord" in f)
  mtime = os.stat(os.path.join(first[0]["dataset_dir"], shard)).st_mtime_ns
  assert sources.resolve_sources(spec, data_dir) == first  # unchanged folder: reused
  assert os.stat(os.path.join(first[0]["dataset_dir"], shard)).st_mtime_ns == mtime
  _clips(folder, ["clip_8.gif"])  # a new video: a new conversion beside the old one
  second = sources.resolve_sources(spec, data_dir)
  assert second[0]["dataset_dir"] != first[0]["dataset_dir"]
  count = sum(len(dp.list_episode_ids({"dataset_dir": second[0]["dataset_dir"], "split": s}))
              for s in ("train", "val"))
  assert count == 9 and os.path.isdir(first[0]["dataset_dir"])


def test_malformed_sources_are_refused_before_any_work(tmp_path):
  with pytest.raises(ValueError, match=r"video.sources.robot.rlds is not set: "
                                       r"--config.video.sources.robot.rlds=<path>"):
    sources.check_sources({"sources": {"robot": {"rlds": None}}}, "video")
  with pytest.raises(ValueError, match="exactly one of"):
    sources.check_sources({"sources": {"x": {"rlds": str(tmp_path), "videos": str(tmp_path)}}},
                          "video")
  with pytest.raises(DatasetError, match="no folder"):
    sources.check_sources({"sources": {"x": {"rlds": str(tmp_path / "missing")}}}, "demos")
  with pytest.raises(ValueError, match="unknown fields"):
    sources.check_sources({"sources": {"x": {"rlds": str(tmp_path), "wieght": 2}}}, "video")
  with pytest.raises(ValueError, match="video folders only"):
    sources.check_sources({"sources": {"x": {"rlds": str(tmp_path), "resize": (8, 8)}}}, "video")
  # A source without a path and with weight 0 is left out; at least one must remain.
  named = sources.check_sources({"sources": {"a": {"rlds": str(tmp_path), "weight": 2.0},
                                             "b": {"videos": None, "weight": 0.0}}}, "video")
  assert list(named) == ["a"] and named["a"]["weight"] == 2.0
  with pytest.raises(ValueError, match="every source is left out"):
    sources.check_sources({"sources": {"b": {"videos": None, "weight": 0}}}, "video")


def test_robot_episodes_and_video_mix_with_filled_cameras_and_proprio(tmp_path):
  robot = libero_schema.write_tiny_libero_dataset(str(tmp_path / "rlds"), num_episodes=4)
  folder = str(tmp_path / "videos")
  _clips(folder, [f"clip_{i}.gif" for i in range(4)], frames=6)
  from data_pipeline.generators import video_files
  video = video_files.convert_videos(folder, str(tmp_path / "data"), resize=(24, 24),
                                     val_fraction=0.0).dataset_dir
  specs = [{"dataset_dir": robot, "weight": 1.0}, {"dataset_dir": video, "weight": 1.0}]
  transforms = dp.TransformConfig(resize=(16, 16))
  with pytest.raises(ValueError, match="cannot mix"):
    dp.make_dataset(specs, batch_size=8, transforms=transforms, shuffle_buffer=0)
  pipe = dp.make_dataset(specs, batch_size=64, transforms=transforms, shuffle_buffer=0,
                         fill_missing=True)
  batch = next(pipe.as_numpy_iterator())
  assert "action" not in batch  # the video has none: dropped from the mixture
  assert batch["observation"]["image_wrist"].shape == (64, 16, 16, 3)
  assert batch["observation"]["proprio"].shape == (64, 8)
  from_video = np.array([e.decode().startswith("video_") for e in batch["episode_id"]])
  assert from_video.any() and (~from_video).any()
  # Video frames: a black wrist camera and zero proprio; robot frames keep theirs.
  assert batch["observation"]["image_wrist"][from_video].max() <= 2
  assert np.all(batch["observation"]["proprio"][from_video] == 0)
  assert batch["observation"]["image_wrist"][~from_video].max() > 50
  assert np.abs(batch["observation"]["proprio"][~from_video]).sum() > 0


def test_a_sources_own_val_fraction_wins_over_the_specs(tmp_path):
  original = libero_schema.write_tiny_libero_dataset(str(tmp_path / "rlds"), num_episodes=8,
                                                     episodes_per_shard=2)
  data_dir = str(tmp_path / "data")
  spec = {"sources": {"robot": {"rlds": original}}, "val_fraction": 0.25}
  [default] = sources.resolve_sources(spec, data_dir)
  spec["sources"]["robot"]["val_fraction"] = 0.5
  [own] = sources.resolve_sources(spec, data_dir)
  held_out = lambda d: len(dp.list_episode_ids({"dataset_dir": d["dataset_dir"], "split": "val"}))
  assert (held_out(default), held_out(own)) == (2, 4)  # 1 and 2 of 4 shards of 2 episodes
