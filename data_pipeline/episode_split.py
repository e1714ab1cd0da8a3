"""The held-out episodes of a dataset split halved by episode id into a validation and a test part.

Every choice of an evaluation (a baseline's parameter, a probe's fit) is made on the validation
half and the figures come from the test half, which no choice looked at. The split is a hash of
the episode id, so it is stable per episode (adding episodes never moves one) and needs no stored
list.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np


def heldout_split(episode_ids: Sequence[str]) -> tuple[list[str], list[str]]:
  """(validation ids, test ids): sha256(episode id) even -> validation, odd -> test.

  Stable per episode (adding episodes never moves one). If the parity leaves one half empty while
  there are >= 2 episodes (tiny datasets), the ids sorted by hash are halved instead (validation
  gets the extra one).
  """
  def digest(e):
    return hashlib.sha256(e.encode()).hexdigest()
  ids = sorted(episode_ids)
  val = [e for e in ids if int(digest(e)[-1], 16) % 2 == 0]
  test = [e for e in ids if int(digest(e)[-1], 16) % 2 == 1]
  if len(ids) >= 2 and (not val or not test):
    by_hash = sorted(ids, key=digest)
    half = (len(ids) + 1) // 2
    val, test = sorted(by_hash[:half]), sorted(by_hash[half:])
  return val, test



def heldout_test_mask(episode_ids: Sequence[str | bytes]) -> np.ndarray:
  """bool [N]: True where an item's episode id (str, or bytes as the RLDS readers give them) is
  in the test half of `heldout_split` over the distinct ids, False where it is in validation."""
  ids = [e.decode() if isinstance(e, bytes) else str(e) for e in episode_ids]
  _, test = heldout_split(sorted(set(ids)))
  test = set(test)
  return np.array([e in test for e in ids], bool)
