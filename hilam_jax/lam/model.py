"""Stage-0 latent action model (LAM): IDM, FDM and an FSQ bottleneck in Flax Linen.

The inverse dynamics model (IDM) maps a frame pair (I_t, I_{t+k}) to a latent action z; the forward
dynamics model (FDM) predicts I_{t+k} from I_t and z. Trained jointly on reconstruction, z is forced
to carry what changed between the frames; frozen, the IDM labels videos with latent actions and the
FDM keeps later predicted latents "actionable" (see ../shared/METHOD.md, section 2).

Dimension glossary:
  B     batch
  H, W  frame height and width in pixels; divisible by the encoders' total stride S
  s     stem stride (`stem_stride`): resolution reduction of the first conv of both encoders
  S     total stride of a conv encoder, s * 2 ** (len(widths) - 1)
  h, w  feature-map height and width at some stage (H / (s * 2**i), W / (s * 2**i))
  C     channels (feature width)
  D     latent action dimension: `latent_dim`, or len(fsq_levels) with the FSQ bottleneck
  E     width of the FDM's embedding of z (`fdm_cond_width`)
  K     FSQ codebook size, prod(fsq_levels)

Pixel conventions: frames enter as uint8 [B, H, W, 3] and are mapped to float32 in [-1, 1]
(`normalize_frames`); a floating-point frame is taken to be normalised already. The FDM's prediction
is in the same [-1, 1] space and is not clipped (clipping would zero the gradient of saturated
pixels); `to_uint8` converts it for display.
"""
import dataclasses
import math
from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from hilam_jax import config_io

BOTTLENECKS = ("none", "fsq")
POOLINGS = ("mean", "max", "mean_max", "flatten")
CONDITIONINGS = ("film", "concat")
ACTIVATIONS = ("silu", "gelu")


