"""Boundary matching and counting: P/R/F1 with a tolerance, chunk lengths, boundary rates.

Boundaries are boolean [T] arrays per episode (keyed by episode id); frame 0 starts a chunk by
construction and is ignored when matching (the package docstring has the protocol).
"""
from __future__ import annotations

from typing import Mapping, Sequence

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


def chunk_lengths(boundaries: Mapping[str, np.ndarray]) -> np.ndarray:
  """Lengths in frames of every chunk of every episode (a chunk starts at frame 0 and at each
  boundary, and runs to the next start or the episode's end): int64 [number of chunks]."""
  lengths = []
  for boundary in boundaries.values():
    boundary = np.asarray(boundary, bool)
    if not len(boundary):
      continue
    starts = np.union1d([0], np.flatnonzero(boundary))
    lengths.append(np.diff(np.append(starts, len(boundary))))
  return np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)


def boundary_rate(boundaries: Mapping[str, np.ndarray]) -> float:
  """Fraction of frames t >= 1 that are boundaries."""
  hits = sum(int(np.sum(b[1:])) for b in boundaries.values())
  frames = sum(max(len(b) - 1, 0) for b in boundaries.values())
  return hits / max(frames, 1)


def count_boundaries(boundaries: Mapping[str, np.ndarray]) -> int:
  """Boundaries at frames t >= 1 summed over episodes."""
  return sum(int(np.sum(np.asarray(b, bool)[1:])) for b in boundaries.values())
