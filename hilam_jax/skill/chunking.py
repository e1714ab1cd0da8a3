"""H-Net dynamic chunking: routing, chunk (downsample), dechunk (EMA + upsample) and ratio loss.

Implements METHOD.md section 3, steps 2, 3, 5, 6, 7 and 9 (H-Net, Hwang et al. 2025,
`hnet/modules/dc.py`), with static shapes: the chunk sequence has a fixed capacity C plus a mask
instead of H-Net's data-dependent length, and boundary order comes from a cumsum (no argsort, no
boolean indexing), so one compiled program serves every boundary pattern.

Three implementations of the data movement (`impl=`), identical in value and gradient:
  "reference": plain per-sequence Python loops over jnp scalars/rows; ground truth for tests, slow,
    not jittable (reads the boundary mask as concrete numpy); differentiable by jax autodiff.
  "fused": gather / scatter-add / `lax.associative_scan` wrapped in `jax.custom_vjp` with a
    hand-written backward pass (see `_dechunk_fused_bwd`); jittable, the default.
  "pallas": Pallas kernels (chunking_pallas.py); the custom_vjp backward passes are Pallas kernels
    too (same equations as the fused backward); interpret mode on CPU.

Capacity overflow. When a sequence has more boundaries than C, the first C boundaries become
chunks; the later ones are counted in `ChunkOutput.overflow` and do NOT start chunks: their
positions (and all later valid positions) belong to the last kept chunk C - 1, exactly as if their
b_t were 0 for the data movement. The router's p/b/c are unchanged (the ratio loss still sees them,
and the confidence STE still multiplies every position). The output therefore stays well defined
and the same in all implementations, including `StreamingChunker(capacity=C)`.

Dimension glossary:
  B  batch
  L  sequence length (valid positions are a prefix, marked by `mask`)
  D  width
  C  chunk capacity (static)
"""
from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hilam_jax.skill.chunking_common import clip_grad_factor
from hilam_jax.skill.chunking_common import EMA_PROB_MAX
from hilam_jax.skill.chunking_common import EMA_PROB_MIN
from hilam_jax.skill.chunking_common import ste_value

IMPLS = ("reference", "fused", "pallas")
_NORM_EPS = 1e-12          # as torch.nn.functional.normalize in H-Net


@flax.struct.dataclass
class RoutingOutput:
  """The router's decisions for one sequence batch.

  Attributes:
    boundary_prob: [B, L] float32, p_t; p_0 = 1 on valid sequences, 0 at padding.
    boundary_mask: [B, L] bool, b_t = p_t > 0.5 (ties: no boundary); never True at padding.
    confidence: [B, L] float32, c_t = p_t if b_t else 1 - p_t (1 at padding).
  """
  boundary_prob: jax.Array
  boundary_mask: jax.Array
  confidence: jax.Array


@flax.struct.dataclass
class ChunkOutput:
  """The chunk (downsampled) sequence plus the index maps dechunk needs.

  Attributes:
    chunks: [B, C, D] encoder outputs at the first C boundary positions, in order; 0 after.
    chunk_mask: [B, C] bool, j < num_chunks.
    num_chunks: [B] int32, min(#boundaries, C).
    overflow: [B] int32, max(#boundaries - C, 0): boundaries that did not start a chunk (their
      positions attach to chunk C - 1, see the module docstring).
    boundary_index: [B, C] int32, position of chunk j's boundary; L for empty slots.
    chunk_index: [B, L] int32, chunk that position t belongs to, min(cumsum(b)_t - 1, C - 1)
      clipped at 0 (not masked: dechunk applies its `mask`).
  """
  chunks: jax.Array
  chunk_mask: jax.Array
  num_chunks: jax.Array
  overflow: jax.Array
  boundary_index: jax.Array
  chunk_index: jax.Array


def _identity_init(key, shape, dtype=jnp.float32):
  del key
  return jnp.eye(shape[0], shape[1], dtype=dtype)


def _l2_normalize(v):
  # max inside the sqrt: sqrt's gradient at an exactly zero vector (padding) would be NaN.
  norm = jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), _NORM_EPS ** 2))
  return v / norm


