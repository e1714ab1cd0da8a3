"""The frozen dynamics model interface shared by every stage after stage 0.

Later stages need two things from a trained latent action model: latent actions for frame pairs
(`encode`, used to label videos) and a reconstruction loss that is differentiable in z with the
model's own parameters frozen (`reconstruction_loss`, HiLAM's L_rec that keeps predicted latents
"actionable"). `FrozenDynamicsModel` names that contract so a different model (e.g. UniSkill's
pretrained IDM and diffusion FDM) can be swapped in; `FrozenLAM` implements it for this package's
`LatentActionModel`.
"""
import abc
import functools
import json
import os
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from hilam_jax.lam import losses
from hilam_jax.lam import model as lam_model


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


# ----------------------------------------------------------------------------- choosing the model

LAM_SCHEME = "lam"
UNISKILL_SCHEME = "uniskill"
FROZEN_MODEL_FORMS = ("'lam:<train_lam workdir>'", "'uniskill:<converted dir>'",
                      "'<train_lam workdir>' (a bare path: lam, as before the schemes)")
# The files of a converted UniSkill directory (`python -m experiments.convert_uniskill
# --out_dir=<dir>`), per part, relative to the directory: the IDM (`--idm`, <dir>/idm),
# Depth-Anything-V2-Small (`--depth`, <dir>/depth) and the FDM's UNet (`--unet`, <dir>/unet) and
# VAE (`--vae`, <dir>/vae). `uniskill_dynamics.UniSkillDynamics` needs all four.
UNISKILL_PARTS = {"idm": "idm/manifest.json", "depth": "depth/manifest.json",
                  "fdm_unet": "unet/manifest.json", "fdm_vae": "vae/manifest.json"}


def parse_frozen_model(spec: str) -> tuple[str, str]:
  """'lam:<dir>' / 'uniskill:<dir>' / '<dir>' -> (scheme, path).

  A bare path (no 'word:' prefix, or a URL such as 'gs://bucket/run') is a LAM workdir, the
  meaning every config had before the schemes existed.

  Raises:
    ValueError: an empty spec or path, or an unknown 'word:' scheme (the message lists the
      accepted forms).
  """
  if not isinstance(spec, str) or not spec:
    raise ValueError(f"frozen model spec must be a non-empty string, got {spec!r}; accepted: "
                     + ", ".join(FROZEN_MODEL_FORMS))
  scheme, sep, path = spec.partition(":")
  if not sep or path.startswith("//") or not scheme.isidentifier():
    return LAM_SCHEME, spec  # a bare path (or URL)
  if scheme not in (LAM_SCHEME, UNISKILL_SCHEME):
    raise ValueError(f"frozen model spec {spec!r}: unknown scheme {scheme!r}; accepted: "
                     + ", ".join(FROZEN_MODEL_FORMS))
  if not path:
    raise ValueError(f"frozen model spec {spec!r}: no path after '{scheme}:'")
  return scheme, path


def missing_uniskill_parts(converted_dir: str) -> dict[str, str]:
  """The parts of `UNISKILL_PARTS` whose file is absent from `converted_dir`: {part: file}."""
  return {part: rel for part, rel in UNISKILL_PARTS.items()
          if not os.path.exists(os.path.join(converted_dir, rel))}


def require_uniskill_parts(spec: str, path: str, step: Optional[int]) -> None:
  """Raises ValueError for a step (lam: only) and FileNotFoundError naming every missing part."""
  if step is not None:
    raise ValueError(f"frozen model {spec!r}: a checkpoint step ({step}) applies to lam: only")
  missing = missing_uniskill_parts(path)
  if missing:
    raise FileNotFoundError(
        f"frozen model {spec!r}: missing part(s) " + ", ".join(
            f"{part} ({os.path.join(path, rel)})" for part, rel in missing.items())
        + ". UniSkillDynamics needs the IDM + depth (Depth-Anything-V2-Small) + FDM (UNet and "
        "VAE); an IDM alone can label frames with depth given, not serve as a frozen model.")


def load_frozen_model(spec: str, step: Optional[int] = None) -> FrozenDynamicsModel:
  """The one place that chooses the frozen dynamics model of labeling, L_rec and the main job.

  Args:
    spec: see `parse_frozen_model`: 'lam:<workdir>' (or a bare workdir) is this package's LAM as
      `trainer.load_frozen_lam` restores it; 'uniskill:<converted dir>' is UniSkill's IDM + depth
      + diffusion FDM (`uniskill_dynamics.UniSkillDynamics.from_converted`).
    step: the LAM checkpoint step (None: latest); must be None for uniskill.

  Raises:
    ValueError: an unknown scheme, or a step given for uniskill.
    FileNotFoundError: a uniskill directory without every part (names the missing ones).
  """
  scheme, path = parse_frozen_model(spec)
  if scheme == LAM_SCHEME:
    from hilam_jax.lam import trainer  # pylint: disable=g-import-not-at-top  (trainer imports us)
    return trainer.load_frozen_lam(path, step)
  require_uniskill_parts(spec, path, step)
  from hilam_jax.lam.uniskill import dynamics as uniskill_dynamics  # pylint: disable=g-import-not-at-top  (imports us)
  return uniskill_dynamics.UniSkillDynamics.from_converted(path)


def frozen_model_fingerprint(spec: str, step: Optional[int] = None) -> dict[str, Any]:
  """Identifies the model of `spec` for label manifests (lam: `trainer.checkpoint_fingerprint`,
  unchanged, so existing label folders keep their identity; uniskill: per part, its manifest's
  format, source sha256(s) and converted params' sha256, plus the DynamicsConfig in effect).

  Raises:
    ValueError / FileNotFoundError: as `load_frozen_model` (without loading any weights).
  """
  scheme, path = parse_frozen_model(spec)
  if scheme == LAM_SCHEME:
    from hilam_jax.lam import trainer  # pylint: disable=g-import-not-at-top
    return trainer.checkpoint_fingerprint(path, step)
  require_uniskill_parts(spec, path, step)
  from hilam_jax.lam.uniskill import dynamics as uniskill_dynamics  # pylint: disable=g-import-not-at-top
  parts = {}
  for part, rel in UNISKILL_PARTS.items():
    with open(os.path.join(path, rel)) as f:
      manifest = json.load(f)
    parts[part] = {"format": manifest["format"],
                   "source_sha256": _source_sha256(manifest["source"]),
                   "params_sha256": manifest.get("params_sha256",
                                                 manifest.get("variables_sha256"))}
  return {"uniskill_dir": os.path.abspath(path), "parts": parts,
          "dynamics": uniskill_dynamics.load_dynamics_config(path).to_dict()}


def _source_sha256(source: dict[str, Any]) -> Any:
  """A converter manifest's source sha256(s): the IDM's and the FDM's converters write
  {"sha256": ...}, the depth converter {file name: {"sha256": ...}}."""
  if "sha256" in source:
    return source["sha256"]
  return {name: entry["sha256"] for name, entry in source.items()}
