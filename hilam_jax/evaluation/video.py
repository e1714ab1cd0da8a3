"""Rollout videos: GIF (imageio), or MP4 when imageio-ffmpeg is installed and asked for."""
from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np


def slug(text: str, max_len: int = 60) -> str:
  """'Put the red ball next to ...' -> 'put_the_red_ball_next_to' (file-name safe)."""
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:max_len].rstrip("_")


def video_path(video_dir: str, task: str, episode: int, seed: int, success: bool,
               instruction: str, ext: str = "gif") -> str:
  outcome = "success" if success else "failure"
  name = f"{slug(task, 40)}_ep{episode:04d}_seed{seed}_{outcome}_{slug(instruction)}.{ext}"
  return os.path.join(video_dir, name)


def write_video(path: str, frames: Sequence[np.ndarray], fps: int = 10, scale: int = 1) -> str:
  """Writes uint8 [H, W, 3] frames as a GIF (or MP4 if `path` ends in .mp4); returns `path`.

  `scale` > 1 enlarges each pixel to scale x scale (nearest), for the tiny BabyAI / Meta-World
  frames.
  """
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top

  frames = [np.asarray(f, np.uint8) for f in frames]
  if not frames:
    raise ValueError(f"no frames for {path}")
  if scale > 1:
    frames = [f.repeat(scale, axis=0).repeat(scale, axis=1) for f in frames]
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  if path.endswith(".mp4"):
    iio.imwrite(path, np.stack(frames), extension=".mp4", fps=fps)  # needs imageio-ffmpeg
  else:
    # The pillow plugin takes GIF frame durations in milliseconds.
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=1000 / fps, loop=0)
  return path
