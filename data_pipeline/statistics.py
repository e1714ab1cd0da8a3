"""Per-dimension statistics of per-frame arrays (numpy only: no TensorFlow import)."""
from __future__ import annotations

from typing import Iterable

import numpy as np


def per_dimension_mean_std(arrays: Iterable[np.ndarray], dim: int
                           ) -> tuple[np.ndarray, np.ndarray]:
  """Per-dimension mean and (population) std, float64, over the rows of `arrays` (each reshaped
  to [rows, dim]; empty ones skipped); (0, 1) when there is no row. No floor: each caller
  floors the std for its own use (z-scoring latents, regression targets, baseline signals).

  One pass with one array in memory at a time (`arrays` may be a generator, e.g. one array per
  shard of a corpus): each array's mean and sum of squared deviations are merged into the
  running ones (Chan et al.'s pairwise update), so the result does not depend on holding the
  pooled rows."""
  count, mean, m2 = 0, np.zeros(dim), np.zeros(dim)
  for a in arrays:
    rows = np.asarray(a, np.float64).reshape(-1, dim)
    if not len(rows):
      continue
    n, rows_mean = len(rows), rows.mean(0)
    rows_m2 = ((rows - rows_mean) ** 2).sum(0)
    delta, total = rows_mean - mean, count + n
    mean = mean + delta * (n / total)
    m2 = m2 + rows_m2 + delta ** 2 * (count * n / total)
    count = total
  if not count:
    return np.zeros(dim), np.ones(dim)
  return mean, np.sqrt(m2 / count)
