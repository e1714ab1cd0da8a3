"""Per-dimension statistics of per-frame arrays (numpy only: no TensorFlow import)."""
from __future__ import annotations

from typing import Iterable

import numpy as np


def per_dimension_mean_std(arrays: Iterable[np.ndarray], dim: int
                           ) -> tuple[np.ndarray, np.ndarray]:
  """Per-dimension mean and (population) std, float64, over the rows of `arrays` (each reshaped
  to [rows, dim]; empty ones skipped); (0, 1) when there is no row. No floor: each caller
  floors the std for its own use (z-scoring latents, regression targets, baseline signals)."""
  rows = [np.asarray(a, np.float64).reshape(-1, dim) for a in arrays]
  rows = [r for r in rows if len(r)]
  if not rows:
    return np.zeros(dim), np.ones(dim)
  pooled = np.concatenate(rows)
  return pooled.mean(0), pooled.std(0)