def boundary_prob_from_qk(q_prev, k):
  """p = 0.5 (1 - cos(q_prev, k)) clipped to [0, 1]; any matching leading shape, [..., D]."""
  cos = jnp.sum(_l2_normalize(q_prev) * _l2_normalize(k), axis=-1)
  return jnp.clip(0.5 * (1.0 - cos), 0.0, 1.0)


def routing_from_prob(p, mask):
  """Builds a RoutingOutput from raw p [B, L] (p_0 forced to 1) and the validity mask [B, L]."""
  p = p.astype(jnp.float32).at[:, 0].set(1.0)
  p = jnp.where(mask, p, 0.0)
  b = (p > 0.5) & mask
  c = jnp.where(b, p, 1.0 - p)
  return RoutingOutput(boundary_prob=p, boundary_mask=b, confidence=c)


class RoutingModule(nn.Module):
  """H-Net router: bias-free q/k projections (identity init) compared across neighbours.

  p_t = 0.5 (1 - cos(q_{t-1}, k_t)): a big change of direction between consecutive encoder outputs
  starts a new chunk. Causal by construction (only t - 1 and t).
  """
  dim: int

  def setup(self):
    self.q_proj = nn.Dense(self.dim, use_bias=False, kernel_init=_identity_init, name="q")
    self.k_proj = nn.Dense(self.dim, use_bias=False, kernel_init=_identity_init, name="k")

  def project(self, x):
    """q, k for x [..., D] (used per step by `StreamingChunker`); in float32 even for bf16 x."""
    x = x.astype(jnp.float32)
    return self.q_proj(x), self.k_proj(x)

  def __call__(self, x, mask) -> RoutingOutput:
    q, k = self.project(x)                                      # [B, L, D] each
    p_rest = boundary_prob_from_qk(q[:, :-1], k[:, 1:])         # [B, L - 1]
    # p_0 from the shape of x, not of p_rest: p_rest is empty when L = 1.
    p_first = jnp.ones((p_rest.shape[0], 1), p_rest.dtype)      # [B, 1]
    p = jnp.concatenate([p_first, p_rest], axis=1)              # [B, L]
    return routing_from_prob(p, mask)


def ratio_loss_from_fractions(f, g, target_ratio):
  """L = N/(N-1) ((N-1) F G + (1-F)(1-G)); equals 1 and is minimal along F = G at 1/N."""
  n = target_ratio
  return n / (n - 1.0) * ((n - 1.0) * f * g + (1.0 - f) * (1.0 - g))


def ratio_loss(routing: RoutingOutput, mask, target_ratio, per_sequence: bool = False):
  """H-Net ratio loss over all valid positions of the batch (pooled, like H-Net), or with
  `per_sequence` the mean over sequences with a valid position of each sequence's own loss (so
  every sequence, not only the batch, is pushed to the 1/N rate).

  F (fraction of boundaries) carries no gradient; G (mean boundary probability) does, so the loss
  pushes p towards a 1/N boundary rate.
  """
  m = mask.astype(jnp.float32)
  axis = 1 if per_sequence else None
  valid = jnp.sum(m, axis=axis)
  count = jnp.maximum(valid, 1.0)
  f = jax.lax.stop_gradient(
      jnp.sum(routing.boundary_mask.astype(jnp.float32) * m, axis=axis) / count)
  g = jnp.sum(routing.boundary_prob * m, axis=axis) / count
  loss = ratio_loss_from_fractions(f, g, target_ratio)
  if not per_sequence:
    return loss
  rows = (valid > 0).astype(jnp.float32)
  return jnp.sum(loss * rows) / jnp.maximum(jnp.sum(rows), 1.0)


# ----------------------------------------------------------------------------- index maps


