"""Pallas kernels for dynamic chunking: chunk gather and dechunk (EMA, upsample, STE), fwd + bwd.

Same operations and index conventions as the "fused" path of chunking.py (which documents them);
both custom_vjp backward passes are Pallas kernels too. One grid program per sequence (grid = (B,)),
each holding its whole [L, D] / [C, D] block: sized for the short sequences of the skill model.

Written for the accelerators' kernel compilers, and lowered for them in the tests
(tests/test_lowering.py, `jax.export` from this CPU):
  - every array is padded to aligned tiles first (`tile`: the next power of two, at least 16, for
    L, C and D), as Triton requires powers of two and `tl.dot` operands of at least 16 x 16; on
    TPU the blocks are whole arrays (Mosaic accepts any full-array block). Padded frames and
    chunk slots get out-of-range indices, so they gather and scatter nothing; the results are
    sliced back.
  - gathers and scatters are one-hot matmuls built from `iota == index` (no dynamic gather); the
    matrix-vector products with a width-1 operand are elementwise products and sums instead
    (no degenerate dots); the EMA is a sequential loop over chunks reading and writing one row of
    a ref at a time (`pl.ds(j, 1)`); index vectors arrive in the orientation each one-hot needs
    (row [1, N] or column [N, 1]).
  - the platform picks the kernel at lowering time (`jax.lax.platform_dependent`): the
    interpreter on CPU, Mosaic on TPU, Triton on GPU (`pallas_call` would default to Mosaic GPU
    there, which has no lowering for these kernels' transposes).
What has been checked where: values and gradients in interpret mode on CPU (tests/test_chunking.py,
tests/test_skill_model.py); lowering to Mosaic and Triton custom calls for the whole skill-model
train step. Compiling and running them needs the devices (libtpu / a GPU), which this machine
does not have: they have never run on an accelerator.

Dimension glossary:
  B  batch
  L  sequence length (Lp padded)
  D  width (Dp padded)
  C  chunk capacity (Cp padded)
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from hilam_jax.skill import chunking_common as common

_HI = jax.lax.Precision.HIGHEST
TILE_MIN = 16  # Triton's tl.dot needs every operand dimension >= 16


def tile(n: int) -> int:
  """Padded size of a dimension of n >= 1: the next power of two, at least TILE_MIN."""
  return max(TILE_MIN, 1 << (int(n) - 1).bit_length())


def _onehot(rows, cols, index, axis):
  """[rows, cols] float32 one-hot: entry (r, c) is 1 where iota along `axis` equals index."""
  return (jax.lax.broadcasted_iota(jnp.int32, (rows, cols), axis) == index).astype(jnp.float32)


def _dot(a, b):
  return jnp.dot(a, b, precision=_HI, preferred_element_type=jnp.float32)


def _spec(shape):
  """Block = one batch element of an array shaped [B, *shape]."""
  return pl.BlockSpec((1,) + tuple(shape), lambda i: (i,) + (0,) * len(shape))


def _call(kernel, bsz, in_shapes, out_shapes):
  """pallas_call over grid (B,) with per-sequence blocks; out_shapes: list of (shape, dtype).

  The kernel is chosen per platform when the computation is lowered: interpreted on CPU, Mosaic
  on TPU, Triton on GPU.
  """
  def variant(**options):
    return pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((bsz,) + s, d) for s, d in out_shapes],
        grid=(bsz,),
        in_specs=[_spec(s) for s in in_shapes],
        out_specs=[_spec(s) for s, _ in out_shapes],
        **options)

  interpreted = variant(interpret=True)
  mosaic = variant(compiler_params=pltpu.CompilerParams())
  triton = variant(compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1))

  def call(*args):
    return jax.lax.platform_dependent(*args, cpu=interpreted, tpu=mosaic, cuda=triton,
                                      rocm=triton)
  return call


def _pad_to(x, sizes):
  """Zero-pads the trailing len(sizes) axes of x up to `sizes`."""
  lead = x.ndim - len(sizes)
  return jnp.pad(x, [(0, 0)] * lead + [(0, n - m) for m, n in zip(x.shape[lead:], sizes)])


def _pad_index(index, valid_below, size, fill):
  """index [B, N] -> [B, size]: entries >= valid_below (empty slots / padding) and the padded
  tail become `fill` (out of range of the padded one-hots, so they select nothing)."""
  index = jnp.where(index >= valid_below, fill, index).astype(jnp.int32)
  return jnp.pad(index, ((0, 0), (0, size - index.shape[1])), constant_values=fill)


# ----------------------------------------------------------------------------- chunk


def _chunk_fwd_kernel(x_ref, bidx_col_ref, out_ref):
  # x [L, D]; bidx_col [C, 1]; out [C, D] = onehot[C, L] @ x.
  length, capacity = x_ref.shape[1], out_ref.shape[1]
  sel = _onehot(capacity, length, bidx_col_ref[0], axis=1)
  out_ref[0] = _dot(sel, x_ref[0].astype(jnp.float32)).astype(out_ref.dtype)


def _chunk_bwd_kernel(dchunks_ref, bidx_row_ref, dx_ref):
  # dx [L, D] = onehot[L, C] @ dchunks (transpose of the forward gather).
  length, capacity = dx_ref.shape[1], dchunks_ref.shape[1]
  sel_t = _onehot(length, capacity, bidx_row_ref[0], axis=0)
  dx_ref[0] = _dot(sel_t, dchunks_ref[0].astype(jnp.float32)).astype(dx_ref.dtype)


@jax.custom_vjp
def _chunk_padded(x, boundary_index):
  """chunks [B, Cp, Dp] = x [B, Lp, Dp] at boundary_index [B, Cp] (>= Lp: empty slot -> 0)."""
  bsz, length, dim = x.shape
  capacity = boundary_index.shape[1]
  (out,) = _call(_chunk_fwd_kernel, bsz, [(length, dim), (capacity, 1)],
                 [((capacity, dim), x.dtype)])(x, boundary_index[..., None])
  return out


def _chunk_padded_fwd(x, boundary_index):
  return _chunk_padded(x, boundary_index), (boundary_index, jnp.zeros((0, x.shape[1]), x.dtype))


def _chunk_padded_bwd(res, dchunks):
  boundary_index, carrier = res
  bsz, capacity, dim = dchunks.shape
  length = carrier.shape[1]
  (dx,) = _call(_chunk_bwd_kernel, bsz, [(capacity, dim), (1, capacity)],
                [((length, dim), carrier.dtype)])(dchunks, boundary_index[:, None, :])
  return dx, None


_chunk_padded.defvjp(_chunk_padded_fwd, _chunk_padded_bwd)


def chunk_pallas(x, boundary_index):
  """chunks [B, C, D] = x [B, L, D] at boundary_index [B, C] (L = empty slot -> 0)."""
  _, length, dim = x.shape
  capacity = boundary_index.shape[1]
  lp, dp, cp = tile(length), tile(dim), tile(capacity)
  out = _chunk_padded(_pad_to(x, (lp, dp)), _pad_index(boundary_index, length, cp, lp))
  return out[:, :capacity, :dim]


# ----------------------------------------------------------------------------- dechunk


def _dechunk_fwd_kernel(zhat_ref, p_row_ref, c_col_ref, bidx_col_ref, cidx_col_ref,
                        out_ref, zbar_ref, praw_ref):
  # zhat [C, D]; p [1, L]; c [L, 1]; bidx [C, 1]; cidx [L, 1]
  # -> out [L, D], zbar [C, D], p_raw [C, 1].
  capacity, dim = zhat_ref.shape[1], zhat_ref.shape[2]
  length = p_row_ref.shape[2]
  # p_raw_j = p at chunk j's boundary: a masked row sum (a matrix-vector product without a dot).
  praw_ref[0] = jnp.sum(_onehot(capacity, length, bidx_col_ref[0], axis=1) * p_row_ref[0],
                        axis=1, keepdims=True)

  def body(j, prev):                                            # prev [1, D]
    prob = jnp.clip(praw_ref[0, pl.ds(j, 1), :], common.EMA_PROB_MIN, common.EMA_PROB_MAX)
    zhat_j = zhat_ref[0, pl.ds(j, 1), :].astype(jnp.float32)
    z = prob * zhat_j + (1.0 - prob) * prev
    zbar_ref[0, pl.ds(j, 1), :] = z
    return z

  jax.lax.fori_loop(0, capacity, body, jnp.zeros((1, dim), jnp.float32))
  ztilde = _dot(_onehot(length, capacity, cidx_col_ref[0], axis=1), zbar_ref[0])  # [L, D]
  out_ref[0] = (ztilde * common.ste_value(c_col_ref[0])).astype(out_ref.dtype)


def _dechunk_bwd_kernel(dout_ref, zhat_ref, zbar_ref, praw_ref, c_col_ref, cidx_col_ref,
                        cidx_row_ref, bidx_col_ref, dzhat_ref, dp_ref, dc_ref, dprob_ref):
  # See chunking._dechunk_fused_bwd for the equations; here in per-row form.
  # -> dzhat [C, D], dp [1, L], dc [L, 1], dprob [C, 1].
  capacity, dim = zhat_ref.shape[1], zhat_ref.shape[2]
  length = dout_ref.shape[1]
  dout = dout_ref[0].astype(jnp.float32)                        # [L, D]
  c = c_col_ref[0]                                              # [L, 1]
  ztilde = _dot(_onehot(length, capacity, cidx_col_ref[0], axis=1), zbar_ref[0])
  dc_ref[0] = jnp.sum(dout * ztilde, axis=1, keepdims=True)
  dztilde = dout * common.ste_value(c)
  # dzbar [C, D] (scatter-add as a matmul); dzhat_ref holds it until row j is overwritten.
  dzhat_ref[0] = _dot(_onehot(capacity, length, cidx_row_ref[0], axis=0), dztilde)

  def body(i, carry):
    g_next, decay_next = carry                                  # [1, D], [1, 1]
    j = capacity - 1 - i
    p_raw = praw_ref[0, pl.ds(j, 1), :]                         # [1, 1]
    prob = jnp.clip(p_raw, common.EMA_PROB_MIN, common.EMA_PROB_MAX)
    g = dzhat_ref[0, pl.ds(j, 1), :] + decay_next * g_next
    prev = zbar_ref[0, pl.ds(jnp.maximum(j - 1, 0), 1), :] * (j > 0).astype(jnp.float32)
    zhat_j = zhat_ref[0, pl.ds(j, 1), :].astype(jnp.float32)
    dprob = jnp.sum(g * (zhat_j - prev), axis=1, keepdims=True)
    dprob_ref[0, pl.ds(j, 1), :] = dprob * common.clip_grad_factor(p_raw)
    dzhat_ref[0, pl.ds(j, 1), :] = prob * g
    return g, 1.0 - prob

  jax.lax.fori_loop(0, capacity, body,
                    (jnp.zeros((1, dim), jnp.float32), jnp.zeros((1, 1), jnp.float32)))
  # dp_t = dprob of the chunk whose boundary is t: a masked column sum (no width-1 dot).
  dp_ref[0] = jnp.sum(_onehot(capacity, length, bidx_col_ref[0], axis=1) * dprob_ref[0],
                      axis=0, keepdims=True)


def _dechunk_padded_forward(chunk_out, boundary_prob, confidence, boundary_index, chunk_index):
  bsz, capacity, dim = chunk_out.shape
  length = boundary_prob.shape[1]
  call = _call(_dechunk_fwd_kernel, bsz,
               [(capacity, dim), (1, length), (length, 1), (capacity, 1), (length, 1)],
               [((length, dim), chunk_out.dtype), ((capacity, dim), jnp.float32),
                ((capacity, 1), jnp.float32)])
  return call(chunk_out, boundary_prob.astype(jnp.float32)[:, None, :],
              confidence.astype(jnp.float32)[..., None], boundary_index[..., None],
              chunk_index[..., None])


@jax.custom_vjp
def _dechunk_padded(chunk_out, boundary_prob, confidence, boundary_index, chunk_index):
  """out [B, Lp, Dp] from chunk_out [B, Cp, Dp]; chunk_index [B, Lp] with >= Cp at padding."""
  return _dechunk_padded_forward(chunk_out, boundary_prob, confidence, boundary_index,
                                 chunk_index)[0]


def _dechunk_padded_fwd(chunk_out, boundary_prob, confidence, boundary_index, chunk_index):
  out, zbar, p_raw = _dechunk_padded_forward(chunk_out, boundary_prob, confidence,
                                             boundary_index, chunk_index)
  res = (chunk_out, zbar, p_raw, confidence, boundary_index, chunk_index,
         jnp.zeros((0,), boundary_prob.dtype))
  return out, res


def _dechunk_padded_bwd(res, dout):
  chunk_out, zbar, p_raw, confidence, boundary_index, chunk_index, p_carrier = res
  bsz, capacity, dim = chunk_out.shape
  length = chunk_index.shape[1]
  call = _call(_dechunk_bwd_kernel, bsz,
               [(length, dim), (capacity, dim), (capacity, dim), (capacity, 1), (length, 1),
                (length, 1), (1, length), (capacity, 1)],
               [((capacity, dim), jnp.float32), ((1, length), jnp.float32),
                ((length, 1), jnp.float32), ((capacity, 1), jnp.float32)])
  dzhat, dp, dc, _ = call(dout, chunk_out, zbar, p_raw, confidence.astype(jnp.float32)[..., None],
                          chunk_index[..., None], chunk_index[:, None, :],
                          boundary_index[..., None])
  return (dzhat.astype(chunk_out.dtype), dp[:, 0, :].astype(p_carrier.dtype),
          dc[..., 0].astype(confidence.dtype), None, None)


_dechunk_padded.defvjp(_dechunk_padded_fwd, _dechunk_padded_bwd)


def dechunk_pallas(chunk_out, boundary_prob, confidence, boundary_index, chunk_index):
  """out [B, L, D] from chunk_out [B, C, D]; chunk_index [B, L] with C at padding."""
  _, capacity, dim = chunk_out.shape
  length = boundary_prob.shape[1]
  lp, dp, cp = tile(length), tile(dim), tile(capacity)
  out = _dechunk_padded(_pad_to(chunk_out, (cp, dp)), _pad_to(boundary_prob, (lp,)),
                        _pad_to(confidence, (lp,)),
                        _pad_index(boundary_index, length, cp, lp),
                        _pad_index(chunk_index, capacity, lp, cp))
  return out[:, :length, :dim]
