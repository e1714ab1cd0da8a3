"""What both dechunk implementations of the EMA use, chunking.py's "fused" path and the Pallas
kernels of chunking_pallas.py: the probability clip and the forward value / gradient factors of
its pieces."""
import jax.numpy as jnp

EMA_PROB_MIN = 1e-4        # P_j is clipped to [EMA_PROB_MIN, 1 - EMA_PROB_MIN] in the EMA.
EMA_PROB_MAX = 1.0 - 1e-4


def clip_grad_factor(p_raw):
  """d clip(p, EMA_PROB_MIN, EMA_PROB_MAX) / dp, with jnp.clip's 0.5 at exact ties."""
  inside = (p_raw > EMA_PROB_MIN) & (p_raw < EMA_PROB_MAX)
  tie = (p_raw == EMA_PROB_MIN) | (p_raw == EMA_PROB_MAX)
  return jnp.where(inside, 1.0, jnp.where(tie, 0.5, 0.0))


def ste_value(confidence):
  """Forward value of STE(c) = c + stop_gradient(1 - c) (1 up to rounding)."""
  return confidence + (1.0 - confidence)
