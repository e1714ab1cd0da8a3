"""The HiLAM skill model: a causal, hierarchical H-Net with dynamic chunking over latent actions.

The model reads a sequence of stage-0 latent actions z^0 (one per frame, from the frozen IDM) and
predicts the next one, z^0_{t+1}, at every position t. On the way it learns where chunks ("skills")
begin: each H-Net stage s encodes its input sequence, routes (a boundary where consecutive encoder
outputs disagree), keeps the vectors at the boundaries (the chunk sequence), runs its main network
on the shorter chunk sequence, and upsamples the result back. The main network of the outer stage
is itself an H-Net stage (the recursion); the innermost main network is a causal transformer. See
../shared/METHOD.md, section 3.

Stages are numbered from the outside in, as in the paper: stage 1 runs on frames and its chunks
give the skills z^1; stage 2 runs on the stage-1 chunk sequence and gives z^2 (the paper's skill).
Python lists of per-stage values are ordered the same way (index 0 is stage 1). Levels are the
sequence resolutions: level 0 is the frame rate, level s the stage-s chunk sequence; level s has
width `widths[s]`.

Everything is causal: the output at t depends on inputs at positions <= t only (attention masks,
a router that compares t - 1 with t, chunks that start at their first position, and an EMA that
runs forward). Shapes are static under jit: each stage keeps at most a fixed number of chunks
(capacity) with a mask, and reports how many boundaries did not fit (overflow; their frames join
the last kept chunk). `SkillModelConfig.causal=False` (a segmentation variant, not the paper's)
makes the attention bidirectional; the router, chunking and EMA stay as they are.

Dimension glossary:
  B      batch
  L      sequence length in frames (the window of latent actions)
  Dz     latent action dimension (`latent_dim`)
  D_s    model width at level s (`widths[s]`)
  L_s    length of the sequence entering stage s+1 (L_0 = L, L_s = C_s for s >= 1)
  C_s    chunk capacity of stage s: ceil(L_{s-1} / N^s * capacity_factor), at most L_{s-1}
  N^s    target downsampling ratio of stage s (`target_ratios[s - 1]`)
  H      attention heads; Dh = D_s / H head width
  S      number of stages (`len(target_ratios)`; the paper uses 2)
"""
import dataclasses
import math
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from hilam_jax import config_io
from hilam_jax.skill import chunking


