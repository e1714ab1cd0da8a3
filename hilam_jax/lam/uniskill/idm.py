"""UniSkill's inverse dynamics model (IDM, "ISD") in Flax Linen, for converted frozen weights.

UniSkill (arXiv 2505.08787) encodes a frame pair (I_t, I_{t+k}) into a 64-d skill latent from the
RGB frames and their Depth-Anything-V2 depth maps; one more head maps the latent to the single
768-d token that conditions its diffusion FDM. This module reproduces the released `idm.pth`
architecture (../shared/UNISKILL.md) so that `uniskill.convert` can load it:

  RGB    ImageNet normalisation -> ResNet-18 trunk (no avgpool/fc, frozen BatchNorm running
         statistics) -> bilinear x2 upsampling -> N tokens x C_rgb
  depth  per-frame min-max normalisation -> P x P patches, row-major -> LayerNorm -> Dense(D)
         -> LayerNorm
  fuse   concat([depth, rgb]) -> LayerNorm -> Dense(D) -> LayerNorm, + spatial and temporal
         position embeddings
  blocks L x [pre-LN spatial attention per frame, pre-LN causal temporal attention per token,
         pre-LN exact-GELU MLP]
  heads  last frame's tokens, mean over space -> proj -> skill_norm -> skill_proj = skill latent;
         latent_norm -> latent_proj = the FDM's conditioning token

The parameter tree mirrors the PyTorch names (`visual_encoder/layer1_0/conv1`,
`transformer/layers_3/spatial_attn/query`, ...); `uniskill.convert` holds the key-by-key map.
This module never imports torch.

Dimension glossary:
  B     batch of frame windows
  T     frames per window (`num_frames`, 2: I_t and I_{t+k})
  H, W  frame height and width in pixels, both `image_size`
  P     depth patch size (`patch_size`, 16)
  h, w  token grid, H / P and W / P (the ResNet's stride-32 map upsampled x2)
  N     tokens per frame, h * w (196 at 224 px)
  C     channels of a ResNet stage; C_rgb = resnet_widths[-1] (512)
  D     transformer width (`hidden_dim`, 256)
  Z     skill latent width (`skill_dim`, 64)
  E     FDM conditioning width (`out_dim`, 768)

Precision: parameters are float32; `dtype=jnp.bfloat16` runs every conv and matmul in bfloat16
except the attention softmax and its weighted sum of values (float32, `force_fp32_for_softmax`);
LayerNorm statistics and the input normalisations are float32 and the outputs are float32.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from hilam_jax import config_io

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYER_NORM_EPS = 1e-5  # every LayerNorm of the IDM (Flax's default is 1e-6)
BATCH_NORM_EPS = 1e-5
RESNET_STRIDE = 32  # ResNet-18 trunk: stride-2 stem conv, max pool, three stride-2 stages


@dataclasses.dataclass(frozen=True)
class IDMConfig(config_io.DictConfig):
  """Hyper-parameters of UniSkill's IDM. The defaults are the released model (20,053,248 params).

  Attributes:
    num_layers: L, space-time transformer blocks.
    num_heads: attention heads (head width hidden_dim / num_heads). Not visible in the weights'
      shapes: a wrong value converts without error and gives wrong outputs.
    hidden_dim: D, transformer width (also the depth branch's width).
    skill_dim: Z, width of the skill latent (the latent action).
    out_dim: E, width of the FDM conditioning token (the UNet's cross-attention width).
    image_size: H = W in pixels; divisible by 32.
    num_frames: T, frames per window.
    patch_size: P; the depth patch grid must equal the upsampled ResNet grid, so
      image_size / patch_size == 2 * image_size / 32, i.e. P = 16.
    resnet_widths: channels of the four ResNet stages; (64, 128, 256, 512) is ResNet-18.
      Smaller values are for tests only.
    mlp_ratio: MLP hidden width / D.
  """
  num_layers: int = 8
  num_heads: int = 4
  hidden_dim: int = 256
  skill_dim: int = 64
  out_dim: int = 768
  image_size: int = 224
  num_frames: int = 2
  patch_size: int = 16
  resnet_widths: tuple[int, ...] = (64, 128, 256, 512)
  mlp_ratio: int = 4

  def __post_init__(self):
    object.__setattr__(self, "resnet_widths", tuple(int(w) for w in self.resnet_widths))
    if len(self.resnet_widths) != 4:
      raise ValueError(f"resnet_widths needs 4 stages, got {self.resnet_widths}")
    if self.image_size % RESNET_STRIDE:
      raise ValueError(f"image_size must be divisible by {RESNET_STRIDE}, got {self.image_size}")
    if self.image_size // self.patch_size != 2 * self.image_size // RESNET_STRIDE:
      raise ValueError(f"patch_size {self.patch_size} gives a {self.image_size // self.patch_size}"
                       f"-token-wide depth grid, but the RGB grid is "
                       f"{2 * self.image_size // RESNET_STRIDE} wide (use patch_size 16)")
    if self.hidden_dim % self.num_heads:
      raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by num_heads "
                       f"{self.num_heads}")

  @classmethod
  def tiny(cls) -> "IDMConfig":
    """A tiny size for tests (64 px, 2 blocks, narrow ResNet); same structure as the release."""
    return cls(num_layers=2, num_heads=2, hidden_dim=32, skill_dim=8, out_dim=24, image_size=64,
               resnet_widths=(8, 16, 24, 32))

  @property
  def grid_size(self) -> int:
    """h = w, the token grid side."""
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    """N, tokens per frame."""
    return self.grid_size ** 2


@flax.struct.dataclass
class IDMOutput:
  """What the IDM returns for a batch of windows (both float32).

  Attributes:
    skill: the skill latent (latent action), [B, Z].
    fdm_token: the FDM's conditioning token, [B, 1, E].
  """
  skill: jax.Array
  fdm_token: jax.Array


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
  # Two-pass variance, as torch computes it (the fast E[x^2] - E[x]^2 form loses digits).
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """torchvision's ResNet BasicBlock: conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU."""
  width: int
  stride: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=BATCH_NORM_EPS,
                             use_fast_variance=False, dtype=self.dtype)
    y = conv(self.width, (3, 3), self.stride, padding=1, name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = norm(name="bn2")(conv(self.width, (3, 3), 1, padding=1, name="conv2")(y))
    if self.stride != 1 or x.shape[-1] != self.width:
      x = conv(self.width, (1, 1), self.stride, padding=0, name="downsample_conv")(x)
      x = norm(name="downsample_bn")(x)
    return nn.relu(x + y)


class ResNetTrunk(nn.Module):
  """ResNet-18 without avgpool and fc, BatchNorm frozen: [B', H, W, 3] -> [B', H/32, W/32, C]."""
  widths: tuple[int, ...]
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.widths[0], (7, 7), 2, padding=3, use_bias=False, dtype=self.dtype,
                name="conv1")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BATCH_NORM_EPS, use_fast_variance=False,
                     dtype=self.dtype, name="bn1")(x)
    x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, width in enumerate(self.widths):
      for j in range(2):
        stride = 2 if stage > 0 and j == 0 else 1
        x = BasicBlock(width, stride, self.dtype, name=f"layer{stage + 1}_{j}")(x)
    return x


