"""`FrozenLAM`: this package's `LatentActionModel` with fixed parameters behind the
`FrozenDynamicsModel` interface (`interface.py`)."""
import functools
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from hilam_jax.lam import losses
from hilam_jax.lam import model as lam_model
from hilam_jax.lam.interface import FrozenDynamicsModel


def _encode(module, params, frame_t, frame_tk):
  params = jax.lax.stop_gradient(params)
  return module.apply({"params": params}, frame_t, frame_tk,
                      method=lam_model.LatentActionModel.encode)


def _decode(module, params, frame_t, z):
  params = jax.lax.stop_gradient(params)
  return module.apply({"params": params}, frame_t, z, method=lam_model.LatentActionModel.decode)


def _per_sample_loss(module, params, frame_t, z, frame_tk):
  prediction = _decode(module, params, frame_t, z)
  return losses.per_sample_mse(prediction, lam_model.normalize_frames(frame_tk))  # [B]


class FrozenLAM(FrozenDynamicsModel):
  """Our `LatentActionModel` with fixed parameters behind the `FrozenDynamicsModel` interface.

  The parameters are copied at construction into an immutable pytree held by the object (never
  an argument a caller can differentiate) and pass through `jax.lax.stop_gradient` in every
  method. The methods are jitted pure functions of their inputs, so they can also be called
  inside a downstream `jax.jit` / `jax.grad` (shape and dtype checks use static information only).
  `reconstruction_loss` is the mean squared pixel error in [-1, 1] space of the FDM prediction.
  """

  def __init__(self, module: lam_model.LatentActionModel, params: Any, frame_gap: int,
               image_size: tuple[int, int]):
    if not isinstance(module, lam_model.LatentActionModel):
      raise TypeError(f"module must be a LatentActionModel, got {type(module).__name__}")
    if int(frame_gap) != frame_gap or frame_gap < 1:
      raise ValueError(f"frame_gap must be a positive int, got {frame_gap!r}")
    image_size = tuple(int(s) for s in image_size)
    stride = module.config.total_stride
    if len(image_size) != 2 or any(s <= 0 or s % stride for s in image_size):
      raise ValueError(f"image_size must be (H, W) divisible by the model's total stride "
                       f"{stride}, got {image_size}")
    self.module = module
    self.config = module.config
    self.latent_dim = module.config.z_dim
    self.frame_gap = int(frame_gap)
    self.image_size = image_size
    params = losses.unwrap_params(params)
    _check_param_structure(module, params, image_size)
    self._params = jax.tree_util.tree_map(jnp.array, params)  # copies: later edits can't leak in
    self._encode = jax.jit(functools.partial(_encode, module))
    self._decode = jax.jit(functools.partial(_decode, module))
    self._per_sample_loss = jax.jit(functools.partial(_per_sample_loss, module))

  @classmethod
  def from_config(cls, lam_config: Union[dict[str, Any], lam_model.LAMConfig], params: Any,
                  frame_gap: int, image_size: tuple[int, int]) -> "FrozenLAM":
    """Builds the module from its hyper-parameters (a `LAMConfig.to_dict()` dict, as stored in
    checkpoints, or a `LAMConfig`) and wraps it with `params`."""
    config = (lam_config if isinstance(lam_config, lam_model.LAMConfig)
              else lam_model.LAMConfig.from_dict(dict(lam_config)))
    return cls(lam_model.LatentActionModel(config), params, frame_gap, image_size)

  @property
  def params(self) -> Any:
    """The frozen parameter pytree (immutable jax arrays)."""
    return self._params

  def encode(self, frame_t: jax.Array, frame_tk: jax.Array) -> jax.Array:
    """uint8 [B, H, W, 3] x2 -> z float32 [B, latent_dim] (FSQ grid points with FSQ)."""
    self.check_pair(frame_t, frame_tk)
    return self._encode(self._params, frame_t, frame_tk)

  def decode(self, frame_t: jax.Array, z: jax.Array) -> jax.Array:
    """uint8 [B, H, W, 3] and z [B, D] -> predicted I_{t+k}, float32 [B, H, W, 3] in [-1, 1]."""
    self.check_frames(frame_t, "frame_t")
    self.check_latents(z, np.shape(frame_t)[0])
    return self._decode(self._params, frame_t, z)

  def reconstruction_loss(self, frame_t: jax.Array, z: jax.Array, frame_tk: jax.Array, *,
                          rng: Optional[jax.Array] = None,
                          per_sample: bool = False) -> jax.Array:
    """Pixel MSE of decode(frame_t, z) against frame_tk: scalar, or [B] if per_sample."""
    del rng  # deterministic FDM
    self.check_pair(frame_t, frame_tk)
    self.check_latents(z, np.shape(frame_t)[0])
    per_sample_loss = self._per_sample_loss(self._params, frame_t, z, frame_tk)  # [B]
    return per_sample_loss if per_sample else jnp.mean(per_sample_loss)


def _check_param_structure(module: lam_model.LatentActionModel, params: Any,
                           image_size: tuple[int, int]) -> None:
  """Strict: the params must have exactly the tree and shapes the module initialises."""
  frames = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.uint8)
  expected = jax.eval_shape(module.init, jax.random.key(0), frames, frames)["params"]
  expected_leaves = jax.tree_util.tree_leaves_with_path(expected)
  try:
    leaves = jax.tree_util.tree_leaves_with_path(params)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"params is not a pytree: {e}") from e
  expected_map = {jax.tree_util.keystr(p): v.shape for p, v in expected_leaves}
  actual_map = {jax.tree_util.keystr(p): np.shape(v) for p, v in leaves}
  missing = sorted(set(expected_map) - set(actual_map))
  unexpected = sorted(set(actual_map) - set(expected_map))
  mismatched = sorted(k for k in set(expected_map) & set(actual_map)
                      if tuple(expected_map[k]) != tuple(actual_map[k]))
  if missing or unexpected or mismatched:
    details = [f"missing {missing[:5]}" if missing else "",
               f"unexpected {unexpected[:5]}" if unexpected else "",
               "shape mismatch " + ", ".join(f"{k}: {actual_map[k]} vs expected {expected_map[k]}"
                                             for k in mismatched[:5]) if mismatched else ""]
    raise ValueError("params do not match the LatentActionModel config: "
                     + "; ".join(d for d in details if d))