@dataclasses.dataclass(frozen=True)
class SkillModelConfig(config_io.DictConfig):
  """Hyper-parameters of the skill model (stored as a plain dict in checkpoints).

  The paper (HiLAM, arXiv 2603.05815) fixes only the architecture family: a causal H-Net with two
  stages of dynamic chunking over latent actions, trained with an l1 next-latent loss, a
  reconstruction loss through the frozen FDM and H-Net's ratio loss. It leaves OPEN, and this
  project therefore makes knobs of: the layer types and sizes (here: pre-norm transformers with
  RMSNorm, RoPE and SwiGLU everywhere; `widths`, the depths, `heads`, `mlp_ratio`), the target
  downsampling ratios N^s (`target_ratios`), the loss weights lambda_rec and lambda_ratio (arguments
  of `losses.skill_loss`, H-Net uses lambda_ratio = 0.03), the window length L (a data-pipeline
  setting; the model takes any L) and the optimiser. The defaults below are a small CPU-friendly
  size, not the paper's.

  Attributes:
    latent_dim: Dz, dimension of the latent actions (the frozen IDM's output).
    widths: D_s per level, len == num_stages + 1: widths[0] is the frame-rate width (stage-1
      encoder and decoder), widths[s] the width of stage s's chunk sequence (stage s+1's encoder
      and decoder, or the innermost main network for s == num_stages). H-Net widens inner levels.
    encoder_depths: transformer blocks of each stage's encoder E^s, outermost first.
    decoder_depths: transformer blocks of each stage's decoder D^s, outermost first.
    main_depth: transformer blocks of the innermost main network.
    heads: attention heads per level (len == num_stages + 1); each width must divide evenly.
    mlp_ratio: hidden width of the SwiGLU MLPs as a multiple of the block width.
    target_ratios: N^s per stage (> 1), the downsampling the ratio loss asks each stage for,
      relative to that stage's input sequence (so stage 2 is N^1 * N^2 coarser than frames).
    capacity_factor: slack of the static chunk capacity, C_s = ceil(L_{s-1} / N^s *
      capacity_factor) clipped to [1, L_{s-1}]. Boundaries beyond it start no chunk (counted as
      overflow): their frames join the last kept chunk, for the main network and the skills
      alike. capacity_factor >= N^s means no boundary can ever overflow.
    chunk_impl: implementation of chunk/dechunk in `chunking` ("fused" by default).
    rope_base: base period of the rotary position embedding (positions are frame or chunk indices).
    residual: H-Net's residual W_res x̂ around each stage's chunking (True, the paper's
      architecture). With it, the decoder at frame t reads x̂_t, which already knows z^0_{<=t}:
      the next-latent loss then needs nothing from the chunks and gives the router no reason to
      put boundaries anywhere in particular. False makes every prediction pass through the
      chunk sequence.
    bottleneck_heads: adds one auxiliary next-latent prediction per stage that sees the frames
      only through that stage's chunks: the stage's dechunked output (EMA + upsampling +
      confidence STE, no residual), at frame rate, plus the frame's offset in its stage chunk,
      through a small causal decoder (`bottleneck_depth` blocks at width widths[0]). Its L1
      (weight lambda_aux in `losses.skill_loss`) rewards boundaries that make the chunk vectors
      predict what follows: a segment-level objective. The main prediction is unchanged.
    bottleneck_depth: transformer blocks of each bottleneck decoder.
    max_offset: offsets in a chunk beyond this share one embedding (bottleneck heads).
    causal: True (the paper's model): every attention looks back only. False makes every
      transformer bidirectional within the window, so the encoder outputs the router compares,
      and the chunk vectors, see the whole window: a segmentation model, not a predictor. The
      next-latent loss then reads its target through attention, so `losses.skill_loss` refuses
      lambda_latent != 0; train with bottleneck heads on `bottleneck_target="current"`.
    bottleneck_target: what the bottleneck heads predict at frame t: "next", z^0_{t+1} (from
      what the chunks hold so far), or "current", z^0_t itself (segment reconstruction: each
      frame's latent from its own stage-s chunk + its offset in it; needs causal=False, else the
      chunk vector knows only the chunk's first frame).
    bottleneck_code_dim: if > 0, the dechunked chunk vector is projected to this many
      dimensions before a bottleneck head reads it, so a chunk can carry only that much about
      its frames (an information bottleneck); 0: the full width.
  """
  latent_dim: int = 16
  widths: tuple[int, ...] = (64, 96, 128)
  encoder_depths: tuple[int, ...] = (1, 1)
  decoder_depths: tuple[int, ...] = (1, 1)
  main_depth: int = 2
  heads: tuple[int, ...] = (4, 4, 4)
  mlp_ratio: float = 2.0
  target_ratios: tuple[float, ...] = (3.0, 3.0)
  capacity_factor: float = 1.5
  chunk_impl: str = "fused"
  rope_base: float = 10000.0
  residual: bool = True
  bottleneck_heads: bool = False
  bottleneck_depth: int = 1
  max_offset: int = 32
  causal: bool = True
  bottleneck_target: str = "next"
  bottleneck_code_dim: int = 0

  def __post_init__(self):
    # JSON round trips turn tuples into lists; coerce so the config stays hashable.
    for name, cast in (("widths", int), ("encoder_depths", int), ("decoder_depths", int),
                       ("heads", int), ("target_ratios", float)):
      object.__setattr__(self, name, tuple(cast(v) for v in getattr(self, name)))
    stages = len(self.target_ratios)
    if stages < 1:
      raise ValueError("SkillModelConfig.target_ratios: need at least one stage")
    for name, expected in (("encoder_depths", stages), ("decoder_depths", stages),
                           ("widths", stages + 1), ("heads", stages + 1)):
      if len(getattr(self, name)) != expected:
        raise ValueError(f"SkillModelConfig.{name}={getattr(self, name)}: expected {expected} "
                         f"entries for {stages} stage(s)")
    for level, (width, heads) in enumerate(zip(self.widths, self.heads)):
      if width < 1 or heads < 1 or width % heads or (width // heads) % 2:
        raise ValueError(f"SkillModelConfig: level {level} width {width} must split into "
                         f"{heads} heads of even width (RoPE rotates pairs)")
    if any(r <= 1.0 for r in self.target_ratios):
      raise ValueError(f"SkillModelConfig.target_ratios={self.target_ratios}: each must be > 1")
    if self.capacity_factor <= 0:
      raise ValueError(f"SkillModelConfig.capacity_factor={self.capacity_factor} must be > 0")
    if not isinstance(self.chunk_impl, str) or not self.chunk_impl:
      raise ValueError(f"SkillModelConfig.chunk_impl={self.chunk_impl!r}: expected an impl name "
                       "of `chunking.chunk` (e.g. \"fused\")")
    if self.latent_dim < 1 or self.main_depth < 0 or self.mlp_ratio <= 0:
      raise ValueError("SkillModelConfig: latent_dim >= 1, main_depth >= 0, mlp_ratio > 0")
    if self.bottleneck_depth < 0 or self.max_offset < 1 or self.bottleneck_code_dim < 0:
      raise ValueError("SkillModelConfig: bottleneck_depth >= 0, max_offset >= 1, "
                       "bottleneck_code_dim >= 0")
    if self.bottleneck_target not in ("next", "current"):
      raise ValueError(f"SkillModelConfig.bottleneck_target={self.bottleneck_target!r}: "
                       "expected 'next' or 'current'")
    if self.bottleneck_target == "current" and self.causal:
      raise ValueError("SkillModelConfig: bottleneck_target='current' needs causal=False (a "
                       "causal chunk vector knows only its chunk's first frame)")

  @property
  def num_stages(self) -> int:
    """S, the number of chunking stages (2 in the paper)."""
    return len(self.target_ratios)

  def capacities(self, length: int) -> tuple[int, ...]:
    """(C_1, ..., C_S) for a window of `length` frames (static Python ints)."""
    capacities, current = [], int(length)
    for stage_index in range(self.num_stages):
      current = _capacity(self, stage_index, current)
      capacities.append(current)
    return tuple(capacities)

  @classmethod
  def tiny(cls, **overrides) -> "SkillModelConfig":
    """A test size (a few thousand parameters): widths 16-32, one block everywhere."""
    base = dict(latent_dim=4, widths=(16, 24, 32), heads=(2, 2, 2), main_depth=1,
                target_ratios=(2.0, 2.0))
    base.update(overrides)
    return cls(**base)


# ---------------------------------------------------------------- transformer blocks


def rotary_embedding(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """Rotates pairs of channels of x [B, L, H, Dh] by angles positions [L] * base**(-2i/Dh)."""
  half = x.shape[-1] // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [Dh/2]
  angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]  # [L, Dh/2]
  cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention with a key padding mask and RoPE.

  A query attends to keys at positions <= its own that are valid (every valid key with
  causal=False); it always attends to itself, so no softmax row is empty (padding queries then
  produce finite garbage that callers mask).
  """
  width: int
  heads: int
  rope_base: float = 10000.0
  causal: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    length = x.shape[1]
    head_dim = self.width // self.heads
    qkv = nn.DenseGeneral((3, self.heads, head_dim), use_bias=False, name="qkv")(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, L, H, Dh] each
    positions = jnp.arange(length)
    q = rotary_embedding(q, positions, self.rope_base)
    k = rotary_embedding(k, positions, self.rope_base)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)  # [B, H, L, L]
    if self.causal:
      order = jnp.tril(jnp.ones((length, length), bool))  # [L(query), L(key)]
    else:
      order = jnp.ones((length, length), bool)
    allowed = (order[None] & mask[:, None, :]) | jnp.eye(length, dtype=bool)[None]  # [B, L, L]
    logits = jnp.where(allowed[:, None], logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v)  # [B, L, H, Dh]
    return nn.DenseGeneral(self.width, axis=(-2, -1), use_bias=False, name="out")(attended)


class SwiGLU(nn.Module):
  """Gated MLP: W_out (silu(W_gate x) * W_up x), hidden width int(mlp_ratio * width)."""
  width: int
  mlp_ratio: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = max(1, int(round(self.mlp_ratio * self.width)))
    gate, up = jnp.split(nn.Dense(2 * hidden, use_bias=False, name="gate_up")(x), 2, axis=-1)
    return nn.Dense(self.width, use_bias=False, name="down")(nn.silu(gate) * up)


class TransformerBlock(nn.Module):
  """Pre-norm block: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""
  width: int
  heads: int
  mlp_ratio: float
  rope_base: float = 10000.0
  causal: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + CausalSelfAttention(self.width, self.heads, self.rope_base, self.causal,
                                name="attn")(
        nn.RMSNorm(name="attn_norm")(x), mask)
    return x + SwiGLU(self.width, self.mlp_ratio, name="mlp")(nn.RMSNorm(name="mlp_norm")(x))


class CausalTransformer(nn.Module):
  """`depth` pre-norm causal blocks and a final RMSNorm: x [B, L, D], mask [B, L] -> [B, L, D].

  Outputs at padding positions (mask False) are zeroed, so nothing downstream can read them.
  causal=False makes the blocks bidirectional (`SkillModelConfig.causal`).
  """
  depth: int
  width: int
  heads: int
  mlp_ratio: float
  rope_base: float = 10000.0
  causal: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    if x.shape[-1] != self.width:
      raise ValueError(f"CausalTransformer: input width {x.shape[-1]} != {self.width}")
    for i in range(self.depth):
      x = TransformerBlock(self.width, self.heads, self.mlp_ratio, self.rope_base, self.causal,
                           name=f"block_{i}")(x, mask)
    x = nn.RMSNorm(name="final_norm")(x)
    return x * mask[..., None].astype(x.dtype)


# ---------------------------------------------------------------- the H-Net


@flax.struct.dataclass
class StageOutput:
  """What one chunking stage s did, on its own sequence and mapped back to frames.

  Attributes:
    mask: [B, L_{s-1}] bool, validity of the sequence this stage ran on (the frame mask for
      stage 1, the stage-(s-1) chunk mask after that).
    routing: the stage's `chunking.RoutingOutput` on that sequence ([B, L_{s-1}] fields).
    chunks: the stage's `chunking.ChunkOutput` (chunks [B, C_s, D_{s-1}], chunk_mask, num_chunks,
      overflow: boundaries dropped for lack of capacity).
    frame_boundary: [B, L] bool, b̄^s: frame t starts a stage-s chunk. Implies frame_boundary of
      every outer stage (a stage-2 boundary is a stage-1 boundary by construction).
    segment_id: [B, L] int32, k_t = cumsum_t b̄^s (1-based segment index; 0 on padding).
    skill: [B, L, D_{s-1}] float32, z̄^s_t: the stage-s chunk vector of segment k_t (zeros on
      padding).
    skill_valid: [B, L] bool, frames that have a skill (the valid frames).
  """
  mask: jax.Array
  routing: Any
  chunks: Any
  frame_boundary: jax.Array
  segment_id: jax.Array
  skill: jax.Array
  skill_valid: jax.Array


@flax.struct.dataclass
class SkillModelOutput:
  """Skill model result.

  Attributes:
    prediction: [B, L, Dz] float32, ẑ^0_{t+1}: the next latent action predicted at t from z^0_{<=t}.
    stages: tuple of `StageOutput`, stage 1 (frame-rate chunks, z^1) first.
    bottleneck_predictions: with `bottleneck_heads`, per stage [B, L, Dz], ẑ^0_{t+1} (or z^0_t
      with bottleneck_target="current") predicted from the frames only through that stage's
      chunks (outermost first); else ().
  """
  prediction: jax.Array
  stages: tuple[StageOutput, ...]
  bottleneck_predictions: tuple[jax.Array, ...] = ()


class HNetStage(nn.Module):
  """One H-Net stage at `level` (0 = frames); its main network is the next stage or a transformer.

  Returns the decoded sequence [B, L_level, D_level] and a tuple of
  (mask, routing, chunk output, bottleneck output) for this stage and all inner stages, outermost
  first; the bottleneck output [B, L_level, D_level] is the dechunked main-network output before
  the residual (what the level's positions receive through the chunks alone).
  """
  config: SkillModelConfig
  level: int

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array):
    cfg, s = self.config, self.level
    width, inner_width = cfg.widths[s], cfg.widths[s + 1]
    capacity = _capacity(cfg, s, x.shape[1])  # static C_{s+1}

    def transformer(depth, lvl, name):
      return CausalTransformer(depth, cfg.widths[lvl], cfg.heads[lvl], cfg.mlp_ratio,
                               cfg.rope_base, cfg.causal, name=name)

    x_hat = transformer(cfg.encoder_depths[s], s, "encoder")(x, mask)  # [B, L_s, D_s]
    routing = chunking.RoutingModule(width, name="routing")(x_hat, mask)
    chunk_out = chunking.chunk(x_hat, routing, capacity, impl=cfg.chunk_impl)  # [B, C, D_s]
    # H-Net widens the inner sequence; a projection in and out (the official code pads instead).
    inner = nn.Dense(inner_width, name="to_inner")(chunk_out.chunks)  # [B, C, D_{s+1}]
    if s + 1 < cfg.num_stages:
      inner, inner_records = HNetStage(cfg, s + 1, name="main")(inner, chunk_out.chunk_mask)
    else:
      inner = transformer(cfg.main_depth, s + 1, "main")(inner, chunk_out.chunk_mask)
      inner_records = ()
    inner = nn.Dense(width, name="from_inner")(inner)  # [B, C, D_s]
    y = chunking.dechunk(inner, routing, chunk_out, mask, impl=cfg.chunk_impl)  # [B, L_s, D_s]
    bottleneck = y.astype(jnp.float32)
    if cfg.residual:
      # W_res: zero-initialised so the stage starts as "main network only"; fp32 whatever the rest.
      residual = nn.Dense(width, use_bias=False, kernel_init=nn.initializers.zeros,
                          dtype=jnp.float32, param_dtype=jnp.float32, name="residual")
      y = bottleneck + residual(x_hat.astype(jnp.float32))
    y = transformer(cfg.decoder_depths[s], s, "decoder")(y, mask)
    return y, ((mask, routing, chunk_out, bottleneck),) + inner_records


