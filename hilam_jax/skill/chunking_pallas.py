"""Pallas kernels for dynamic chunking: chunk gather and dechunk (EMA, upsample, STE), fwd + bwd.

Same operations and index conventions as the "fused" path of chunking.py (which documents them);
both custom_vjp backward passes are Pallas kernels too. One grid program per sequence (grid = (B,)),
each holding its whole [L, D] / [C, D] block: sized for the short sequences of the skill model.

Written to lower on TPU/GPU: gathers and scatters are one-hot matmuls built from `iota == index`
(no dynamic gather), the EMA is a sequential loop over chunks reading and writing one row of a ref
at a time (`pl.ds(j, 1)`), index vectors arrive in the orientation each one-hot needs (row [1, N]
or column [N, 1]). On CPU they run with `interpret=True` (chosen automatically); they were only
tested in interpret mode. On GPU (Triton) block dimensions must be powers of two, so L, C and D
would have to be padded to powers of two there; on TPU full-array blocks have no such constraint.

Dimension glossary:
  B  batch
  L  sequence length
  D  width
  C  chunk capacity
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from hilam_jax.skill import chunking

_HI = jax.lax.Precision.HIGHEST


def _interpret() -> bool:
  return jax.default_backend() == "cpu"


def _onehot(rows, cols, index, axis):
  """[rows, cols] float32 one-hot: entry (r, c) is 1 where iota along `axis` equals index."""
  return (jax.lax.broadcasted_iota(jnp.int32, (rows, cols), axis) == index).astype(jnp.float32)


def _dot(a, b):
  return jnp.dot(a, b, precision=_HI, preferred_element_type=jnp.float32)


def _spec(shape):
  """Block = one batch element of an array shaped [B, *shape]."""
  return pl.BlockSpec((1,) + tuple(shape), lambda i: (i,) + (0,) * len(shape))


def _call(kernel, bsz, in_shapes, out_shapes):
  """pallas_call over grid (B,) with per-sequence blocks; out_shapes: list of (shape, dtype)."""
  return pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct((bsz,) + s, d) for s, d in out_shapes],
      grid=(bsz,),
      in_specs=[_spec(s) for s in in_shapes],
      out_specs=[_spec(s) for s, _ in out_shapes],
      interpret=_interpret())


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
def chunk_pallas(x, boundary_index):
  """chunks [B, C, D] = x at boundary_index [B, C] (L = empty slot -> 0)."""
  bsz, length, dim = x.shape
  capacity = boundary_index.shape[1]
  (out,) = _call(_chunk_fwd_kernel, bsz, [(length, dim), (capacity, 1)],
                 [((capacity, dim), x.dtype)])(x, boundary_index[..., None])
  return out


def _chunk_pallas_fwd(x, boundary_index):
  return chunk_pallas(x, boundary_index), (boundary_index, jnp.zeros((0, x.shape[1]), x.dtype))


def _chunk_pallas_bwd(res, dchunks):
  boundary_index, carrier = res
  bsz, capacity, dim = dchunks.shape
  length = carrier.shape[1]
  (dx,) = _call(_chunk_bwd_kernel, bsz, [(capacity, dim), (1, capacity)],
                [((length, dim), carrier.dtype)])(dchunks, boundary_index[:, None, :])
  return dx, None


chunk_pallas.defvjp(_chunk_pallas_fwd, _chunk_pallas_bwd)


# ----------------------------------------------------------------------------- dechunk


def _dechunk_fwd_kernel(zhat_ref, p_col_ref, c_col_ref, bidx_col_ref, cidx_col_ref,
                        out_ref, zbar_ref, praw_ref):
  # zhat [C, D]; p, c [L, 1]; bidx [C, 1]; cidx [L, 1] -> out [L, D], zbar [C, D], p_raw [C, 1].
  capacity, dim = zhat_ref.shape[1], zhat_ref.shape[2]
  length = p_col_ref.shape[1]
  praw_ref[0] = _dot(_onehot(capacity, length, bidx_col_ref[0], axis=1), p_col_ref[0])

  def body(j, prev):                                            # prev [1, D]
    prob = jnp.clip(praw_ref[0, pl.ds(j, 1), :], chunking.EMA_PROB_MIN, chunking.EMA_PROB_MAX)
    zhat_j = zhat_ref[0, pl.ds(j, 1), :].astype(jnp.float32)
    z = prob * zhat_j + (1.0 - prob) * prev
    zbar_ref[0, pl.ds(j, 1), :] = z
    return z

  jax.lax.fori_loop(0, capacity, body, jnp.zeros((1, dim), jnp.float32))
  ztilde = _dot(_onehot(length, capacity, cidx_col_ref[0], axis=1), zbar_ref[0])  # [L, D]
  out_ref[0] = (ztilde * chunking.ste_value(c_col_ref[0])).astype(out_ref.dtype)


def _dechunk_bwd_kernel(dout_ref, zhat_ref, zbar_ref, praw_ref, c_col_ref, cidx_col_ref,
                        cidx_row_ref, bidx_row_ref, dzhat_ref, dp_ref, dc_ref, dprob_ref):
  # See chunking._dechunk_fused_bwd for the equations; here in per-row form.
  capacity, dim = zhat_ref.shape[1], zhat_ref.shape[2]
  length = dout_ref.shape[1]
  dout = dout_ref[0].astype(jnp.float32)                        # [L, D]
  c = c_col_ref[0]                                              # [L, 1]
  ztilde = _dot(_onehot(length, capacity, cidx_col_ref[0], axis=1), zbar_ref[0])
  dc_ref[0] = jnp.sum(dout * ztilde, axis=1, keepdims=True)
  dztilde = dout * chunking.ste_value(c)
  # dzbar [C, D] (scatter-add as a matmul); dzhat_ref holds it until row j is overwritten.
  dzhat_ref[0] = _dot(_onehot(capacity, length, cidx_row_ref[0], axis=0), dztilde)

  def body(i, carry):
    g_next, decay_next = carry                                  # [1, D], [1, 1]
    j = capacity - 1 - i
    p_raw = praw_ref[0, pl.ds(j, 1), :]                         # [1, 1]
    prob = jnp.clip(p_raw, chunking.EMA_PROB_MIN, chunking.EMA_PROB_MAX)
    g = dzhat_ref[0, pl.ds(j, 1), :] + decay_next * g_next
    prev = zbar_ref[0, pl.ds(jnp.maximum(j - 1, 0), 1), :] * (j > 0).astype(jnp.float32)
    zhat_j = zhat_ref[0, pl.ds(j, 1), :].astype(jnp.float32)
    dprob = jnp.sum(g * (zhat_j - prev), axis=1, keepdims=True)
    dprob_ref[0, pl.ds(j, 1), :] = dprob * chunking.clip_grad_factor(p_raw)
    dzhat_ref[0, pl.ds(j, 1), :] = prob * g
    return g, 1.0 - prob

  jax.lax.fori_loop(0, capacity, body,
                    (jnp.zeros((1, dim), jnp.float32), jnp.zeros((1, 1), jnp.float32)))
  dp_ref[0] = _dot(_onehot(length, capacity, bidx_row_ref[0], axis=0), dprob_ref[0])


def _dechunk_pallas_forward(chunk_out, boundary_prob, confidence, boundary_index, chunk_index):
  bsz, capacity, dim = chunk_out.shape
  length = boundary_prob.shape[1]
  call = _call(_dechunk_fwd_kernel, bsz,
               [(capacity, dim), (length, 1), (length, 1), (capacity, 1), (length, 1)],
               [((length, dim), chunk_out.dtype), ((capacity, dim), jnp.float32),
                ((capacity, 1), jnp.float32)])
  return call(chunk_out, boundary_prob.astype(jnp.float32)[..., None],
              confidence.astype(jnp.float32)[..., None], boundary_index[..., None],
              chunk_index[..., None])


@jax.custom_vjp
def dechunk_pallas(chunk_out, boundary_prob, confidence, boundary_index, chunk_index):
  """out [B, L, D] from chunk_out [B, C, D]; chunk_index [B, L] with C at padding."""
  return _dechunk_pallas_forward(chunk_out, boundary_prob, confidence, boundary_index,
                                 chunk_index)[0]


def _dechunk_pallas_fwd(chunk_out, boundary_prob, confidence, boundary_index, chunk_index):
  out, zbar, p_raw = _dechunk_pallas_forward(chunk_out, boundary_prob, confidence,
                                             boundary_index, chunk_index)
  res = (chunk_out, zbar, p_raw, confidence, boundary_index, chunk_index,
         jnp.zeros((0,), boundary_prob.dtype))
  return out, res


def _dechunk_pallas_bwd(res, dout):
  chunk_out, zbar, p_raw, confidence, boundary_index, chunk_index, p_carrier = res
  bsz, capacity, dim = chunk_out.shape
  length = chunk_index.shape[1]
  call = _call(_dechunk_bwd_kernel, bsz,
               [(length, dim), (capacity, dim), (capacity, dim), (capacity, 1), (length, 1),
                (length, 1), (1, length), (1, capacity)],
               [((capacity, dim), jnp.float32), ((length, 1), jnp.float32),
                ((length, 1), jnp.float32), ((capacity, 1), jnp.float32)])
  dzhat, dp, dc, _ = call(dout, chunk_out, zbar, p_raw, confidence.astype(jnp.float32)[..., None],
                          chunk_index[..., None], chunk_index[:, None, :],
                          boundary_index[:, None, :])
  return (dzhat.astype(chunk_out.dtype), dp[..., 0].astype(p_carrier.dtype),
          dc[..., 0].astype(confidence.dtype), None, None)


dechunk_pallas.defvjp(_dechunk_pallas_fwd, _dechunk_pallas_bwd)