def chunk_indices(boundary_mask, capacity: int):
  """Static-shape index maps from b [B, L]: boundary_index [B, C], chunk_index [B, L], num, over.

  Chunk slot of a boundary = cumsum(b) - 1; slots >= C are dropped (overflow). boundary_index is
  built by a scatter of positions into slots (L = empty), so no sort is needed.
  """
  bsz, length = boundary_mask.shape
  b = boundary_mask.astype(jnp.int32)
  cum = jnp.cumsum(b, axis=1)                                   # [B, L]
  total = cum[:, -1]                                            # [B]
  slot = jnp.where(boundary_mask, cum - 1, capacity)            # [B, L]; C = not a chunk start
  rows = jnp.arange(bsz)[:, None]
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (bsz, length))
  boundary_index = jnp.full((bsz, capacity), length, jnp.int32).at[rows, slot].set(
      positions, mode="drop")                                   # [B, C]
  chunk_index = jnp.clip(cum - 1, 0, capacity - 1).astype(jnp.int32)
  num_chunks = jnp.minimum(total, capacity).astype(jnp.int32)
  overflow = jnp.maximum(total - capacity, 0).astype(jnp.int32)
  return boundary_index, chunk_index, num_chunks, overflow


def _masked_chunk_index(chunk: ChunkOutput, mask, capacity):
  """chunk_index with padding positions sent to C (out of range: gathers 0, scatters dropped)."""
  return jnp.where(mask, chunk.chunk_index, capacity).astype(jnp.int32)


# ----------------------------------------------------------------------------- fused


def _gather_rows(values, index, fill):
  """values [B, N, ...] gathered at index [B, M] along axis 1; out-of-range -> fill."""
  rows = jnp.arange(values.shape[0])[:, None]
  return values.at[rows, index].get(mode="fill", fill_value=fill)


def _scatter_add_rows(length, updates, index):
  """Transpose of `_gather_rows`: zeros [B, length, ...] with updates [B, M, ...] added at index."""
  rows = jnp.arange(updates.shape[0])[:, None]
  out = jnp.zeros((updates.shape[0], length) + updates.shape[2:], updates.dtype)
  return out.at[rows, index].add(updates, mode="drop")


@jax.custom_vjp
def _chunk_fused(x, boundary_index):
  return _gather_rows(x, boundary_index, 0)                     # [B, C, D]


def _chunk_fused_fwd(x, boundary_index):
  # A zero-size array carries L into the backward pass (residuals must be arrays).
  return _chunk_fused(x, boundary_index), (boundary_index, jnp.zeros((0, x.shape[1]), x.dtype))


def _chunk_fused_bwd(res, dchunks):
  boundary_index, shape_carrier = res
  # Gather transpose = scatter-add; each kept boundary position receives its chunk's gradient.
  dx = _scatter_add_rows(shape_carrier.shape[1], dchunks, boundary_index)
  return dx, None


_chunk_fused.defvjp(_chunk_fused_fwd, _chunk_fused_bwd)


def _ema_combine(left, right):
  """Composition of affine maps z -> a z + u (left applied first)."""
  a1, u1 = left
  a2, u2 = right
  return a1 * a2, a2 * u1 + u2


def _dechunk_fused_forward(chunk_out, boundary_prob, confidence, boundary_index, chunk_index):
  p_raw = _gather_rows(boundary_prob.astype(jnp.float32), boundary_index, 0.0)   # [B, C]
  prob = jnp.clip(p_raw, EMA_PROB_MIN, EMA_PROB_MAX)
  zhat = chunk_out.astype(jnp.float32)                                            # [B, C, D]
  _, zbar = jax.lax.associative_scan(
      _ema_combine, ((1.0 - prob)[..., None], prob[..., None] * zhat), axis=1)    # [B, C, D]
  ztilde = _gather_rows(zbar, chunk_index, 0.0)                                   # [B, L, D]
  out = ztilde * ste_value(confidence.astype(jnp.float32))[..., None]
  return out.astype(chunk_out.dtype), (p_raw, prob, zhat, zbar, ztilde)


@jax.custom_vjp
def _dechunk_fused(chunk_out, boundary_prob, confidence, boundary_index, chunk_index):
  return _dechunk_fused_forward(chunk_out, boundary_prob, confidence, boundary_index,
                                chunk_index)[0]