def _capacity(config: SkillModelConfig, stage_index: int, length: int) -> int:
  """C of the stage with 0-based index `stage_index` given its input length (clipped to it)."""
  ratio = config.target_ratios[stage_index]
  return max(1, min(length, math.ceil(length / ratio * config.capacity_factor)))


def frame_rate_stages(records, frame_mask: jax.Array) -> tuple[StageOutput, ...]:
  """Maps every stage's boundaries and chunk vectors back to frames ("Reading skills off").

  For stage s, `position[b, t]` is where frame t sits in the sequence stage s ran on (frame t
  itself for stage 1; for stage s+1 the stage-s chunk containing t, `ChunkOutput.chunk_index`).
  Frame t is a stage-s boundary if it is a stage-(s-1) boundary and the element at its position
  starts a stage-s chunk; segment ids are the cumsum of those frame boundaries and the skill is the
  stage-s chunk vector of the segment. Boundaries beyond a stage's capacity start no chunk (as in
  `chunking.chunk`: their positions join the last kept chunk) and are not frame boundaries.

  Args:
    records: (mask, RoutingOutput, ChunkOutput, ...) per stage, outermost first.
    frame_mask: [B, L] bool.

  Returns:
    A tuple of `StageOutput`, outermost first.
  """
  outputs = []
  position = jnp.broadcast_to(jnp.arange(frame_mask.shape[1], dtype=jnp.int32),
                              frame_mask.shape)  # [B, L] index into the stage's input sequence
  boundary_above = frame_mask  # [B, L] b̄^{s-1} (every valid frame for stage 1)
  for mask, routing, chunk_out, *_ in records:
    capacity = chunk_out.chunks.shape[1]
    boundary = routing.boundary_mask & mask  # [B, L_{s-1}]
    # Only the first C boundaries start chunks (the rest overflow).
    starts = boundary & (jnp.cumsum(boundary.astype(jnp.int32), axis=1) <= capacity)
    frame_boundary = boundary_above & jnp.take_along_axis(starts, position, axis=1)  # [B, L]
    segment_id = jnp.cumsum(frame_boundary.astype(jnp.int32), axis=1) * frame_mask  # [B, L]
    skill_valid = frame_mask & (segment_id >= 1)
    skill_index = jnp.clip(segment_id - 1, 0, capacity - 1)  # [B, L] == chunk of frame t
    skill = jnp.take_along_axis(chunk_out.chunks, skill_index[..., None], axis=1)  # [B, L, D]
    skill = jnp.where(skill_valid[..., None], skill, 0.0)
    outputs.append(StageOutput(mask=mask, routing=routing, chunks=chunk_out,
                               frame_boundary=frame_boundary, segment_id=segment_id,
                               skill=skill, skill_valid=skill_valid))
    position = skill_index  # frame t's element in the next stage's input (the chunk sequence)
    boundary_above = frame_boundary
  return tuple(outputs)


