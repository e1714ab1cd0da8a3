"""The frozen dynamics model interface shared by every stage after stage 0.

Later stages need two things from a trained latent action model: latent actions for frame pairs
(`encode`, used to label videos) and a reconstruction loss that is differentiable in z with the
model's own parameters frozen (`reconstruction_loss`, HiLAM's L_rec that keeps predicted latents
"actionable"). `FrozenDynamicsModel` names that contract so a different model (e.g. UniSkill's
pretrained IDM and diffusion FDM) can be swapped in. The implementations: `frozen_lam.FrozenLAM`
(this package's `LatentActionModel`) and `uniskill.dynamics.UniSkillDynamics`;
`frozen_models.load_frozen_model` chooses one from a spec. This module imports neither.
"""
import abc
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np


class FrozenDynamicsModel(abc.ABC):
  """A frozen IDM/FDM pair. Frames are uint8 [B, H, W, 3] with (H, W) == image_size.

  Attributes:
    latent_dim: D, width of the latent action.
    frame_gap: k, the frame distance the model was trained on (pairs are (I_t, I_{t+k})).
    image_size: (H, W) the model expects; callers resize frames before calling.
    batch_size_hint: pairs per call of encode + reconstruction_loss that fit a CPU host's memory
      (the default batch of callers that are not given one, e.g. `probe.collect_pairs`).
  """
  latent_dim: int
  frame_gap: int
  image_size: tuple[int, int]
  batch_size_hint: int = 256

  @abc.abstractmethod
  def encode(self, frame_t: jax.Array, frame_tk: jax.Array) -> jax.Array:
    """uint8 [B, H, W, 3] x2 -> latent actions float32 [B, latent_dim]."""

  @abc.abstractmethod
  def reconstruction_loss(self, frame_t: jax.Array, z: jax.Array, frame_tk: jax.Array, *,
                          rng: Optional[jax.Array] = None,
                          per_sample: bool = False) -> jax.Array:
    """How well z explains I_t -> I_{t+k}: float32 scalar mean, or [B] with per_sample=True.

    Differentiable in z; the model's parameters receive no gradient. `rng` is for models whose
    loss is stochastic (a diffusion FDM samples noise and timesteps); deterministic models ignore
    it.
    """

  def check_frames(self, frames: Any, name: str) -> None:
    """Raises a clear error unless frames is uint8 [B, H, W, 3] with (H, W) == image_size."""
    shape, dtype = np.shape(frames), getattr(frames, "dtype", None)
    if len(shape) != 4:
      raise ValueError(f"{name}: expected rank 4 [B, H, W, 3], got shape {shape}")
    if tuple(shape[1:]) != (*self.image_size, 3):
      raise ValueError(f"{name}: expected [B, {self.image_size[0]}, {self.image_size[1]}, 3] "
                       f"frames (image_size={self.image_size}), got shape {shape}; resize first")
    if dtype != jnp.uint8:
      raise TypeError(f"{name}: expected uint8 frames in [0, 255], got dtype {dtype}")

  def check_latents(self, z: Any, batch_size: int) -> None:
    """Raises a clear error unless z is a floating [batch_size, latent_dim] array."""
    shape, dtype = np.shape(z), getattr(z, "dtype", None)
    if tuple(shape) != (batch_size, self.latent_dim):
      raise ValueError(f"z: expected shape [{batch_size}, {self.latent_dim}], got {shape}")
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(f"z: expected a floating dtype, got {dtype}")

  def check_pair(self, frame_t: Any, frame_tk: Any) -> None:
    self.check_frames(frame_t, "frame_t")
    self.check_frames(frame_tk, "frame_tk")
    if np.shape(frame_t)[0] != np.shape(frame_tk)[0]:
      raise ValueError(f"frame_t and frame_tk batch sizes differ: {np.shape(frame_t)[0]} vs "
                       f"{np.shape(frame_tk)[0]}")
