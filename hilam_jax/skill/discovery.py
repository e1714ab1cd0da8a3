"""Skill-discovery metrics: do the skill model's boundaries find the ground-truth subtask starts?

The paper reports no quantitative skill-discovery metric (METHOD.md section 5); this module adds
one on datasets with ground truth (`subtask/boundary` of the BabyAI and Meta-World generators).

Boundary precision / recall / F1 with a tolerance: a predicted boundary at t and a true one at u
match if |t - u| <= tolerance; matching is one-to-one and greedy (closest pairs first, ties to the
earlier frames), so two predictions near one true boundary count once. Frame 0 is a boundary by
construction on both sides (every sequence starts a chunk, every episode starts a subtask) and is
ignored. Counts are summed over episodes before dividing (micro average).

Two baselines get the same boundary budget as the stage they are compared with:
  fixed   boundaries every `mean chunk length` frames (at round(i * length), i >= 1);
  delta   boundaries where ||z_t - z_{t-1}|| exceeds a threshold chosen (a quantile over all
          frames t >= 1 of all episodes) so that the boundary rate equals the stage's.

Frames are those of the latent actions (t < T - k): ground truth beyond them is dropped.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np


def boundary_frames(boundary: np.ndarray) -> np.ndarray:
  """Frames t >= 1 where a boolean [T] boundary array is set (frame 0 is ignored)."""
  frames = np.flatnonzero(np.asarray(boundary, bool))
  return frames[frames > 0]


def match_boundaries(predicted: Sequence[int], true: Sequence[int], tolerance: int) -> int:
  """Number of one-to-one matches |t - u| <= tolerance, greedy by distance (then by frame)."""
  pairs = sorted((abs(t - u), t, u) for t in predicted for u in true if abs(t - u) <= tolerance)
  used_pred, used_true, matches = set(), set(), 0
  for _, t, u in pairs:
    if t not in used_pred and u not in used_true:
      used_pred.add(t)
      used_true.add(u)
      matches += 1
  return matches


def precision_recall_f1(predicted: Mapping[str, np.ndarray], true: Mapping[str, np.ndarray],
                        tolerance: int = 2) -> dict[str, float]:
  """Micro P/R/F1 over the episodes of `true` (boolean [T] arrays keyed by episode id).

  Frame 0 is ignored on both sides; a missing prediction counts as no boundaries. Precision is 0
  when nothing is predicted, recall 0 when there is nothing to find.
  """
  tp = num_pred = num_true = 0
  for episode_id, gt in true.items():
    t_frames = boundary_frames(gt)
    p_frames = boundary_frames(predicted.get(episode_id, np.zeros(len(gt), bool))[:len(gt)])
    tp += match_boundaries(p_frames.tolist(), t_frames.tolist(), tolerance)
    num_pred += len(p_frames)
    num_true += len(t_frames)
  precision = tp / num_pred if num_pred else 0.0
  recall = tp / num_true if num_true else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"precision": precision, "recall": recall, "f1": f1, "true_positives": tp,
          "predicted": num_pred, "ground_truth": num_true}


def mean_chunk_length(boundaries: Mapping[str, np.ndarray]) -> float:
  """Frames per chunk: total frames / total boundaries (frame 0 counted as a chunk start)."""
  frames = sum(len(b) for b in boundaries.values())
  starts = sum(int(np.sum(b[1:])) + 1 for b in boundaries.values() if len(b))
  return frames / max(starts, 1)


def fixed_length_boundaries(length: int, chunk_length: float) -> np.ndarray:
  """Boolean [length]: boundaries at round(i * chunk_length), i = 0, 1, ... (0 included)."""
  boundary = np.zeros(length, bool)
  if length:
    starts = np.round(np.arange(0, length, max(chunk_length, 1.0))).astype(int)
    boundary[starts[starts < length]] = True
  return boundary


def latent_change(latents: np.ndarray) -> np.ndarray:
  """[T] ||z_t - z_{t-1}||_2 for t >= 1; -inf at t = 0 (never above a threshold)."""
  z = np.asarray(latents, np.float32)
  change = np.full(len(z), -np.inf, np.float32)
  if len(z) > 1:
    change[1:] = np.linalg.norm(z[1:] - z[:-1], axis=-1)
  return change


def delta_threshold_boundaries(latents: Mapping[str, np.ndarray],
                               rate: float) -> tuple[dict[str, np.ndarray], float]:
  """Boundaries where ||z_t - z_{t-1}|| > threshold, threshold set so that a fraction `rate` of
  the frames t >= 1 are boundaries (frame 0 always is). Returns (boundaries, threshold)."""
  changes = {e: latent_change(z) for e, z in latents.items()}
  pooled = np.concatenate([c[1:] for c in changes.values()] or [np.zeros(0)])
  if not len(pooled) or rate <= 0:
    threshold = np.inf
  else:
    threshold = float(np.quantile(pooled, 1.0 - min(rate, 1.0)))
  result = {}
  for e, c in changes.items():
    b = c > threshold
    if len(b):
      b[0] = True
    result[e] = b
  return result, threshold


def boundary_rate(boundaries: Mapping[str, np.ndarray]) -> float:
  """Fraction of frames t >= 1 that are boundaries."""
  hits = sum(int(np.sum(b[1:])) for b in boundaries.values())
  frames = sum(max(len(b) - 1, 0) for b in boundaries.values())
  return hits / max(frames, 1)


def evaluate_stage(predicted: Mapping[str, np.ndarray], latents: Mapping[str, np.ndarray],
                   true: Mapping[str, np.ndarray], tolerance: int) -> dict[str, Any]:
  """P/R/F1 of one stage's boundaries and of the two baselines with the same boundary budget."""
  ids = [e for e in true if e in predicted and e in latents]
  pred = {e: np.asarray(predicted[e], bool) for e in ids}
  gt = {e: np.asarray(true[e], bool)[:len(pred[e])] for e in ids}
  chunk_len = mean_chunk_length(pred)
  rate = boundary_rate(pred)
  fixed = {e: fixed_length_boundaries(len(pred[e]), chunk_len) for e in ids}
  delta, threshold = delta_threshold_boundaries({e: latents[e] for e in ids}, rate)
  return {"episodes": len(ids), "mean_chunk_length": chunk_len, "boundary_rate": rate,
          "model": precision_recall_f1(pred, gt, tolerance),
          "fixed_length": precision_recall_f1(fixed, gt, tolerance),
          "latent_delta": dict(precision_recall_f1(delta, gt, tolerance),
                               threshold=threshold, boundary_rate=boundary_rate(delta))}


