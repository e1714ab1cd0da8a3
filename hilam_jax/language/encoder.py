"""Pluggable sentence encoders for language instructions.

An encoder maps instruction strings to fixed-size float32 vectors. Policies and skill models only
see `LanguageEncoder.embed`, so the backbone can be swapped by name:

  "minilm"  all-MiniLM-L6-v2 in Flax (hilam_jax/language/minilm.py), the default; dim 384.
  "hash"    a deterministic, dependency-free stand-in for tiny smoke configs and tests.

Another backbone (e.g. a T5 encoder) is added by writing a class with `dim`, `name` and `embed`
(the `LanguageEncoder` protocol, base.py) and calling `register_encoder("t5", T5Encoder)`; configs
then select it with `make_encoder("t5")`.

Datasets repeat a handful of instructions across thousands of frames, so wrap the encoder in
`CachedEncoder`: it embeds each unique string once.
"""
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
import zlib

import numpy as np

from hilam_jax.language.base import LanguageEncoder
from hilam_jax.language.base import to_text
from hilam_jax.language.minilm import MiniLMEncoder  # imports tokenizers/safetensors lazily


class CachedEncoder:
  """Caches embeddings per unique instruction string around any `LanguageEncoder`.

  Each `embed` call collects the strings it has not seen, embeds them in one batched call to the
  wrapped encoder, and returns rows in input order. Accepts str or utf-8 bytes.
  """

  def __init__(self, encoder: LanguageEncoder):
    self.encoder = encoder
    self.dim = encoder.dim
    self.name = encoder.name
    self._cache: dict[str, np.ndarray] = {}

  def __len__(self) -> int:
    return len(self._cache)

  def embed(self, texts: Iterable[str | bytes]) -> np.ndarray:
    texts = [to_text(t) for t in texts]
    unseen = [t for t in dict.fromkeys(texts) if t not in self._cache]  # unique, first-seen order
    if unseen:
      rows = np.asarray(self.encoder.embed(unseen), np.float32)
      self._cache.update(zip(unseen, rows))
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    return np.stack([self._cache[t] for t in texts])


class HashEncoder(LanguageEncoder):
  """Deterministic test encoder: a fixed random projection of hashed character trigrams.

  Trigram counts of the lower-cased text (framed by "<<" and ">>", so even "" has trigrams) are
  hashed with crc32 into `num_buckets` bins and projected by a seeded Gaussian matrix, then
  L2-normalised. Texts that share trigrams get similar vectors; results do not depend on the
  process (crc32, unlike Python's `hash`, is not salted).
  """

  def __init__(self, dim: int = 384, num_buckets: int = 4096, seed: int = 0):
    self.dim = dim
    self.name = "hash"
    self.num_buckets = num_buckets
    rng = np.random.default_rng(seed)
    self._projection = rng.standard_normal((num_buckets, dim)).astype(np.float32)  # [buckets, dim]

  def _counts(self, text: str) -> np.ndarray:
    framed = f"<<{text.lower()}>>"
    counts = np.zeros(self.num_buckets, np.float32)
    for i in range(len(framed) - 2):
      counts[zlib.crc32(framed[i:i + 3].encode("utf-8")) % self.num_buckets] += 1.0
    return counts

  def embed(self, texts: Sequence[str | bytes]) -> np.ndarray:
    if len(texts) == 0:
      return np.zeros((0, self.dim), np.float32)
    counts = np.stack([self._counts(to_text(t)) for t in texts])  # [N, buckets]
    vectors = counts @ self._projection  # [N, dim]
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


_ENCODERS: dict[str, Callable[..., LanguageEncoder]] = {
    "minilm": MiniLMEncoder,
    "hash": HashEncoder,
}


def register_encoder(name: str, factory: Callable[..., LanguageEncoder]) -> None:
  """Makes `make_encoder(name)` build encoders with `factory(**kwargs)` (e.g. a T5 encoder)."""
  _ENCODERS[name] = factory


def make_encoder(name: str = "minilm", **kwargs) -> LanguageEncoder:
  """Builds a registered encoder by name; kwargs go to its constructor (e.g. `dim` for "hash")."""
  if name not in _ENCODERS:
    raise ValueError(f"Unknown language encoder {name!r}; registered: {sorted(_ENCODERS)}.")
  return _ENCODERS[name](**kwargs)