@dataclasses.dataclass(frozen=True)
class LAMConfig(config_io.DictConfig):
  """Hyper-parameters of the latent action model (stored as a plain dict in checkpoints).

  The defaults are the "default" size (stride-1 stem, widths 32-256, about 8.3M parameters);
  `LAMConfig.tiny()` is the CPU size. Learning rate matters more than usual for a LAM, because a
  latent that collapses early rarely recovers. On 56x56 synthetic motion (batch 16, Adam, no
  warmup) the default size collapsed (batch variance of z 0.3 -> < 1e-3 within 10 steps) at
  lr 2e-3 and 5e-4 but learned at 2e-4 (z_gain 0.76 by step 60); the tiny size learned at 2e-3.
  Watch `z_var/*` and `z_gain` (losses.py) in the first few hundred steps.

  Attributes:
    latent_dim: D for the continuous latent. None means 16 without a bottleneck and len(fsq_levels)
      with FSQ; with FSQ an explicit value must equal len(fsq_levels).
    bottleneck: "none" (continuous z, optionally L2-regularised) or "fsq" (finite scalar
      quantisation, Mentzer et al. 2023: each dim bounded and rounded to fsq_levels[i] values).
    fsq_levels: levels per FSQ dimension; the codebook has prod(fsq_levels) codes.
    stem_stride: stride of the first conv of the IDM and FDM encoders (1 or 2). 2 skips all
      full-resolution feature maps (about 4x cheaper); the FDM then rebuilds full resolution
      with one upsampling conv that also sees I_t's raw pixels.
    idm_widths: channels per IDM encoder stage; stage i > 0 halves the resolution.
    idm_blocks: residual blocks per IDM stage.
    idm_use_difference: also feed I_{t+k} - I_t to the IDM (a direct motion cue).
    idm_pooling: how the IDM's last feature map becomes a vector. "max" (global max over space,
      default), "mean", "mean_max" (both, concatenated) or "flatten" (keeps position; the
      parameter count then depends on the image size). The global poolings work for any image
      size. Measured on 56x56 synthetic motion at tiny size (batch 16, Adam 2e-3): with "mean",
      the background dominates the pooled vector, z starts with ~1e-3 variance across samples and
      collapses or plateaus for hundreds of steps (z_gain 0.0 after 200 steps on a moving 8 px
      square, 0.37 after 150 on a tile-shifted view); with "max", the changed region dominates and
      z_gain passes 0.6 within 50-75 steps on both.
    idm_mlp_width: hidden width of the IDM's head MLP.
    fdm_widths: channels per FDM U-Net stage (encoder and decoder mirror each other).
    fdm_blocks: residual blocks per FDM stage (encoder and decoder).
    fdm_conditioning: how z enters each decoder block: "film" ((1 + scale) * h + shift from the
      z embedding) or "concat" (the embedding broadcast over space and concatenated).
    fdm_cond_width: E, width of the MLP embedding of z shared by all decoder blocks.
    fdm_predict_delta: the FDM outputs frame_t + delta instead of the frame itself. Static
      background is then free and the whole loss is about what changed, which only z can explain;
      the output layer is initialised near zero so training starts at the copy-frame_t baseline
      (`copy_mse`) and every gain below it comes from modelling the change.
    norm_groups: GroupNorm groups (gcd with the channel count is used).
    activation: "silu" or "gelu".
    z_l2_weight: weight of the regulariser mean(z**2) on the continuous latent ("none" bottleneck
      only). It keeps z on a stable scale (the skill model regresses z with an l1 loss); it
      cannot by itself prevent the FDM from rescaling, so keep it small. 0 disables it.
    z_std_weight: weight of an anti-collapse hinge on the continuous latent (VICReg's variance
      term): mean over dims of relu(z_std_target - std_batch(z_d)). It forces every dim to vary
      across the batch (it does not say with what; the reconstruction loss decides that). It
      shortened but did not remove the collapse plateau with mean pooling; 0 disables it.
    z_std_target: the per-dimension batch standard deviation the hinge asks for.
    zero_latent: control experiment: z is replaced by zeros before the FDM, which then has to
      predict I_{t+k} from I_t alone (the z-blind baseline every real LAM must beat).
  """
  latent_dim: Optional[int] = None
  bottleneck: str = "none"
  fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
  stem_stride: int = 1
  idm_widths: tuple[int, ...] = (32, 64, 128, 256)
  idm_blocks: int = 1
  idm_use_difference: bool = True
  idm_pooling: str = "max"
  idm_mlp_width: int = 256
  fdm_widths: tuple[int, ...] = (32, 64, 128, 256)
  fdm_blocks: int = 1
  fdm_conditioning: str = "film"
  fdm_cond_width: int = 128
  fdm_predict_delta: bool = True
  norm_groups: int = 8
  activation: str = "silu"
  z_l2_weight: float = 0.0
  z_std_weight: float = 0.0
  z_std_target: float = 1.0
  zero_latent: bool = False

  def __post_init__(self):
    # JSON round trips turn tuples into lists; coerce so the config stays hashable.
    for name in ("fsq_levels", "idm_widths", "fdm_widths"):
      object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
    for name, value, allowed in (("bottleneck", self.bottleneck, BOTTLENECKS),
                                 ("idm_pooling", self.idm_pooling, POOLINGS),
                                 ("fdm_conditioning", self.fdm_conditioning, CONDITIONINGS),
                                 ("activation", self.activation, ACTIVATIONS)):
      if value not in allowed:
        raise ValueError(f"LAMConfig.{name}={value!r}; expected one of {allowed}")
    if not self.idm_widths or not self.fdm_widths:
      raise ValueError("LAMConfig: idm_widths and fdm_widths must be non-empty")
    if any(level < 2 for level in self.fsq_levels) or not self.fsq_levels:
      raise ValueError(f"LAMConfig.fsq_levels={self.fsq_levels}: need >= 1 level, each >= 2")
    if (self.bottleneck == "fsq" and self.latent_dim is not None
        and self.latent_dim != len(self.fsq_levels)):
      raise ValueError(f"LAMConfig: with FSQ, latent_dim ({self.latent_dim}) must equal "
                       f"len(fsq_levels) ({len(self.fsq_levels)}); leave it None")
    if self.stem_stride not in (1, 2):
      raise ValueError(f"LAMConfig.stem_stride={self.stem_stride}; expected 1 or 2")
    if self.latent_dim is not None and self.latent_dim < 1:
      raise ValueError(f"LAMConfig.latent_dim={self.latent_dim} must be >= 1")

  @property
  def z_dim(self) -> int:
    """D, the resolved latent dimension."""
    if self.bottleneck == "fsq":
      return len(self.fsq_levels)
    return 16 if self.latent_dim is None else self.latent_dim

  @property
  def total_stride(self) -> int:
    """S: frames must have H and W divisible by this (the larger of the two encoders)."""
    return self.stem_stride * 2 ** (max(len(self.idm_widths), len(self.fdm_widths)) - 1)

  @classmethod
  def tiny(cls, **overrides) -> "LAMConfig":
    """A size that trains on a CPU in minutes (stride 8: 56 -> 7, 64 -> 8)."""
    base = dict(stem_stride=2, idm_widths=(16, 32, 64), idm_mlp_width=64, fdm_widths=(16, 32, 64),
                fdm_cond_width=32)
    base.update(overrides)
    return cls(**base)