def _dechunk_fused_fwd(chunk_out, boundary_prob, confidence, boundary_index, chunk_index):
  out, (p_raw, prob, zhat, zbar, _) = _dechunk_fused_forward(
      chunk_out, boundary_prob, confidence, boundary_index, chunk_index)
  res = (p_raw, prob, zhat, zbar, confidence, boundary_index, chunk_index,
         jnp.zeros((0,), chunk_out.dtype), jnp.zeros((0,), boundary_prob.dtype))
  return out, res


def _dechunk_fused_bwd(res, dout):
  """Hand-written backward of EMA + upsample + STE.

  With g_j = dL/dzbar_j including the path through later chunks, the EMA's adjoint is the reverse
  recurrence g_j = dzbar_j + (1 - P_{j+1}) g_{j+1} (a reverse associative scan), and
    dzhat_j = P_j g_j,   dP_j = <g_j, zhat_j - zbar_{j-1}>   (zbar_{-1} = 0).
  The upsample gather's adjoint is a scatter-add of dztilde over each chunk's positions; the STE
  sends dout * STE-value into ztilde and <dout, ztilde> into c; dP goes to p at the boundary
  positions through the clip's derivative.
  """
  (p_raw, prob, zhat, zbar, confidence, boundary_index, chunk_index, out_dtype_carrier,
   p_dtype_carrier) = res
  capacity, length = zbar.shape[1], chunk_index.shape[1]
  dout = dout.astype(jnp.float32)                                                 # [B, L, D]
  c = confidence.astype(jnp.float32)
  ztilde = _gather_rows(zbar, chunk_index, 0.0)                                   # [B, L, D]
  dconf = jnp.sum(dout * ztilde, axis=-1)                                         # [B, L]
  dztilde = dout * ste_value(c)[..., None]
  dzbar = _scatter_add_rows(capacity, dztilde, chunk_index)                       # [B, C, D]
  decay_next = jnp.concatenate(
      [1.0 - prob[:, 1:], jnp.zeros_like(prob[:, :1])], axis=1)[..., None]        # [B, C, 1]
  _, g = jax.lax.associative_scan(_ema_combine, (decay_next, dzbar), reverse=True, axis=1)
  dzhat = prob[..., None] * g
  zbar_prev = jnp.concatenate([jnp.zeros_like(zbar[:, :1]), zbar[:, :-1]], axis=1)
  dprob = jnp.sum(g * (zhat - zbar_prev), axis=-1) * clip_grad_factor(p_raw)     # [B, C]
  dp = _scatter_add_rows(length, dprob, boundary_index)                           # [B, L]
  return (dzhat.astype(out_dtype_carrier.dtype), dp.astype(p_dtype_carrier.dtype),
          dconf.astype(confidence.dtype), None, None)


_dechunk_fused.defvjp(_dechunk_fused_fwd, _dechunk_fused_bwd)


# ----------------------------------------------------------------------------- reference


def _chunk_reference(x, routing: RoutingOutput, capacity: int) -> ChunkOutput:
  """Per-sequence Python loop: list the boundary positions, keep the first C."""
  b = np.asarray(routing.boundary_mask)
  bsz, length, dim = x.shape
  chunks, boundary_index, chunk_index, num, over = [], [], [], [], []
  for i in range(bsz):
    positions = [t for t in range(length) if b[i, t]]
    kept = positions[:capacity]
    rows = [x[i, t] for t in kept] + [jnp.zeros((dim,), x.dtype)] * (capacity - len(kept))
    chunks.append(jnp.stack(rows))
    boundary_index.append(kept + [length] * (capacity - len(kept)))
    current, index_row = 0, []
    for t in range(length):
      if b[i, t] and t in kept:
        current = kept.index(t)
      index_row.append(current)
    chunk_index.append(index_row)
    num.append(len(kept))
    over.append(len(positions) - len(kept))
  num = jnp.asarray(num, jnp.int32)
  return ChunkOutput(chunks=jnp.stack(chunks),
                     chunk_mask=jnp.arange(capacity)[None, :] < num[:, None],
                     num_chunks=num, overflow=jnp.asarray(over, jnp.int32),
                     boundary_index=jnp.asarray(boundary_index, jnp.int32),
                     chunk_index=jnp.asarray(chunk_index, jnp.int32))