class NormDenseNorm(nn.Module):
  """LayerNorm -> Dense -> LayerNorm (UniSkill's depth_proj and modal_proj)."""
  features: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _layer_norm(self.dtype, "norm_in")(x)
    x = nn.Dense(self.features, dtype=self.dtype, name="dense")(x)
    return _layer_norm(self.dtype, "norm_out")(x)


class SpaceTimeBlock(nn.Module):
  """x += SpatialAttn(LN x) per frame; x += causal TemporalAttn(LN x) per token; x += MLP(LN x)."""
  num_heads: int
  mlp_ratio: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, N, D]
    width = x.shape[-1]
    attention = functools.partial(nn.MultiHeadDotProductAttention, num_heads=self.num_heads,
                                  dtype=self.dtype, deterministic=True,
                                  force_fp32_for_softmax=True)
    h = _layer_norm(self.dtype, "norm1")(x)
    x = x + attention(name="spatial_attn")(h)  # attends over N within each frame
    h = _layer_norm(self.dtype, "norm2")(x).swapaxes(1, 2)  # [B, N, T, D]
    num_frames = h.shape[-2]
    causal = jnp.tril(jnp.ones((num_frames, num_frames), bool))  # frame t sees frames <= t
    x = x + attention(name="temporal_attn")(h, mask=causal).swapaxes(1, 2)  # [B, T, N, D]
    h = _layer_norm(self.dtype, "norm3")(x)
    h = nn.Dense(self.mlp_ratio * width, dtype=self.dtype, name="fc1")(h)
    h = nn.Dense(width, dtype=self.dtype, name="fc2")(nn.gelu(h, approximate=False))
    return x + h


