"""Dataset summaries: episode counts, lengths, subtask counts and a filmstrip with boundaries."""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

from data_pipeline import reader


def summarize(dataset_dir: str, name: str | None = None, split: str = "train") -> dict[str, Any]:
  """Reads every episode of a split (images untouched) and returns summary statistics."""
  lengths, subtasks, instructions, languages = [], [], [], set()
  has_actions = False
  for traj in reader.read_trajectories(dataset_dir, name, split):
    lengths.append(int(traj["is_first"].shape[0]))
    languages.add(traj["language_instruction"][0].numpy().decode())
    has_actions = has_actions or "action" in traj
    if "subtask" in traj:
      subtasks.append(int(tf.reduce_sum(tf.cast(traj["subtask"]["boundary"], tf.int32))))
      if "instruction_boundary" in traj["subtask"]:
        instructions.append(int(tf.reduce_sum(
            tf.cast(traj["subtask"]["instruction_boundary"], tf.int32))))
  if not lengths:
    raise ValueError(f"split {split!r} of {dataset_dir} has no episodes")

  def stats(values):
    values = np.asarray(values)
    return {"mean": round(float(values.mean()), 2), "min": int(values.min()),
            "median": float(np.median(values)), "max": int(values.max())}

  summary = {
      "dataset_dir": os.path.abspath(dataset_dir),
      "split": split,
      "episodes": len(lengths),
      "frames": int(np.sum(lengths)),
      "episode_length": stats(lengths),
      "unique_instructions": len(languages),
      "has_actions": has_actions,
  }
  if subtasks:
    summary["subtasks_per_episode"] = stats(subtasks)
    summary["subtask_length"] = round(float(np.sum(lengths) / np.sum(subtasks)), 2)
  if instructions:
    summary["sub_instructions_per_episode"] = stats(instructions)
  return summary


def filmstrip(dataset_dir: str, out_path: str, name: str | None = None, split: str = "train",
              episode: int = 0, max_frames: int = 96, columns: int = 16) -> str:
  """PNG of one episode's frames; ground-truth subtask starts framed in red and numbered."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  traj = next(iter(reader.read_trajectories(dataset_dir, name, split).skip(episode)))
  encoded = traj["observation"]["image_primary"].numpy()
  num_steps = len(encoded)
  frames = list(range(num_steps))
  if num_steps > max_frames:  # keep every boundary, subsample the rest evenly
    frames = sorted(set(np.linspace(0, num_steps - 1, max_frames).astype(int)))
  boundary = np.zeros(num_steps, bool)
  if "subtask" in traj:
    boundary = traj["subtask"]["boundary"].numpy()
    frames = sorted(set(frames) | set(np.flatnonzero(boundary).tolist()))
  segment = np.cumsum(boundary)
  rows = int(np.ceil(len(frames) / columns))
  fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.0, rows * 1.15 + 0.6),
                           squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, t in zip(axes.flat, frames):
    ax.imshow(tf.io.decode_image(encoded[t], channels=3).numpy())
    label = f"t={t}"
    if boundary[t]:
      label += f" S{segment[t]}"
      for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor("red")
        spine.set_linewidth(3)
      ax.axis("on")
      ax.set_xticks([])
      ax.set_yticks([])
    ax.set_title(label, fontsize=6, color="red" if boundary[t] else "black")
  instruction = traj["language_instruction"][0].numpy().decode()
  fig.suptitle(f"{traj['episode_id'][0].numpy().decode()}\n\"{instruction}\"  "
               f"({num_steps} frames, {int(boundary.sum())} ground-truth subtasks; red = "
               "subtask start)", fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path


def write_summary(dataset_dir: str, out_dir: str, name: str | None = None,
                  splits: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
  """Writes summary.json, summary.md and filmstrip.png into `out_dir`; returns the summary."""
  os.makedirs(out_dir, exist_ok=True)
  builder = reader.open_builder(dataset_dir)
  summary = {split: summarize(dataset_dir, name, split)
             for split in splits if split in builder.info.splits}
  summary["filmstrip"] = filmstrip(dataset_dir, os.path.join(out_dir, "filmstrip.png"), name)
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  lines = [f"# Dataset summary: `{dataset_dir}`", ""]
  for split, s in summary.items():
    if not isinstance(s, dict):
      continue
    lines += [f"## {split}", "", "| statistic | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s.items() if k != "dataset_dir"]
    lines.append("")
  lines.append("![filmstrip](filmstrip.png)")
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return summary