def _dechunk_reference(chunk_out, routing: RoutingOutput, capacity, mask):
  """Per-sequence loop over positions in time order: the EMA is updated at each kept boundary."""
  b = np.asarray(routing.boundary_mask)
  valid = np.asarray(mask)
  bsz, length = b.shape
  dim = chunk_out.shape[-1]
  outs = []
  for i in range(bsz):
    zbar = jnp.zeros((dim,), jnp.float32)
    j, row = -1, []
    for t in range(length):
      if not valid[i, t]:
        row.append(jnp.zeros((dim,), jnp.float32))
        continue
      if b[i, t] and j + 1 < capacity:
        j += 1
        prob = jnp.clip(routing.boundary_prob[i, t], EMA_PROB_MIN, EMA_PROB_MAX)
        zbar = prob * chunk_out[i, j].astype(jnp.float32) + (1.0 - prob) * zbar
      c = routing.confidence[i, t].astype(jnp.float32)
      row.append(zbar * (c + jax.lax.stop_gradient(1.0 - c)))
    outs.append(jnp.stack(row))
  return jnp.stack(outs).astype(chunk_out.dtype)


# ----------------------------------------------------------------------------- public API


def _check_impl(impl):
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def _check_capacity(capacity):
  # C = 0 would clip chunk indices to -1 and silently gather garbage: a valid sequence always has
  # its boundary at t = 0, so it needs at least one chunk.
  if int(capacity) < 1:
    raise ValueError(f"chunk capacity must be >= 1, got {capacity}")


def chunk(x, routing: RoutingOutput, capacity: int, *, impl="fused") -> ChunkOutput:
  """Downsample x [B, L, D] to the encoder outputs at the first C boundaries, [B, C, D]."""
  _check_impl(impl)
  _check_capacity(capacity)
  if impl == "reference":
    return _chunk_reference(x, routing, capacity)
  boundary_index, chunk_index, num, over = chunk_indices(routing.boundary_mask, capacity)
  if impl == "fused":
    chunks = _chunk_fused(x, boundary_index)
  else:
    # Lazy: Pallas (jax.experimental.pallas with its TPU and Triton parts) adds ~0.3 s to an import.
    from hilam_jax.skill import chunking_pallas  # pylint: disable=g-import-not-at-top
    chunks = chunking_pallas.chunk_pallas(x, boundary_index)
  return ChunkOutput(chunks=chunks, chunk_mask=jnp.arange(capacity)[None, :] < num[:, None],
                     num_chunks=num, overflow=over, boundary_index=boundary_index,
                     chunk_index=chunk_index)


def dechunk(chunk_out, routing: RoutingOutput, chunk: ChunkOutput, mask, *, impl="fused"):
  """Upsample the main network's chunk outputs [B, C, D] back to [B, L, D].

  EMA over chunks (zbar_j = P_j zhat_j + (1 - P_j) zbar_{j-1}), position t takes zbar of its chunk,
  times STE(c_t) (value 1, gradient into the router); padding outputs 0. Output dtype follows
  chunk_out; the EMA runs in float32.
  """
  _check_impl(impl)
  capacity = chunk_out.shape[1]
  if impl == "reference":
    return _dechunk_reference(chunk_out, routing, capacity, mask)
  chunk_index = _masked_chunk_index(chunk, mask, capacity)
  if impl == "fused":
    return _dechunk_fused(chunk_out, routing.boundary_prob, routing.confidence,
                          chunk.boundary_index, chunk_index)
  # Lazy, as in `chunk`.
  from hilam_jax.skill import chunking_pallas  # pylint: disable=g-import-not-at-top
  return chunking_pallas.dechunk_pallas(chunk_out, routing.boundary_prob, routing.confidence,
                                        chunk.boundary_index, chunk_index)


# ----------------------------------------------------------------------------- streaming


