"""Filmstrips: an episode's frames with ground-truth and predicted boundaries marked (PNG)."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from hilam_jax.skill.discovery.boundaries import chunk_lengths, mean_chunk_length
from hilam_jax.skill.discovery.inputs import decode_frames, load_skill_folder


def boundary_filmstrip(frames: np.ndarray, true: np.ndarray, predicted: Mapping[str, np.ndarray],
                       out_path: str, title: str = "", max_frames: int = 96,
                       columns: int = 16) -> str:
  """PNG of an episode's frames (decoded uint8 [T, H, W, 3]) with boundaries marked.

  Ground-truth subtask starts get a red frame; each predicted boundary set gets a letter in the
  frame's title (e.g. "1" for stage 1, "2" for stage 2) and a blue frame if any predicts one.
  Long episodes are subsampled evenly, keeping every frame that carries a boundary.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  num = len(frames)
  true = np.asarray(true, bool)[:num]
  marks = {name: np.asarray(b, bool)[:num] for name, b in predicted.items()}
  shown = set(np.linspace(0, num - 1, min(num, max_frames)).astype(int).tolist())
  shown |= set(np.flatnonzero(true).tolist())
  for b in marks.values():
    shown |= set(np.flatnonzero(b).tolist())
  shown = sorted(shown)
  rows = int(np.ceil(len(shown) / columns))
  fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.0, rows * 1.15 + 0.7),
                           squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, t in zip(axes.flat, shown):
    ax.imshow(frames[t])
    tags = [name for name, b in marks.items() if t < len(b) and b[t]]
    is_true = t < len(true) and true[t]
    label = f"t={t}" + (" GT" if is_true else "") + ("".join(f" {x}" for x in tags))
    if is_true or tags:
      ax.axis("on")
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_edgecolor("red" if is_true else "blue")
        spine.set_linewidth(3)
    ax.set_title(label, fontsize=6, color="red" if is_true else ("blue" if tags else "black"))
  fig.suptitle(f"{title}\nred = ground-truth subtask start; labels name the predicted boundary "
               f"sets ({', '.join(marks)})", fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path


def skill_filmstrips(skills_dir: str, dataset_dir: str, out_dir: str, *, split: str = "val",
                     num_episodes: int = 3, episode_ids: Sequence[str] | None = None
                     ) -> dict[str, Any]:
  """Filmstrips of the learned boundaries on any video dataset, ground truth or not.

  For a user's own videos (`experiments/convert_videos.py`), where `run_evaluation` has no
  subtask labels to score against: draws `num_episodes` episodes of `split` (the first in sorted
  id order, or `episode_ids`) with the stage-1 and stage-2 boundaries, and red ground-truth
  starts when the dataset has `subtask/boundary`.

  Args:
    skills_dir: output of `hilam_jax.skill.extract.extract_skills` covering `split`.
    dataset_dir: the RLDS dataset the skills' labels were made from.
    out_dir: receives skill_filmstrip_<i>.png.
    split, num_episodes, episode_ids: which episodes to draw.

  Returns:
    {"filmstrips": [png paths], "episode_ids": [...], "chunk_lengths": {"s1"/"s2": the
    `chunk_lengths` of every episode of the split}, "mean_chunk_length": {"s1"/"s2": float}}.

  Raises:
    ValueError: `episode_ids` not in the skills of `split`.
  """
  from data_pipeline import reader  # pylint: disable=g-import-not-at-top

  _, boundaries, _, _, _ = load_skill_folder(skills_dir, split, None)
  ids = sorted(boundaries["s1"])
  chosen = list(episode_ids) if episode_ids is not None else ids[:num_episodes]
  unknown = sorted(set(chosen) - set(ids))
  if unknown:
    raise ValueError(f"episodes {unknown[:5]} are not in the {split!r} skills of {skills_dir}")
  strips = []
  for traj in reader.read_trajectories(dataset_dir, split=split):
    episode_id = traj["episode_id"][0].numpy().decode()
    if episode_id not in chosen:
      continue
    length = len(boundaries["s1"][episode_id])
    frames = decode_frames(traj, length)
    truth = (traj["subtask"]["boundary"].numpy().astype(bool)
             if "boundary" in traj.get("subtask", {}) else np.zeros(length, bool))
    text = traj["language_instruction"][0].numpy().decode()
    index = chosen.index(episode_id)
    strips.append((index, boundary_filmstrip(
        frames, truth[:length],
        {"1": boundaries["s1"][episode_id], "2": boundaries["s2"][episode_id]},
        os.path.join(out_dir, f"skill_filmstrip_{index}.png"),
        title=f"{episode_id}: \"{text}\" ({length} frames)")))
  lengths = {stage: chunk_lengths(boundaries[stage]) for stage in ("s1", "s2")}
  return {"filmstrips": [path for _, path in sorted(strips)], "episode_ids": chosen,
          "chunk_lengths": lengths,
          "mean_chunk_length": {stage: mean_chunk_length(boundaries[stage])
                                for stage in ("s1", "s2")}}