class Transformer(nn.Module):
  """L space-time blocks (UniSkill's `transformer.layers.{i}`)."""
  num_layers: int
  num_heads: int
  mlp_ratio: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      x = SpaceTimeBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"layers_{i}")(x)
    return x


def normalize_depth(depth: jax.Array) -> jax.Array:
  """Per-frame min-max to [0, 1], float32 [..., H, W]. As UniSkill: no epsilon, so a constant
  depth map gives NaN."""
  depth = depth.astype(jnp.float32)
  low = depth.min(axis=(-2, -1), keepdims=True)
  high = depth.max(axis=(-2, -1), keepdims=True)
  return (depth - low) / (high - low)


def depth_patches(depth: jax.Array, patch_size: int) -> jax.Array:
  """[B, T, H, W] -> [B, T, N, P*P]: row-major patches, row-major pixels inside each patch
  (einops `b t (h p1) (w p2) -> b t (h w) (p1 p2)`)."""
  b, t, height, width = depth.shape
  h, w = height // patch_size, width // patch_size
  x = depth.reshape(b, t, h, patch_size, w, patch_size).transpose(0, 1, 2, 4, 3, 5)
  return x.reshape(b, t, h * w, patch_size * patch_size)


def upsample_bilinear_x2(x: jax.Array) -> jax.Array:
  """[B', h, w, C] -> [B', 2h, 2w, C], torch `interpolate(scale_factor=2, mode="bilinear",
  align_corners=False)`: half-pixel centres, edge samples clamped."""
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear", antialias=False)


class UniSkillIDM(nn.Module):
  """UniSkill's IDM. Variables: {"params", "batch_stats"} (the BatchNorm running statistics).

  Call with RGB frames float [B, T, H, W, 3] in [0, 1] and depth maps [B, T, H, W] (any scale;
  min-max normalised per frame here); `__call__` returns an `IDMOutput`, `skill` the latent only,
  `fdm_token_from_skill` maps any latent (e.g. a predicted one) to the FDM token.
  """
  config: IDMConfig = IDMConfig()
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    self.visual_encoder = ResNetTrunk(cfg.resnet_widths, self.dtype)
    self.depth_proj = NormDenseNorm(cfg.hidden_dim, self.dtype)
    self.modal_proj = NormDenseNorm(cfg.hidden_dim, self.dtype)
    self.pos_embed_spatial = self.param("pos_embed_spatial", nn.initializers.zeros,
                                        (1, 1, cfg.num_tokens, cfg.hidden_dim))
    self.pos_embed_temporal = self.param("pos_embed_temporal", nn.initializers.zeros,
                                         (1, cfg.num_frames, 1, cfg.hidden_dim))
    self.transformer = Transformer(cfg.num_layers, cfg.num_heads, cfg.mlp_ratio, self.dtype)
    self.proj = nn.Dense(cfg.hidden_dim, dtype=self.dtype)
    self.skill_norm = _layer_norm(self.dtype, None)
    self.skill_proj = nn.Dense(cfg.skill_dim, dtype=self.dtype)
    self.latent_norm = _layer_norm(self.dtype, None)
    self.latent_proj = nn.Dense(cfg.out_dim, dtype=self.dtype)

  def _check_inputs(self, rgb: jax.Array, depth: jax.Array) -> None:
    cfg = self.config
    frames = (cfg.num_frames, cfg.image_size, cfg.image_size)
    if rgb.ndim != 5 or tuple(rgb.shape[1:]) != (*frames, 3):
      raise ValueError(f"rgb: expected [B, {frames[0]}, {frames[1]}, {frames[2]}, 3] floats in "
                       f"[0, 1], got shape {rgb.shape}")
    if tuple(depth.shape) != (rgb.shape[0], *frames):
      raise ValueError(f"depth: expected [{rgb.shape[0]}, {frames[0]}, {frames[1]}, "
                       f"{frames[2]}], got shape {depth.shape}")

  def rgb_tokens(self, rgb: jax.Array) -> jax.Array:
    """[B, T, H, W, 3] in [0, 1] -> [B, T, N, C_rgb]."""
    b, t = rgb.shape[:2]
    x = (rgb.astype(jnp.float32) - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)
    x = x.reshape(b * t, *x.shape[2:]).astype(self.dtype)
    x = upsample_bilinear_x2(self.visual_encoder(x))  # [B*T, h, w, C_rgb]
    return x.reshape(b, t, -1, x.shape[-1])  # tokens in row-major (h w) order

  def skill(self, rgb: jax.Array, depth: jax.Array) -> jax.Array:
    """RGB [B, T, H, W, 3] in [0, 1] and depth [B, T, H, W] -> skill latent float32 [B, Z]."""
    self._check_inputs(rgb, depth)
    depth_tokens = self.depth_proj(
        depth_patches(normalize_depth(depth), self.config.patch_size).astype(self.dtype))
    x = jnp.concatenate([depth_tokens, self.rgb_tokens(rgb)], axis=-1)  # [B, T, N, D + C_rgb]
    x = self.modal_proj(x)  # [B, T, N, D]
    x = x + (self.pos_embed_spatial + self.pos_embed_temporal).astype(self.dtype)
    x = self.transformer(x)
    x = self.proj(x[:, -1].mean(axis=1))  # the last frame's tokens only: [B, D]
    return self.skill_proj(self.skill_norm(x)).astype(jnp.float32)

  def fdm_token_from_skill(self, skill: jax.Array) -> jax.Array:
    """Skill latent [B, Z] -> the FDM's conditioning token float32 [B, 1, E]."""
    token = self.latent_proj(self.latent_norm(skill.astype(self.dtype)))
    return token[:, None].astype(jnp.float32)

  def __call__(self, rgb: jax.Array, depth: jax.Array) -> IDMOutput:
    skill = self.skill(rgb, depth)
    return IDMOutput(skill=skill, fdm_token=self.fdm_token_from_skill(skill))


