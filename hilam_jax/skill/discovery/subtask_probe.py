"""Linear probes from per-frame features (z̄^1, z̄^2, z^0, a trailing mean of z^0) to the
ground-truth subtask of the frame, at two granularities (`PROBE_LABELS`: target and type); the
probe itself is `hilam_jax.probing.fit_linear_probe` (balanced classes).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from hilam_jax.probing import fit_linear_probe, probe_predict, probe_scores


COLOURS = ("red", "green", "blue", "purple", "yellow", "grey")


def subtask_type(name: str) -> str:
  """'GoNextTo(red ball, PutNext)' -> 'GoNextTo'; a name without arguments is its own type."""
  return name.split("(", 1)[0].strip()


def subtask_target(name: str) -> str:
  """The subtask without colours and locations: what is done to which kind of object, and why.

  'GoNextTo(red ball, PutNext)' -> 'GoNextTo(ball, PutNext)'; 'GoNextTo(purple door (behind))'
  -> 'GoNextTo(door)'; 'Pickup' -> 'Pickup'; a Meta-World phase name is kept as it is.
  """
  if "(" not in name or not name.endswith(")"):
    return name.strip()
  head, inner = name.split("(", 1)
  args = []
  for arg in inner[:-1].split(", "):
    arg = arg.split(" (", 1)[0]  # drop the location
    words = [w for w in arg.split() if w not in COLOURS]
    args.append(" ".join(words))
  return f"{head.strip()}({', '.join(a for a in args if a)})"


PROBE_LABELS = {"target": subtask_target, "type": subtask_type}


def trailing_mean(latents: np.ndarray, window: int) -> np.ndarray:
  """[T, D]: mean of z_{max(0, t-window+1)..t} (causal, like the skills)."""
  z = np.asarray(latents, np.float64)
  if not len(z):
    return z.astype(np.float32)
  csum = np.concatenate([np.zeros((1,) + z.shape[1:]), np.cumsum(z, axis=0)])
  t = np.arange(len(z))
  start = np.maximum(t - int(window) + 1, 0)
  return ((csum[t + 1] - csum[start]) / (t + 1 - start)[:, None]).astype(np.float32)


def probe_report(features: Mapping[str, Mapping[str, np.ndarray]],
                 labels: Mapping[str, np.ndarray], train_ids: Sequence[str],
                 test_ids: Sequence[str], l2: float = 1e-3) -> dict[str, Any]:
  """Fits one probe per feature set on `train_ids` frames, scores it on `test_ids` frames.

  Args:
    features: {feature name: {episode id: [T, D]}}; frames beyond len(labels[e]) are dropped.
    labels: {episode id: [T] class labels} (e.g. `subtask_type` of each frame's subtask).

  Returns:
    {feature name: {"accuracy", "balanced_accuracy"}, "majority": the accuracy of always
    predicting the training set's most frequent class, "classes": training class counts,
    "train_frames", "test_frames"}.
  """
  def stack(values, ids):
    return np.concatenate([np.asarray(values[e])[:len(labels[e])] for e in ids])

  def length(ids, values):
    return {e: min(len(labels[e]), len(values[e])) for e in ids}

  y_train = np.concatenate([np.asarray(labels[e]) for e in train_ids])
  y_test = np.concatenate([np.asarray(labels[e]) for e in test_ids])
  classes, counts = np.unique(y_train, return_counts=True)
  majority = classes[np.argmax(counts)]
  out = {"majority": probe_scores(np.full(len(y_test), majority), y_test),
         "classes": {str(c): int(n) for c, n in zip(classes, counts)},
         "train_frames": int(len(y_train)), "test_frames": int(len(y_test))}
  for name, values in features.items():
    for ids in (train_ids, test_ids):
      short = {e: n for e, n in length(ids, values).items() if n < len(labels[e])}
      if short:
        raise ValueError(f"probe feature {name!r} is shorter than the labels for {short}")
    probe = fit_linear_probe(stack(values, train_ids), y_train, l2=l2)
    out[name] = probe_scores(probe_predict(probe, stack(values, test_ids)), y_test)
  return out