def format_table(results: Mapping[str, Any]) -> str:
  """Markdown table of P/R/F1 per stage and method."""
  lines = ["| stage | method | precision | recall | F1 | boundaries | chunk len |",
           "|---|---|---|---|---|---|---|"]
  for stage, r in results.items():
    for method in ("model", "fixed_length", "latent_delta"):
      m = r[method]
      lines.append(f"| {stage} | {method} | {m['precision']:.3f} | {m['recall']:.3f} | "
                   f"{m['f1']:.3f} | {m['predicted']} / {m['ground_truth']} | "
                   f"{r['mean_chunk_length']:.1f} |")
  return "\n".join(lines)


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


def read_ground_truth(dataset_dir: str, split: str, episode_ids: set[str] | None = None,
                      keep_frames: set[str] | None = None) -> tuple[dict, dict, dict]:
  """({episode_id: subtask/boundary [T]}, {id: decoded frames} for `keep_frames`, {id: text})."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from data_pipeline import reader  # pylint: disable=g-import-not-at-top

  truth, frames, texts = {}, {}, {}
  for traj in reader.read_trajectories(dataset_dir, split=split):
    episode_id = traj["episode_id"][0].numpy().decode()
    if episode_ids is not None and episode_id not in episode_ids:
      continue
    if "subtask" not in traj:
      raise ValueError(f"{dataset_dir} ({split}) has no subtask/boundary ground truth")
    truth[episode_id] = traj["subtask"]["boundary"].numpy().astype(bool)
    texts[episode_id] = traj["language_instruction"][0].numpy().decode()
    if keep_frames and episode_id in keep_frames:
      frames[episode_id] = np.stack([tf.io.decode_image(x, channels=3).numpy()
                                     for x in traj["observation"]["image_primary"].numpy()])
  return truth, frames, texts


def run_evaluation(skills_dir: str, dataset_dir: str, out_dir: str, *, split: str = "val",
                   tolerance: int = 2, num_filmstrips: int = 3,
                   labels_dir: str | None = None) -> dict[str, Any]:
  """Evaluates a skill folder against ground truth; writes JSON, table and filmstrips.

  Args:
    skills_dir: output of `experiments/extract_skills.py` (must cover `split`).
    dataset_dir: the RLDS dataset with `subtask/boundary` (the one the labels were made from).
    out_dir: receives skill_discovery.json, skill_discovery.md and filmstrip_<i>.png.
    split: held-out split to evaluate.
    tolerance: frames of slack when matching boundaries.
    num_filmstrips: episodes drawn (the first ones in sorted-id order) as filmstrips.
    labels_dir: latent-action folder for the delta baseline (default: the skills manifest's).

  Returns:
    The results dict written to skill_discovery.json.
  """
  import json  # pylint: disable=g-import-not-at-top
  from hilam_jax.lam import labeling  # pylint: disable=g-import-not-at-top
  from hilam_jax.skill import extract  # pylint: disable=g-import-not-at-top

  with open(os.path.join(skills_dir, extract.MANIFEST)) as f:
    manifest = json.load(f)
  labels_dir = labels_dir or manifest["labels_dir"]
  rels = [r for r in manifest["shards"] if r.split(os.sep)[-2] == split]
  if not rels:
    raise ValueError(f"{skills_dir} has no shards of split {split!r}")
  boundaries = {"s1": {}, "s2": {}}
  latents = {}
  for rel in rels:
    shard = extract.read_skill_shard(os.path.join(skills_dir, rel))
    for stage in boundaries:
      boundaries[stage].update(shard[f"boundary/{stage}"])
    latents.update(labeling.read_shard(os.path.join(labels_dir, rel)))
  ids = sorted(boundaries["s1"])
  strip_ids = set(ids[:num_filmstrips])
  truth, frames, texts = read_ground_truth(dataset_dir, split, set(ids), strip_ids)
  results = {f"stage{stage[1]}": evaluate_stage(boundaries[stage], latents, truth, tolerance)
             for stage in ("s1", "s2")}
  os.makedirs(out_dir, exist_ok=True)
  strips = []
  for i, episode_id in enumerate(sorted(strip_ids & set(frames))):
    length = len(boundaries["s1"][episode_id])
    strips.append(boundary_filmstrip(
        frames[episode_id][:length], truth[episode_id][:length],
        {"1": boundaries["s1"][episode_id], "2": boundaries["s2"][episode_id]},
        os.path.join(out_dir, f"filmstrip_{i}.png"),
        title=f"{episode_id}: \"{texts[episode_id]}\" ({length} frames)"))
  report = {"skills_dir": os.path.abspath(skills_dir), "dataset_dir": os.path.abspath(dataset_dir),
            "split": split, "tolerance": tolerance, "skill_model": manifest.get("skill_model"),
            "results": results, "filmstrips": strips}
  with open(os.path.join(out_dir, "skill_discovery.json"), "w") as f:
    json.dump(report, f, indent=1)
  table = format_table(results)
  with open(os.path.join(out_dir, "skill_discovery.md"), "w") as f:
    f.write(f"# Skill discovery ({split}, tolerance ±{tolerance} frames)\n\n{table}\n")
  report["table"] = table
  return report