class SkillModel(nn.Module):
  """Latent actions z^0 [B, L, Dz] with mask [B, L] -> `SkillModelOutput` (next-latent prediction).

  Initialise with `model.init(rng, latents, mask)`; parameters live under "input_proj", "stage"
  (the nested H-Net: stage/main/... for inner stages), "head" and, with bottleneck heads,
  "bottleneck_{s}" per stage.
  """
  config: SkillModelConfig = SkillModelConfig()

  def _bottleneck_predictions(self, records, stages, mask: jax.Array) -> tuple[jax.Array, ...]:
    """Per stage: ẑ^0_{t+1} (or z^0_t) from the stage's dechunked output mapped to frames + the
    offset of frame t in its stage chunk (see SkillModelConfig.bottleneck_heads)."""
    cfg = self.config
    length = mask.shape[1]
    frames = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), mask.shape)  # [B, L]
    position = frames  # [B, L]: frame t's element in level s's sequence
    out = []
    for index, ((*_, bottleneck), stage) in enumerate(zip(records, stages)):
      at_frames = jnp.take_along_axis(bottleneck, position[..., None], axis=1)  # [B, L, D_s]
      start = jax.lax.cummax(jnp.where(stage.frame_boundary, frames, 0), axis=1)  # [B, L]
      offset = jnp.clip(frames - start, 0, cfg.max_offset - 1)
      width = cfg.widths[0]
      if cfg.bottleneck_code_dim:
        at_frames = nn.Dense(cfg.bottleneck_code_dim, name=f"bottleneck_{index + 1}_code")(
            at_frames)
      h = nn.Dense(width, name=f"bottleneck_{index + 1}_in")(at_frames)
      h = h + nn.Embed(cfg.max_offset, width, name=f"bottleneck_{index + 1}_offset")(offset)
      h = h * mask[..., None]
      h = CausalTransformer(cfg.bottleneck_depth, width, cfg.heads[0], cfg.mlp_ratio,
                            cfg.rope_base, cfg.causal, name=f"bottleneck_{index + 1}")(h, mask)
      pred = nn.Dense(cfg.latent_dim, name=f"bottleneck_{index + 1}_head")(h) * mask[..., None]
      out.append(pred)
      # Frame t's element in the next level: its chunk in this stage's chunk sequence.
      capacity = stage.chunks.chunks.shape[1]
      position = jnp.clip(stage.segment_id - 1, 0, capacity - 1)
    return tuple(out)

  @nn.compact
  def __call__(self, latents: jax.Array, mask: Optional[jax.Array] = None) -> SkillModelOutput:
    cfg = self.config
    if latents.ndim != 3 or latents.shape[-1] != cfg.latent_dim or latents.shape[1] < 1:
      raise ValueError(f"latents: expected [B, L >= 1, {cfg.latent_dim}], got {latents.shape}")
    mask = (jnp.ones(latents.shape[:2], bool) if mask is None else mask.astype(bool))
    x = nn.Dense(cfg.widths[0], name="input_proj")(latents.astype(jnp.float32))  # [B, L, D_0]
    y, records = HNetStage(cfg, 0, name="stage")(x, mask)
    prediction = nn.Dense(cfg.latent_dim, name="head")(y)  # [B, L, Dz]
    prediction = prediction * mask[..., None]
    stages = frame_rate_stages(records, mask)
    bottleneck = (self._bottleneck_predictions(records, stages, mask)
                  if cfg.bottleneck_heads else ())
    return SkillModelOutput(prediction=prediction, stages=stages,
                            bottleneck_predictions=bottleneck)


def init_params(config: SkillModelConfig, rng: jax.Array, length: int = 16) -> dict:
  """Initialises the inner "params" dict. Parameter shapes do not depend on the window length;
  `length` only sizes the dummy input (and the chunk capacities traced once at init).

  On CPU the init is compiled with XLA backend optimisation off (as `lam.init_params`): it runs
  once, and optimising the unrolled RNG of every parameter costs seconds.
  """
  latents = jnp.zeros((1, length, config.latent_dim), jnp.float32)
  mask = jnp.ones((1, length), bool)
  init = jax.jit(SkillModel(config).init).lower(rng, latents, mask)
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return init.compile(compiler_options=options)(rng, latents, mask)["params"]
