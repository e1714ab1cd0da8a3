"""UniSkill's frozen IDM + diffusion FDM behind the `FrozenDynamicsModel` interface.

  encode(I_t, I_{t+k})          frames -> [0, 1] -> the IDM's size (bilinear) -> Depth-Anything
                                depth maps (UniSkill's training-time preprocessing,
                                `depth_anything.uniskill_depth`) -> IDM -> the 64-d skill z
  reconstruction_loss(I_t, z, I_{t+k})
                                HiLAM's L_rec with UniSkill's FDM: the diffusion objective with z
                                as the condition (below)

The loss, per pair (InstructPix2Pix's training objective, which UniSkill's FDM was trained with):
  1. token = latent_proj(latent_norm(z)), the IDM's FDM head: [B, 1, E] cross-attention context.
  2. Both frames -> [0, 1] -> `fdm_resolution` (bilinear, 256 in UniSkill) -> [-1, 1] -> VAE
     encoder. Target x0 = the VAE latent of I_{t+k} (a sample of its Gaussian, or its mean),
     times scaling_factor; condition c = the latent mean of I_t, *unscaled* as InstructPix2Pix's
     training script and pipeline do (`scale_condition_latent` scales it too).
  3. For each of `num_timestep_samples` draws: t ~ U{0, ..., T-1}, eps ~ N(0, I),
     x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (DDPM, scaled_linear betas 0.00085..0.012,
     T = 1000 unless a scheduler config says otherwise).
  4. UNet(concat(x_t, c) [8 channels], t, token) vs the target (eps; v for v_prediction):
     mean squared error over the latent, optionally min-SNR-gamma weighted
     (`loss_weighting="min_snr"`: min(SNR_t, gamma) / SNR_t), averaged over the draws.
Every random draw comes from `rng` (None: a fixed key, so calls without one are deterministic and
compare z's under the same noise). Gradients flow to z only: every parameter passes through
`stop_gradient`. HiLAM's L_rec form is not published (UNISKILL.md: OPEN), hence the knobs in
`DynamicsConfig`.

Dimension glossary: B pairs, K timestep draws per pair, H x W frame size (`image_size`), R the
FDM's pixel resolution, r = R / f the latent side (f the VAE's downsampling, 8), L latent
channels (4), Z skill width (64), E token width (768).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline import run_info
from hilam_jax import config_io
from hilam_jax.lam.uniskill import depth_anything
from hilam_jax.lam.uniskill import depth_anything_convert
from hilam_jax.lam import interface
from hilam_jax.lam.uniskill import convert as uniskill_convert
from hilam_jax.lam.uniskill import fdm as uniskill_fdm
from hilam_jax.lam.uniskill import fdm_convert as uniskill_fdm_convert
from hilam_jax.lam.uniskill import idm as uniskill_idm

DYNAMICS_FILE = "dynamics.json"  # optional DynamicsConfig overrides in a converted directory
SCHEDULER_FILE = os.path.join("scheduler", "scheduler_config.json")  # optional, diffusers layout
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class NoiseSchedule(config_io.DictConfig):
  """The DDPM forward process (diffusers' `DDPMScheduler` fields that the loss reads)."""
  num_train_timesteps: int = 1000
  beta_start: float = 0.00085
  beta_end: float = 0.012
  beta_schedule: str = "scaled_linear"
  prediction_type: str = "epsilon"

  def __post_init__(self):
    if self.beta_schedule not in ("scaled_linear", "linear"):
      raise ValueError(f"beta_schedule {self.beta_schedule!r}: only 'scaled_linear' and "
                       "'linear' are implemented")
    if self.prediction_type not in ("epsilon", "v_prediction"):
      raise ValueError(f"prediction_type {self.prediction_type!r}: only 'epsilon' and "
                       "'v_prediction' are implemented")

  @classmethod
  def from_scheduler_config(cls, config: dict[str, Any]) -> "NoiseSchedule":
    """From a diffusers `scheduler_config.json` (unknown keys ignored; trained_betas refused)."""
    if config.get("trained_betas") is not None:
      raise ValueError("scheduler config: trained_betas is not implemented")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in fields})

  def alphas_cumprod(self) -> np.ndarray:
    """abar_t for t = 0 .. T-1, float32, computed as diffusers does (float32 betas, cumprod)."""
    t = self.num_train_timesteps
    if self.beta_schedule == "scaled_linear":
      betas = np.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, t,
                          dtype=np.float32) ** 2
    else:
      betas = np.linspace(self.beta_start, self.beta_end, t, dtype=np.float32)
    return np.cumprod(1.0 - betas, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class DynamicsConfig(config_io.DictConfig):
  """Knobs of `UniSkillDynamics`; a converted directory may hold overrides in `dynamics.json`.

  Attributes:
    frame_gap: k of the pairs (I_t, I_{t+k}) the caller forms. Not in the released weights:
      UniSkill's k is a data choice; set it to the gap the labels should use.
    image_size: H = W of the frames callers pass (None: the IDM's, 224).
    fdm_resolution: R, the pixel size the FDM sees (UniSkill: 256).
    num_timestep_samples: K, (t, eps) draws per pair, averaged (OPEN in the paper).
    loss_weighting: "mse" (plain eps-MSE, InstructPix2Pix's) or "min_snr" (per-timestep
      min(SNR, snr_gamma) / SNR weights).
    snr_gamma: gamma of min_snr.
    target_latent: "sample" (a draw of the VAE's Gaussian, as InstructPix2Pix trains) or "mean".
    scale_condition_latent: multiply I_t's latent by scaling_factor too (InstructPix2Pix: no).
    dtype: "float32" or "bfloat16" compute of the IDM, UNet and VAE (params stay float32).
    depth_size: the side Depth-Anything's input is resized to (the DPT processor's 518, as
      UniSkill trained; smaller sizes, multiples of 14, are for tests and smoke runs).
    schedule: the DDPM noise schedule.
  """
  frame_gap: int = 1
  image_size: Optional[int] = None
  fdm_resolution: int = 256
  num_timestep_samples: int = 1
  loss_weighting: str = "mse"
  snr_gamma: float = 5.0
  target_latent: str = "sample"
  scale_condition_latent: bool = False
  dtype: str = "float32"
  schedule: NoiseSchedule = NoiseSchedule()
  depth_size: int = depth_anything.DPT_SIZE

  def __post_init__(self):
    if isinstance(self.schedule, dict):
      object.__setattr__(self, "schedule", NoiseSchedule.from_dict(self.schedule))
    for name, allowed in (("loss_weighting", ("mse", "min_snr")),
                          ("target_latent", ("sample", "mean")),
                          ("dtype", tuple(_DTYPES))):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name} {getattr(self, name)!r}: expected one of {allowed}")
    if self.frame_gap < 1 or self.num_timestep_samples < 1:
      raise ValueError("frame_gap and num_timestep_samples must be >= 1")


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything the jitted functions close over (hashable configs)."""
  idm: uniskill_idm.IDMConfig
  depth: depth_anything.DepthConfig
  unet: uniskill_fdm.UNetConfig
  vae: uniskill_fdm.VAEConfig
  dynamics: DynamicsConfig

  @property
  def dtype(self):
    return _DTYPES[self.dynamics.dtype]


def _to_unit(frames: jax.Array, size: int) -> jax.Array:
  """uint8 [B, H, W, 3] -> float32 [B, size, size, 3] in [0, 1] (bilinear, align_corners=False,
  as torch `interpolate`; no resize when the size matches)."""
  x = frames.astype(jnp.float32) / 255.0
  if x.shape[1:3] != (size, size):
    x = depth_anything.resize_bilinear(x, (size, size), align_corners=False)
  return x


def _encode(static: _Static, params: dict, frame_t: jax.Array, frame_tk: jax.Array) -> jax.Array:
  size = static.idm.image_size
  rgb = jnp.stack([_to_unit(frame_t, size), _to_unit(frame_tk, size)], axis=1)  # [B, 2, S, S, 3]
  b = rgb.shape[0]
  depth = depth_anything.uniskill_depth(params["depth"], rgb.reshape(2 * b, size, size, 3),
                                        config=static.depth, out_size=size,
                                        pixels_size=static.dynamics.depth_size)
  return uniskill_idm.idm_skill(params["idm"], rgb, depth.reshape(b, 2, size, size),
                                config=static.idm, dtype=static.dtype)


def _latent_side(static: _Static) -> int:
  return static.dynamics.fdm_resolution // static.vae.downsample_factor


def _draw(static: _Static, rng: jax.Array, batch_size: int) -> dict[str, jax.Array]:
  """Every random draw of the loss: {"latent_noise" [B, r, r, L] (the VAE sample's), "timesteps"
  int32 [K, B], "noise" [K, B, r, r, L]}."""
  r, channels = _latent_side(static), static.vae.latent_channels
  k = static.dynamics.num_timestep_samples
  rng_latent, rng_t, rng_noise = jax.random.split(rng, 3)
  return {"latent_noise": jax.random.normal(rng_latent, (batch_size, r, r, channels)),
          "timesteps": jax.random.randint(rng_t, (k, batch_size), 0,
                                          static.dynamics.schedule.num_train_timesteps),
          "noise": jax.random.normal(rng_noise, (k, batch_size, r, r, channels))}


def timestep_weights(config: DynamicsConfig, timesteps: jax.Array) -> jax.Array:
  """Per-draw loss weights [K, B]: 1 for "mse"; min-SNR-gamma for "min_snr", with
  SNR_t = abar_t / (1 - abar_t): min(SNR_t, gamma) / SNR_t for epsilon targets and
  min(SNR_t, gamma) / (SNR_t + 1) for v targets (as diffusers' training scripts)."""
  if config.loss_weighting == "mse":
    return jnp.ones(timesteps.shape, jnp.float32)
  abar = jnp.asarray(config.schedule.alphas_cumprod())[timesteps]
  snr = abar / (1.0 - abar)
  denominator = snr if config.schedule.prediction_type == "epsilon" else snr + 1.0
  return jnp.minimum(snr, config.snr_gamma) / denominator


def _per_sample_loss_given(static: _Static, params: dict, frame_t: jax.Array, z: jax.Array,
                           frame_tk: jax.Array, draws: dict[str, jax.Array]) -> jax.Array:
  """The diffusion objective (module docstring) per pair for given draws: float32 [B]."""
  cfg, dtype, schedule = static.dynamics, static.dtype, static.dynamics.schedule
  b = frame_t.shape[0]
  token = uniskill_idm.fdm_token_from_skill(params["idm"], z, config=static.idm,
                                            dtype=dtype)  # [B, 1, E]
  pixels = jnp.concatenate([_to_unit(frame_t, cfg.fdm_resolution),
                            _to_unit(frame_tk, cfg.fdm_resolution)]) * 2.0 - 1.0  # [2B, R, R, 3]
  mean, logvar = uniskill_fdm.vae_moments(params["vae"], pixels, config=static.vae, dtype=dtype)
  condition, x0 = mean[:b], mean[b:]  # [B, r, r, L]
  if cfg.target_latent == "sample":
    x0 = x0 + jnp.exp(0.5 * logvar[b:]) * draws["latent_noise"]
  x0 = uniskill_fdm.scale_latents(x0, static.vae)
  if cfg.scale_condition_latent:
    condition = uniskill_fdm.scale_latents(condition, static.vae)

  timesteps, noise = draws["timesteps"], draws["noise"]  # [K, B], [K, B, r, r, L]
  k = timesteps.shape[0]
  abar = jnp.asarray(schedule.alphas_cumprod())[timesteps][..., None, None, None]
  noisy = jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise
  unet_in = jnp.concatenate([noisy, jnp.broadcast_to(condition, noise.shape)], axis=-1)
  prediction = uniskill_fdm.unet_apply(
      params["unet"], unet_in.reshape(k * b, *unet_in.shape[2:]), timesteps.reshape(k * b),
      jnp.tile(token, (k, 1, 1)), config=static.unet, dtype=dtype).reshape(noise.shape)
  if schedule.prediction_type == "epsilon":
    target = noise
  else:  # v_prediction
    target = jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0
  mse = jnp.mean(jnp.square(prediction - target), axis=(2, 3, 4))  # [K, B]
  return (timestep_weights(cfg, timesteps) * mse).mean(axis=0)  # [B]


def _per_sample_loss(static: _Static, params: dict, frame_t: jax.Array, z: jax.Array,
                     frame_tk: jax.Array, rng: jax.Array) -> jax.Array:
  return _per_sample_loss_given(static, params, frame_t, z, frame_tk,
                                _draw(static, rng, frame_t.shape[0]))


class UniSkillDynamics(interface.FrozenDynamicsModel):
  """UniSkill's IDM (+ Depth-Anything depth) and diffusion FDM, frozen.

  Build with `from_converted(dir)` (what `frozen_models.load_frozen_model('uniskill:<dir>')`
  does) or from the parts' (config, variables) pairs. Parameters are copied into jax arrays held
  by the object and pass through `stop_gradient`; the methods are jitted pure functions, usable
  inside a caller's jit / grad.
  """

  def __init__(self, idm: tuple[uniskill_idm.IDMConfig, dict],
               depth: tuple[depth_anything.DepthConfig, dict],
               unet: tuple[uniskill_fdm.UNetConfig, dict],
               vae: tuple[uniskill_fdm.VAEConfig, dict],
               config: DynamicsConfig = DynamicsConfig()):
    static = _Static(idm[0], depth[0], unet[0], vae[0], config)
    if unet[0].cross_attention_dim != idm[0].out_dim:
      raise ValueError(f"the UNet's cross_attention_dim {unet[0].cross_attention_dim} != the "
                       f"IDM's FDM token width {idm[0].out_dim}")
    if (unet[0].in_channels, unet[0].out_channels) != (2 * vae[0].latent_channels,
                                                       vae[0].latent_channels):
      raise ValueError(f"UNet in/out channels {unet[0].in_channels}/{unet[0].out_channels} do "
                       f"not fit {vae[0].latent_channels} VAE latent channels (InstructPix2Pix: "
                       f"2L in, L out)")
    latent_factor = vae[0].downsample_factor * 2 ** (unet[0].num_levels - 1)
    if config.fdm_resolution % latent_factor:
      raise ValueError(f"fdm_resolution {config.fdm_resolution} is not divisible by "
                       f"{latent_factor} (VAE x UNet downsampling)")
    self.static = static
    self.config = config
    self.latent_dim = idm[0].skill_dim
    self.frame_gap = config.frame_gap
    side = config.image_size or idm[0].image_size
    self.image_size = (side, side)
    # The 518-px depth model: batches of 256 pairs took 13.7 GB on the CPU (the notebook's probe).
    self.batch_size_hint = 16
    self._params = jax.tree_util.tree_map(
        jnp.asarray, {"idm": idm[1], "depth": depth[1], "unet": unet[1], "vae": vae[1]})
    self._encode = jax.jit(functools.partial(_encode, static))
    self._per_sample_loss = jax.jit(functools.partial(_per_sample_loss, static))
    self._draw = jax.jit(functools.partial(_draw, static), static_argnums=1)

  @classmethod
  def from_converted(cls, converted_dir: str,
                     config: Optional[DynamicsConfig] = None) -> "UniSkillDynamics":
    """Loads every part of a converted directory (`frozen_models.UNISKILL_PARTS`). The config is
    `config`, else `<dir>/dynamics.json` (DynamicsConfig fields) if present, else the defaults;
    the schedule comes from `<dir>/scheduler/scheduler_config.json` when that exists and the
    config does not come from the caller."""
    if config is None:
      config = load_dynamics_config(converted_dir)
    return cls(uniskill_convert.load_idm(os.path.join(converted_dir, "idm")),
               depth_anything_convert.load(os.path.join(converted_dir, "depth")),
               uniskill_fdm_convert.load_unet(os.path.join(converted_dir, "unet")),
               uniskill_fdm_convert.load_vae(os.path.join(converted_dir, "vae")), config)

  @property
  def params(self) -> dict:
    """{"idm", "depth", "unet", "vae"}: the frozen parameter trees (jax arrays)."""
    return self._params

  def encode(self, frame_t: jax.Array, frame_tk: jax.Array) -> jax.Array:
    """uint8 [B, H, W, 3] x2 -> the skill latent z, float32 [B, 64]."""
    self.check_pair(frame_t, frame_tk)
    return self._encode(self._params, frame_t, frame_tk)

  def encode_with_depth(self, rgb: jax.Array, depth: jax.Array) -> jax.Array:
    """The IDM alone (`uniskill_idm.idm_skill`) on given RGB frames [B, 2, S, S, 3] in [0, 1]
    and depth maps [B, 2, S, S] (S the IDM's image_size; any depth scale, min-max normalised per
    frame inside) -> z float32 [B, 64]. For depth computed elsewhere."""
    return uniskill_idm.idm_skill(self._params["idm"], rgb, depth, config=self.static.idm,
                                  dtype=self.static.dtype)

  def per_sample_loss_fn(self):
    """The jitted pure loss (params, frame_t, z, frame_tk, rng) -> [B], e.g. to differentiate
    w.r.t. `params` (zero: stop_gradient) or to call under a caller's transformations."""
    return self._per_sample_loss

  def draws(self, rng: jax.Array, batch_size: int) -> dict[str, jax.Array]:
    """The random draws `reconstruction_loss(..., rng=rng)` makes for `batch_size` pairs:
    {"latent_noise" [B, r, r, L], "timesteps" [K, B], "noise" [K, B, r, r, L]} (to rebuild the
    loss elsewhere, e.g. in the PyTorch parity test)."""
    return self._draw(rng, batch_size)

  def reconstruction_loss(self, frame_t: jax.Array, z: jax.Array, frame_tk: jax.Array, *,
                          rng: Optional[jax.Array] = None,
                          per_sample: bool = False) -> jax.Array:
    """The FDM's diffusion loss of I_{t+k} given I_t and z: scalar mean, or [B] if per_sample."""
    self.check_pair(frame_t, frame_tk)
    self.check_latents(z, np.shape(frame_t)[0])
    rng = jax.random.key(0) if rng is None else rng
    loss = self._per_sample_loss(self._params, frame_t, z, frame_tk, rng)  # [B]
    return loss if per_sample else jnp.mean(loss)


def convert_release(out_dir: str, *, idm: Optional[str] = None, depth: Optional[str] = None,
                    unet: Optional[str] = None, vae: Optional[str] = None,
                    idm_config: Optional[dict] = None,
                    dynamics: Optional[dict] = None) -> dict[str, dict]:
  """Converts the given parts of UniSkill's release into `out_dir`/<part> (strict, pickle-free;
  `uniskill_convert`, `depth_anything_convert`, `uniskill_fdm_convert`) and returns
  {part: manifest}. With all four, `out_dir` is what `frozen_models.load_frozen_model(
  "uniskill:<out_dir>")` loads; the IDM alone serves `UniSkillDynamics`-free labeling with given
  depth (`uniskill_idm.idm_skill`).

  Args:
    out_dir: the converted directory.
    idm: UniSkill's idm.pth. depth: a Depth-Anything-V2-Small-hf folder. unet / vae: diffusers
      save_pretrained folders of the FDM's UNet and the SD VAE.
    idm_config: IDMConfig fields over the release's (None: the release).
    dynamics: DynamicsConfig fields written to <out_dir>/dynamics.json (None: none written).
  """
  parts = {"idm": idm, "depth": depth, "unet": unet, "vae": vae}
  if not any(parts.values()):
    raise ValueError("nothing to convert: give idm, depth, unet and/or vae")
  if dynamics is not None:
    DynamicsConfig.from_dict(dynamics)  # unknown fields: an error before anything is written
  out = {}
  if idm:
    config = uniskill_idm.IDMConfig.from_dict(dict(idm_config or {}))
    out["idm"] = uniskill_convert.convert_idm(idm, os.path.join(out_dir, "idm"), config)
  if depth:
    out["depth"] = depth_anything_convert.convert(depth, os.path.join(out_dir, "depth"))
  if unet:
    out["unet"] = uniskill_fdm_convert.convert_unet(unet, os.path.join(out_dir, "unet"))
  if vae:
    out["vae"] = uniskill_fdm_convert.convert_vae(vae, os.path.join(out_dir, "vae"))
  if dynamics is not None:
    os.makedirs(out_dir, exist_ok=True)
    run_info.write_json_atomic(os.path.join(out_dir, DYNAMICS_FILE), dict(dynamics))
  return out


def load_dynamics_config(converted_dir: str) -> DynamicsConfig:
  """`<dir>/dynamics.json` (DynamicsConfig fields; unknown keys are an error) over the defaults,
  with the schedule from `<dir>/scheduler/scheduler_config.json` unless dynamics.json sets it."""
  fields = {}
  path = os.path.join(converted_dir, DYNAMICS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      fields = json.load(f)
  scheduler_path = os.path.join(converted_dir, SCHEDULER_FILE)
  if "schedule" not in fields and os.path.exists(scheduler_path):
    with open(scheduler_path) as f:
      fields["schedule"] = NoiseSchedule.from_scheduler_config(json.load(f)).to_dict()
  return DynamicsConfig.from_dict(fields)
