"""Mixed precision for every trainer: bfloat16 compute, float32 parameters and optimizer state.

`compute_in(dtype, loss_fn)` wraps a loss `(params, batch, rng) -> (loss, metrics)` so that,
inside it:
  - the floating-point parameters are cast to `dtype` on the way in (the stored parameters, the
    gradients and the optimizer state stay float32: the cast's transpose returns float32
    cotangents);
  - every Flax layer that does arithmetic on activations (Dense, DenseGeneral, Conv,
    ConvTranspose, Einsum, LayerNorm, GroupNorm, RMSNorm) gets its floating inputs cast to `dtype`
    (`flax.linen.intercept_methods`), so a model computes in `dtype` without a dtype field in
    every module, including where it builds float32 values itself (uint8 pixels normalised to
    float32, a float32 conditioning vector). Flax's norm layers compute their statistics in
    float32 whatever their input;
  - the floating outputs of every outermost module call (the model, a frozen model inside the
    loss) are cast back to float32, so losses and metrics are reduced in float32; the loss and
    the metrics are returned as float32.
Layers created with an explicit `dtype=jnp.float32` (the skill model's W_res) still compute in
float32 (Flax promotes their input), on parameters rounded to `dtype`.

The trainers take `config.compute_dtype` ("float32", the default, or "bfloat16") through
`make_train_step` / `make_eval_step`. bfloat16 pays off on TPUs and recent GPUs; on this CPU it
is slower than float32 (XLA's CPU backend emulates most bfloat16 arithmetic).
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")
LAYERS = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.ConvTranspose, nn.Einsum, nn.LayerNorm,
          nn.GroupNorm, nn.RMSNorm)


def check_compute_dtype(name: Any) -> str:
  """The dtype name, or a ValueError naming the choices."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype={name!r}: expected one of {COMPUTE_DTYPES}")
  return name


def _cast_floating(tree: Any, dtype: Any) -> Any:
  """Every floating-point array leaf of `tree` as `dtype`; other leaves unchanged."""
  def cast(x):
    if isinstance(x, (jax.Array, jnp.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating):
      return x.astype(dtype)
    return x
  return jax.tree.map(cast, tree)


class _Depth(threading.local):
  value = 0


@contextlib.contextmanager
def _layers_compute_in(dtype: Any):
  """Within the block, Flax layers see floating inputs as `dtype`; outermost module calls return
  floating outputs as float32."""
  depth = _Depth()

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, LAYERS):
      args, kwargs = _cast_floating((args, kwargs), dtype)
    outermost = depth.value == 0
    depth.value += 1
    try:
      out = next_fun(*args, **kwargs)
    finally:
      depth.value -= 1
    return _cast_floating(out, jnp.float32) if outermost else out

  with nn.intercept_methods(interceptor):
    yield


def compute_in(dtype: str, loss_fn: Callable[..., Any]) -> Callable[..., Any]:
  """`loss_fn(params, batch, rng, ...)` computed in `dtype` ("float32": loss_fn itself)."""
  if check_compute_dtype(dtype) == "float32":
    return loss_fn
  compute_dtype = jnp.dtype(dtype)

  @functools.wraps(loss_fn)
  def wrapped(params, *args, **kwargs):
    with _layers_compute_in(compute_dtype):
      out = loss_fn(_cast_floating(params, compute_dtype), *args, **kwargs)
    return _cast_floating(out, jnp.float32)
  return wrapped