def normalize_frames(frames: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] in [0, 255] -> float32 in [-1, 1]; floating input is passed through."""
  if frames.dtype == jnp.uint8:
    return frames.astype(jnp.float32) / 127.5 - 1.0
  if not jnp.issubdtype(frames.dtype, jnp.floating):
    raise TypeError(f"frames must be uint8 or normalised floats, got dtype {frames.dtype}")
  return frames.astype(jnp.float32)


def to_uint8(frames: jax.Array) -> jax.Array:
  """[-1, 1] float frames (e.g. an FDM prediction) -> uint8 [0, 255], clipped."""
  return jnp.clip(jnp.round((frames + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def _activation(name: str):
  return {"silu": nn.silu, "gelu": nn.gelu}[name]


def _small_init(scale: float):
  """Variance-scaling normal init with the given scale (1.0 is LeCun normal)."""
  return nn.initializers.variance_scaling(scale, "fan_in", "normal")


def _group_norm(channels: int, groups: int, name: Optional[str] = None) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=math.gcd(channels, groups), name=name)


@dataclasses.dataclass(frozen=True)
class FSQ:
  """Finite scalar quantisation (Mentzer et al. 2023, "FSQ: VQ-VAE made simple").

  Dimension i is bounded to about (-L_i/2, L_i/2) by a shifted tanh, rounded to one of L_i integers
  with a straight-through gradient, and rescaled to [-1, 1]. The grid of dimension i is
  {(j - L_i // 2) / (L_i // 2) : j = 0 .. L_i - 1}: symmetric for odd L_i, one step short of +1 for
  even L_i. No codebook parameters, so no codebook collapse by dead codes; usage is still worth
  watching (`losses.codebook_statistics`).
  """
  levels: tuple[int, ...]
  eps: float = 1e-3

  @property
  def codebook_size(self) -> int:
    return math.prod(self.levels)

  def _arrays(self):
    levels = jnp.asarray(self.levels, jnp.float32)  # [D]
    basis = jnp.asarray([math.prod(self.levels[:i]) for i in range(len(self.levels))], jnp.int32)
    return levels, basis

  def bound(self, z: jax.Array) -> jax.Array:
    """[..., D] real -> [..., D] in (-L/2, L/2), shifted so even L rounds to L values."""
    levels, _ = self._arrays()
    half_l = (levels - 1) * (1 - self.eps) / 2
    offset = jnp.where(levels % 2 == 0, 0.5, 0.0)
    shift = jnp.arctanh(offset / half_l)
    return jnp.tanh(z + shift) * half_l - offset

  def __call__(self, z: jax.Array) -> jax.Array:
    """Quantises [..., D] to the grid in [-1, 1] (straight-through gradient)."""
    levels, _ = self._arrays()
    bounded = self.bound(z)
    rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
    return rounded / jnp.floor(levels / 2)

  def codes_to_indices(self, z_q: jax.Array) -> jax.Array:
    """Grid points [..., D] -> int32 code indices [...] in [0, K)."""
    levels, basis = self._arrays()
    half = jnp.floor(levels / 2)
    digits = jnp.round(z_q * half + half).astype(jnp.int32)  # [..., D] in [0, L_i)
    return jnp.sum(digits * basis, axis=-1)

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """int code indices [...] -> grid points [..., D]."""
    levels, basis = self._arrays()
    digits = (indices[..., None] // basis) % levels.astype(jnp.int32)
    half = jnp.floor(levels / 2)
    return (digits.astype(jnp.float32) - half) / half


class ResBlock(nn.Module):
  """Pre-norm residual block GN-act-conv-GN-[cond]-act-conv, optionally conditioned on [B, E]."""
  width: int
  norm_groups: int
  activation: str
  conditioning: str = "film"

  @nn.compact
  def __call__(self, x: jax.Array, cond: Optional[jax.Array] = None) -> jax.Array:
    act = _activation(self.activation)
    h = act(_group_norm(x.shape[-1], self.norm_groups)(x))
    if cond is not None and self.conditioning == "concat":
      cond_map = jnp.broadcast_to(cond[:, None, None, :], h.shape[:3] + cond.shape[-1:])
      h = jnp.concatenate([h, cond_map], axis=-1)  # [B, h, w, C + E]
    h = nn.Conv(self.width, (3, 3))(h)
    h = _group_norm(self.width, self.norm_groups)(h)
    if cond is not None and self.conditioning == "film":
      film = nn.Dense(2 * self.width, name="film")(cond)[:, None, None, :]  # [B, 1, 1, 2C]
      scale, shift = jnp.split(film, 2, axis=-1)
      h = h * (1.0 + scale) + shift
    h = nn.Conv(self.width, (3, 3))(act(h))
    if x.shape[-1] != self.width:
      x = nn.Conv(self.width, (1, 1), name="skip")(x)
    return x + h


class ConvEncoder(nn.Module):
  """Stem conv, then per stage (stride-2 conv for stages > 0) + residual blocks.

  Returns the feature map of every stage, [B, H / (s * 2**i), W / (s * 2**i), widths[i]] for
  stage i, s the stem stride.
  """
  widths: tuple[int, ...]
  blocks: int
  norm_groups: int
  activation: str
  stem_stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    kernel = 3 if self.stem_stride == 1 else 2 * self.stem_stride
    h = nn.Conv(self.widths[0], (kernel, kernel), strides=self.stem_stride, name="stem")(x)
    features = []
    for i, width in enumerate(self.widths):
      if i > 0:
        h = nn.Conv(width, (3, 3), strides=(2, 2), name=f"down_{i}")(h)
      for j in range(self.blocks):
        h = ResBlock(width, self.norm_groups, self.activation, name=f"stage_{i}_block_{j}")(h)
      features.append(h)
    return features


def _check_spatial(frames: jax.Array, stride: int, who: str) -> None:
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"{who}: frames must be [B, H, W, 3], got shape {frames.shape}")
  height, width = frames.shape[1:3]
  if height % stride or width % stride:
    raise ValueError(f"{who}: H, W = {height}, {width} must be divisible by the total stride "
                     f"{stride} (stem_stride * 2 ** (len(widths) - 1))")


class IDM(nn.Module):
  """Inverse dynamics: frames (I_t, I_{t+k}) in [-1, 1] -> pre-bottleneck latent [B, D]."""
  config: LAMConfig

  @nn.compact
  def __call__(self, frame_t: jax.Array, frame_tk: jax.Array) -> jax.Array:
    cfg = self.config
    _check_spatial(frame_t, cfg.stem_stride * 2 ** (len(cfg.idm_widths) - 1), "IDM")
    inputs = [frame_t, frame_tk] + ([frame_tk - frame_t] if cfg.idm_use_difference else [])
    x = jnp.concatenate(inputs, axis=-1)  # [B, H, W, 6 or 9]
    h = ConvEncoder(cfg.idm_widths, cfg.idm_blocks, cfg.norm_groups, cfg.activation,
                    cfg.stem_stride, name="encoder")(x)[-1]  # [B, H/S, W/S, C]
    act = _activation(cfg.activation)
    h = act(_group_norm(h.shape[-1], cfg.norm_groups, name="out_norm")(h))
    if cfg.idm_pooling == "mean":
      h = h.mean(axis=(1, 2))  # [B, C]
    elif cfg.idm_pooling == "max":
      h = h.max(axis=(1, 2))  # [B, C]
    elif cfg.idm_pooling == "mean_max":
      h = jnp.concatenate([h.mean(axis=(1, 2)), h.max(axis=(1, 2))], axis=-1)  # [B, 2C]
    else:
      h = h.reshape(h.shape[0], -1)  # [B, H/S * W/S * C]
    h = act(nn.Dense(cfg.idm_mlp_width, name="mlp_hidden")(h))
    return nn.Dense(cfg.z_dim, name="mlp_out")(h)  # [B, D]


def _upsample(x: jax.Array, factor: int) -> jax.Array:
  """Nearest-neighbour upsampling of [B, h, w, C] by an integer factor."""
  batch, height, width, channels = x.shape
  return jax.image.resize(x, (batch, factor * height, factor * width, channels), "nearest")


class FDM(nn.Module):
  """Forward dynamics: small U-Net, I_t in [-1, 1] and z [B, D] -> predicted I_{t+k} in [-1, 1].

  The encoder sees only I_t (its features do not depend on z); z is embedded by an MLP and enters
  every decoder block (FiLM or concat), so the motion is synthesised where the resolution is
  rebuilt, with the skip connections providing the appearance of I_t.
  """
  config: LAMConfig

  @nn.compact
  def __call__(self, frame_t: jax.Array, z: jax.Array) -> jax.Array:
    cfg = self.config
    widths = cfg.fdm_widths
    _check_spatial(frame_t, cfg.stem_stride * 2 ** (len(widths) - 1), "FDM")
    act = _activation(cfg.activation)
    cond = act(nn.Dense(cfg.fdm_cond_width, name="z_embed_0")(z))
    cond = nn.Dense(cfg.fdm_cond_width, name="z_embed_1")(cond)  # [B, E]
    skips = ConvEncoder(widths, cfg.fdm_blocks, cfg.norm_groups, cfg.activation,
                        cfg.stem_stride, name="encoder")(frame_t)
    block = lambda width, name: ResBlock(width, cfg.norm_groups, cfg.activation,
                                         cfg.fdm_conditioning, name=name)
    h = block(widths[-1], "mid")(skips[-1], cond)  # [B, H/S, W/S, C]
    for i in reversed(range(len(widths))):
      h = jnp.concatenate([h, skips[i]], axis=-1)  # U-Net skip
      for j in range(cfg.fdm_blocks):
        h = block(widths[i], f"up_{i}_block_{j}")(h, cond)  # [B, H/2**i, W/2**i, widths[i]]
      if i > 0:
        h = nn.Conv(widths[i - 1], (3, 3), name=f"upsample_{i}")(_upsample(h, 2))
    if cfg.stem_stride > 1:  # back to full resolution, with I_t's pixels for sharp detail
      h = jnp.concatenate([_upsample(h, cfg.stem_stride), frame_t], axis=-1)  # [B, H, W, C + 3]
      h = nn.Conv(widths[0], (3, 3), name="upsample_stem")(h)
    h = act(_group_norm(h.shape[-1], cfg.norm_groups, name="out_norm")(h))
    # Small init: the model starts close to "copy frame_t" (delta mode) yet z already has a
    # non-zero gradient (an exactly-zero layer would block it until the first update).
    out = nn.Conv(3, (3, 3), kernel_init=_small_init(1e-2), name="out")(h)
    return frame_t + out if cfg.fdm_predict_delta else out  # [B, H, W, 3]


@flax.struct.dataclass
class LatentOutput:
  """What the IDM side produces for a batch of frame pairs.

  Attributes:
    z: latent action fed to the FDM, [B, D] (FSQ grid points in [-1, 1] with FSQ; zeros when
      `zero_latent`).
    z_pre: the IDM output before the bottleneck, [B, D] (what the L2 regulariser sees).
    codes: int32 FSQ code indices [B] in [0, K), or None without FSQ.
  """
  z: jax.Array
  z_pre: jax.Array
  codes: Optional[jax.Array]


@flax.struct.dataclass
class LAMOutput:
  """Encode + decode result: the latent side plus the FDM prediction [B, H, W, 3] in [-1, 1]."""
  latent: LatentOutput
  prediction: jax.Array


class LatentActionModel(nn.Module):
  """IDM + optional FSQ bottleneck + FDM. Frames are uint8 [B, H, W, 3] (or floats in [-1, 1]).

  Parameters live under "idm" and "fdm"; initialise with `model.init(rng, frame_t, frame_tk)`.
  """
  config: LAMConfig = LAMConfig()

  def setup(self):
    self.idm = IDM(self.config)
    self.fdm = FDM(self.config)

  @property
  def fsq(self) -> Optional[FSQ]:
    return FSQ(self.config.fsq_levels) if self.config.bottleneck == "fsq" else None

  def encode_latent(self, frame_t: jax.Array, frame_tk: jax.Array) -> LatentOutput:
    """Frame pair -> `LatentOutput` (z, pre-bottleneck z, FSQ codes)."""
    z_pre = self.idm(normalize_frames(frame_t), normalize_frames(frame_tk))  # [B, D]
    codes = None
    z = z_pre
    if self.fsq is not None:
      z = self.fsq(z_pre)
      codes = self.fsq.codes_to_indices(z)  # [B]
    if self.config.zero_latent:
      z = jnp.zeros_like(z)
    return LatentOutput(z=z, z_pre=z_pre, codes=codes)

  def encode(self, frame_t: jax.Array, frame_tk: jax.Array) -> jax.Array:
    """Frame pair -> latent action z, float32 [B, D]."""
    return self.encode_latent(frame_t, frame_tk).z

  def decode(self, frame_t: jax.Array, z: jax.Array) -> jax.Array:
    """Frame I_t and z [B, D] -> predicted I_{t+k}, float32 [B, H, W, 3] in [-1, 1] (unclipped)."""
    return self.fdm(normalize_frames(frame_t), z.astype(jnp.float32))

  def __call__(self, frame_t: jax.Array, frame_tk: jax.Array) -> LAMOutput:
    latent = self.encode_latent(frame_t, frame_tk)
    return LAMOutput(latent=latent, prediction=self.decode(frame_t, latent.z))


def init_params(config: LAMConfig, rng: jax.Array, image_size: tuple[int, int]) -> dict:
  """Initialises the model's parameter dict (the inner "params" collection) for H, W frames.

  On CPU the init is compiled with XLA backend optimisation off: XLA spends seconds optimising
  the unrolled threefry RNG of every parameter (about 9 s -> 2-4 s for our sizes) for a function
  that runs once; the values agree with the optimised build to float32 rounding.
  """
  frames = jnp.zeros((1, *image_size, 3), jnp.uint8)
  init = jax.jit(LatentActionModel(config).init).lower(rng, frames, frames)
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return init.compile(compiler_options=options)(rng, frames, frames)["params"]
