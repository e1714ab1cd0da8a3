"""The `LanguageEncoder` protocol every sentence encoder implements, and `to_text`, the str/bytes
normalisation they share. The encoders: encoder.py (`HashEncoder`, `CachedEncoder`, the
name-keyed factory) and minilm.py (`MiniLMEncoder`)."""
from collections.abc import Sequence
from typing import Protocol
from typing import runtime_checkable

import numpy as np


@runtime_checkable
class LanguageEncoder(Protocol):
  """Maps texts to embeddings: `embed(texts) -> float32 [N, dim]`, rows in input order."""

  dim: int
  name: str

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    ...


def to_text(text: str | bytes) -> str:
  """tf.data yields instructions as bytes (np.bytes_ is a bytes subclass); decode them."""
  if isinstance(text, bytes):
    return text.decode("utf-8")
  return str(text)
