"""Config of `experiments/convert_videos.py`: a folder of videos -> an action-free RLDS dataset.

Launch (the dataset goes to <data_dir>/<name>/1.0.0; rerun the same command to resume):

  python experiments/convert_videos.py \
      --config=experiments/configs/convert_videos.py:default \
      --config.video_dir=/data/something_something_v2/videos \
      --config.captions_csv=/data/something_something_v2/labels/train.json \
      --data_dir=/data/rlds

  # keep the source resolution, 2 frames out of 3 dropped, at most 64 frames per video:
  python experiments/convert_videos.py --config=experiments/configs/convert_videos.py:default \
      --config.video_dir=/data/my_videos --config.resize=None --config.frame_stride=3 \
      --config.max_frames=64 --data_dir=/data/rlds

Field meanings are in `data_pipeline.generators.video_files.convert_videos`.
"""
import ml_collections
from ml_collections import config_dict


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """Variants: `default` (64x64 frames, every source frame kept, 5% validation videos)."""
  if arg != "default":
    raise ValueError(f"unknown convert_videos config variant {arg!r}; variants: default")
  config = ml_collections.ConfigDict()
  # Required: folder searched recursively for video files.
  config.video_dir = config_dict.placeholder(str)
  # Optional CSV (or SSv2 JSON) of captions keyed by path / file stem / id.
  config.captions_csv = config_dict.placeholder(str)
  # Dataset name, must start with `video_`; None: video_<folder name in snake case>.
  config.name = config_dict.placeholder(str)
  # Stored frame size (H, W), or None to keep each video's own size.
  config.resize = (64, 64)
  # Keep every frame_stride-th source frame; target_fps (if set) picks the stride per video.
  config.frame_stride = 1
  config.target_fps = config_dict.placeholder(float)
  # At most this many kept frames per video (None: all).
  config.max_frames = config_dict.placeholder(int)
  config.episodes_per_shard = 64
  config.val_fraction = 0.05
  config.seed = 0
  # Skip (and count) undecodable videos instead of stopping at the first one.
  config.skip_unreadable = False
  config.extensions = (".mp4", ".webm", ".gif")
  return config