@flax.struct.dataclass
class StreamingState:
  """Carry of `StreamingChunker` between steps.

  Attributes:
    q_prev: [B, D] float32, q of the previous position (unused at t = 0).
    zbar: [B, D] float32, the running EMA (zbar of the current chunk; 0 before the first).
    num_boundaries: [B] int32, boundaries seen so far (kept or overflowed).
    t: [] int32, number of steps taken.
  """
  q_prev: jax.Array
  zbar: jax.Array
  num_boundaries: jax.Array
  t: jax.Array


@flax.struct.dataclass
class StreamingStep:
  """Router decision at one step (all [B]).

  Attributes:
    boundary: b_t (False where invalid).
    boundary_prob: p_t.
    confidence: c_t.
    new_chunk: b_t and the chunk fits into the capacity: the caller must run the main network on
      x_t and pass its output to `dechunk_step` (rows where new_chunk is False are ignored).
    chunk_slot: index of the chunk position t belongs to (min(#boundaries - 1, C - 1)).
  """
  boundary: jax.Array
  boundary_prob: jax.Array
  confidence: jax.Array
  new_chunk: jax.Array
  chunk_slot: jax.Array


class StreamingChunker:
  """Online (one position at a time) router + dechunk, bit-compatible with the full pass.

  Usage, per time step t with encoder output x_t [B, D] and validity valid_t [B] (a prefix mask):
    state = chunker.init_state(B, D)
    state, step = chunker.step(params, state, x_t, valid_t)
    zhat = main_network(x_t) where step.new_chunk (any row values elsewhere; None if no row starts a
      chunk)
    state, out_t = chunker.dechunk_step(state, step, zhat, valid_t)    # out_t [B, D] float32
  `params` are the RoutingModule's variables ({"params": ...}). With `capacity`, boundaries beyond
  C are reported (step.boundary) but start no chunk, as in `chunk`/`dechunk`.
  """

  def __init__(self, dim: int, capacity: Optional[int] = None):
    if capacity is not None:
      _check_capacity(capacity)
    self.module = RoutingModule(dim)
    self.capacity = capacity

  def init_state(self, batch_size: int, dim: int) -> StreamingState:
    return StreamingState(q_prev=jnp.zeros((batch_size, dim), jnp.float32),
                          zbar=jnp.zeros((batch_size, dim), jnp.float32),
                          num_boundaries=jnp.zeros((batch_size,), jnp.int32),
                          t=jnp.zeros((), jnp.int32))

  def step(self, params, state: StreamingState, x_t, valid_t):
    """Routes position t: returns (state with new q_prev, StreamingStep)."""
    q, k = self.module.apply(params, x_t, method=RoutingModule.project)    # [B, D] each
    p = jnp.where(state.t == 0, 1.0, boundary_prob_from_qk(state.q_prev, k))
    p = jnp.where(valid_t, p, 0.0)
    b = (p > 0.5) & valid_t
    c = jnp.where(b, p, 1.0 - p)
    num = state.num_boundaries + b.astype(jnp.int32)
    limit = self.capacity if self.capacity is not None else np.iinfo(np.int32).max
    new_chunk = b & (num <= limit)
    slot = jnp.clip(num - 1, 0, limit - 1)
    state = state.replace(q_prev=q, num_boundaries=num, t=state.t + 1)
    return state, StreamingStep(boundary=b, boundary_prob=p, confidence=c, new_chunk=new_chunk,
                                chunk_slot=slot)

  def dechunk_step(self, state: StreamingState, step: StreamingStep, zhat, valid_t):
    """Updates the EMA with the new chunk's main-network output zhat [B, D] (or None); out_t."""
    zbar = state.zbar
    if zhat is not None:
      prob = jnp.clip(step.boundary_prob, EMA_PROB_MIN, EMA_PROB_MAX)[:, None]
      updated = prob * zhat.astype(jnp.float32) + (1.0 - prob) * zbar
      zbar = jnp.where(step.new_chunk[:, None], updated, zbar)
    out = zbar * ste_value(step.confidence)[:, None]
    out = jnp.where(valid_t[:, None], out, 0.0)
    return state.replace(zbar=zbar), out