def init_variables(config: IDMConfig, rng: jax.Array) -> dict:
  """Random {"params", "batch_stats"} for `config` (zero position embeddings, unit statistics)."""
  rgb, depth = example_inputs(config, batch_size=1)
  return jax.jit(UniSkillIDM(config).init)(rng, rgb, depth)


def abstract_variables(config: IDMConfig) -> dict:
  """The variables' tree of ShapeDtypeStructs, without computing anything."""
  rgb, depth = example_inputs(config, batch_size=1)
  return jax.eval_shape(UniSkillIDM(config).init, jax.random.key(0), rgb, depth)


def example_inputs(config: IDMConfig, batch_size: int) -> tuple[jax.ShapeDtypeStruct, ...]:
  """Shape/dtype of the inputs: rgb [B, T, H, W, 3] and depth [B, T, H, W], float32."""
  frames = (batch_size, config.num_frames, config.image_size, config.image_size)
  return (jax.ShapeDtypeStruct((*frames, 3), jnp.float32),
          jax.ShapeDtypeStruct(frames, jnp.float32))


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def idm_skill(variables: dict, rgb: jax.Array, depth: jax.Array, *, config: IDMConfig,
              dtype: Any = jnp.float32) -> jax.Array:
  """The IDM alone on given RGB frames [B, T, H, W, 3] in [0, 1] and depth maps [B, T, H, W]:
  the skill latent (latent action), float32 [B, Z]. Parameters are not differentiated through
  (`stop_gradient`); gradients w.r.t. the inputs are available."""
  variables = jax.lax.stop_gradient(variables)
  return UniSkillIDM(config, dtype).apply(variables, rgb, depth, method=UniSkillIDM.skill)


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def idm_fdm_token(variables: dict, rgb: jax.Array, depth: jax.Array, *, config: IDMConfig,
                  dtype: Any = jnp.float32) -> jax.Array:
  """As `idm_skill`, then latent_norm -> latent_proj: the FDM conditioning token [B, 1, E]."""
  variables = jax.lax.stop_gradient(variables)
  return UniSkillIDM(config, dtype).apply(variables, rgb, depth).fdm_token


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def fdm_token_from_skill(variables: dict, skill: jax.Array, *, config: IDMConfig,
                         dtype: Any = jnp.float32) -> jax.Array:
  """Any skill latent [B, Z] (e.g. a predicted one) -> the FDM conditioning token [B, 1, E];
  differentiable in `skill`."""
  variables = jax.lax.stop_gradient(variables)
  return UniSkillIDM(config, dtype).apply(variables, skill,
                                          method=UniSkillIDM.fdm_token_from_skill)


def num_parameters(variables_or_params: Any) -> int:
  """Number of trainable parameters (the "params" collection when given all variables)."""
  tree = variables_or_params.get("params", variables_or_params)
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
