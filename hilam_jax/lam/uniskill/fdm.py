"""UniSkill's forward dynamics model (FDM, "FSD") in Flax Linen: the InstructPix2Pix UNet and the
Stable Diffusion VAE encoder, for converted frozen weights.

UniSkill's FDM is a Stable Diffusion 1.x `UNet2DConditionModel` with 8 input channels (the noisy
VAE latent of I_{t+k} concatenated with the VAE latent of I_t), conditioned through
cross-attention on one token, the IDM's 64-d skill mapped to 768 (../shared/UNISKILL.md). This
module computes what diffusers' PyTorch classes compute, so `uniskill.fdm_convert` can load a
`save_pretrained` folder:

  UNet   sinusoidal timestep embedding (diffusers' flip_sin_to_cos / freq_shift) -> Dense, SiLU,
         Dense; conv_in; down blocks [ResnetBlock2D (+ Transformer2D)] x layers, stride-2 conv;
         mid [resnet, Transformer2D, resnet]; up blocks [concat skip, resnet (+ Transformer2D)]
         x (layers + 1), nearest x2 + conv; GroupNorm, SiLU, conv_out
         Transformer2D = GroupNorm(eps 1e-6) -> proj_in -> BasicTransformerBlock x n (pre-LN
         self-attention, cross-attention, GEGLU feed-forward) -> proj_out, + input
  VAE    encoder (conv_in; DownEncoderBlock2D [resnets, asymmetric-pad stride-2 conv]; mid
         [resnet, single-head self-attention with GroupNorm, resnet]; GroupNorm, SiLU, conv_out to
         2 x latent channels) -> quant_conv = the Gaussian's (mean, logvar). The decoder is not
         needed for the diffusion loss and is not built.

Parameter names are the PyTorch module paths with "." as "_" down to a block
(`down_blocks_0_resnets_1/conv1`, `mid_block_attentions_0/transformer_blocks_0/attn2/to_k`,
`encoder_mid_block_attentions_0/group_norm`); `uniskill.fdm_convert` holds the key-by-key map. Layout is NHWC; a
Transformer2D's tokens are the H x W positions in row-major order, as torch's
`permute(0, 2, 3, 1).reshape(B, H * W, C)`. GroupNorm groups and epsilons are read from the
config (diffusers fixes the VAE's epsilon at 1e-6, the Transformer2D's GroupNorm epsilon at 1e-6
and the BasicTransformerBlock's LayerNorm epsilon at 1e-5, as here). torch is never imported.

Why our own modules and not diffusers 0.39.0's Flax ones (the last release that has them),
measured on this stack (jax 0.10.2, flax 0.12.8, huggingface_hub 2.4.0, torch 2.13 CPU,
2026-12-02) on the tiny test configs of tests/test_uniskill_fdm.py, max |flax - torch| / max
|torch| against 0.39.0's own PyTorch classes:
  * 0.39.0 imports beside huggingface_hub 2.4.0 (installed with --no-deps into a side folder)
    and works: UNet 1.2e-4 (ours 1.1e-6: its Transformer2D GroupNorm uses eps 1e-5 where torch
    uses 1e-6), VAE encoder mean 1.2e-6 (ours 8.2e-7). But
  * its Flax GroupNorms are hard-wired to 32 groups and eps 1e-5: with norm_num_groups=16 its
    UNet is off by 0.60 relative, with only a "config attributes ... will be ignored" warning;
  * its `to_bf16` calls `jax.tree_map`, removed from jax 0.10 (AttributeError), so bfloat16
    would need our own cast anyway;
  * `pip install diffusers==0.39.0` would downgrade huggingface_hub 2.4.0 -> 1.33.0 (pip dry
    run), which a pinned extra would do in every user's environment;
  * 0.40.0 removed Flax, so nothing will be fixed there.
  Ours: a few hundred lines, groups and eps from config.json, `dtype` for bfloat16 compute with
  float32 params, parity with diffusers 0.42.1's PyTorch classes (tests/test_uniskill_fdm.py).

Dimension glossary:
  B     batch
  h, w  latent height and width (image size / 8 for SD's VAE)
  H, W  image height and width in pixels
  C     channels of a block (block_out_channels[i])
  S     conditioning tokens (1 for UniSkill)
  E     cross-attention width (cross_attention_dim, 768)
  L     latent channels (4)

Precision: parameters are float32; `dtype=jnp.bfloat16` runs every conv and matmul in bfloat16;
attention softmaxes and the timestep embedding are float32, GroupNorm / LayerNorm statistics are
float32 (flax computes them in float32), outputs are float32.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from hilam_jax import config_io

TRANSFORMER_GROUP_NORM_EPS = 1e-6  # Transformer2DModel's GroupNorm (fixed in diffusers)
TRANSFORMER_LAYER_NORM_EPS = 1e-5  # BasicTransformerBlock's LayerNorms (default norm_eps)
VAE_EPS = 1e-6  # every GroupNorm of diffusers' VAE Encoder (fixed in diffusers)
LOGVAR_RANGE = (-30.0, 20.0)  # DiagonalGaussianDistribution clamps logvar to this range

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCK = "UNetMidBlock2DCrossAttn"


def _per_block(value: Any, num_blocks: int, name: str) -> tuple:
  """An int (or None) for every block, or a sequence of one value per block -> a tuple."""
  if isinstance(value, (list, tuple)):
    if len(value) != num_blocks:
      raise ValueError(f"{name}: {len(value)} values for {num_blocks} blocks")
    return tuple(value)
  return (value,) * num_blocks


def _check_class_name(config: dict[str, Any], expected: str) -> None:
  name = config.get("_class_name", expected)
  if name != expected:
    raise ValueError(f"config.json: _class_name {name!r}, expected {expected!r}")


@dataclasses.dataclass(frozen=True)
class UNetConfig(config_io.DictConfig):
  """The `UNet2DConditionModel` options this module implements. Defaults: SD-1.x InstructPix2Pix.

  Attributes:
    in_channels: 8 for InstructPix2Pix (noisy latent ++ condition latent).
    out_channels: L.
    block_out_channels: C per resolution level.
    down_block_types: per level, "CrossAttnDownBlock2D" or "DownBlock2D".
    up_block_types: per level (coarsest first), "CrossAttnUpBlock2D" or "UpBlock2D".
    layers_per_block: resnets per down block (up blocks have one more), per level.
    num_attention_heads: heads per level; diffusers reads these from config.json's
      `attention_head_dim` when `num_attention_heads` is null (its naming quirk), head width is
      C / heads.
    transformer_layers_per_block: BasicTransformerBlocks per Transformer2D, per level (the mid
      block uses the last).
    cross_attention_dim: E.
    norm_num_groups: GroupNorm groups of every resnet, Transformer2D and the output norm.
    norm_eps: epsilon of the resnets' and the output's GroupNorms.
    flip_sin_to_cos: timestep embedding as [cos, sin] (True) or [sin, cos].
    freq_shift: diffusers' downscale_freq_shift of the timestep frequencies.
    time_embed_dim: width of the timestep MLP (4 x block_out_channels[0] in diffusers).
    downsample_padding: padding of the down blocks' stride-2 convs.
    use_linear_projection: Transformer2D proj_in / proj_out are Linear (True) or 1x1 conv.
  """
  in_channels: int = 8
  out_channels: int = 4
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
  up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
  layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
  num_attention_heads: tuple[int, ...] = (8, 8, 8, 8)
  transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
  cross_attention_dim: int = 768
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  time_embed_dim: int = 1280
  downsample_padding: int = 1
  use_linear_projection: bool = False

  def __post_init__(self):
    n = len(self.block_out_channels)
    for name in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
                 "num_attention_heads", "transformer_layers_per_block"):
      object.__setattr__(self, name, _per_block(getattr(self, name), n, name))
    for name, allowed in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
      unknown = sorted(set(getattr(self, name)) - set(allowed))
      if unknown:
        raise ValueError(f"{name}: {unknown} not implemented (only {allowed})")
    for c in self.block_out_channels:
      if c % self.norm_num_groups:
        raise ValueError(f"block width {c} is not divisible by norm_num_groups "
                         f"{self.norm_num_groups}")

  @property
  def num_levels(self) -> int:
    return len(self.block_out_channels)

  def down_has_attention(self, level: int) -> bool:
    return self.down_block_types[level] == "CrossAttnDownBlock2D"

  def up_has_attention(self, i: int) -> bool:
    return self.up_block_types[i] == "CrossAttnUpBlock2D"

  @classmethod
  def from_hf_config(cls, config: dict[str, Any]) -> "UNetConfig":
    """From a diffusers `unet/config.json`.

    Raises:
      ValueError: an option this module does not implement (names it and its value).
    """
    _check_class_name(config, "UNet2DConditionModel")
    # Options that must keep their diffusers default: (name, default).
    defaults = (("act_fn", "silu"), ("center_input_sample", False), ("class_embed_type", None),
                ("num_class_embeds", None), ("addition_embed_type", None),
                ("encoder_hid_dim", None), ("encoder_hid_dim_type", None),
                ("time_embedding_type", "positional"), ("time_cond_proj_dim", None),
                ("time_embedding_act_fn", None), ("timestep_post_act", None),
                ("resnet_time_scale_shift", "default"), ("resnet_skip_time_act", False),
                ("resnet_out_scale_factor", 1.0), ("mid_block_scale_factor", 1),
                ("mid_block_type", MID_BLOCK), ("mid_block_only_cross_attention", None),
                ("only_cross_attention", False), ("dual_cross_attention", False),
                ("attention_type", "default"), ("cross_attention_norm", None),
                ("conv_in_kernel", 3), ("conv_out_kernel", 3),
                ("reverse_transformer_layers_per_block", None),
                ("class_embeddings_concat", False), ("addition_time_embed_dim", None),
                ("projection_class_embeddings_input_dim", None))
    for name, default in defaults:
      value = config.get(name, default)
      if name == "only_cross_attention" and isinstance(value, (list, tuple)):
        value = any(value)  # one flag per block: all must be False
      if value != default:
        raise ValueError(f"config.json: {name} = {value!r}, only {default!r} is implemented")
    boc = tuple(config["block_out_channels"])
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    return cls(in_channels=config["in_channels"], out_channels=config["out_channels"],
               block_out_channels=boc,
               down_block_types=tuple(config["down_block_types"]),
               up_block_types=tuple(config["up_block_types"]),
               layers_per_block=_per_block(config.get("layers_per_block", 2), len(boc),
                                           "layers_per_block"),
               num_attention_heads=_per_block(heads, len(boc), "num_attention_heads"),
               transformer_layers_per_block=_per_block(
                   config.get("transformer_layers_per_block", 1), len(boc),
                   "transformer_layers_per_block"),
               cross_attention_dim=int(config.get("cross_attention_dim", 1280)),
               norm_num_groups=int(config.get("norm_num_groups", 32)),
               norm_eps=float(config.get("norm_eps", 1e-5)),
               flip_sin_to_cos=bool(config.get("flip_sin_to_cos", True)),
               freq_shift=float(config.get("freq_shift", 0)),
               time_embed_dim=int(config.get("time_embedding_dim") or 4 * boc[0]),
               downsample_padding=int(config.get("downsample_padding", 1)),
               use_linear_projection=bool(config.get("use_linear_projection", False)))

  @classmethod
  def tiny(cls, **overrides) -> "UNetConfig":
    """A tiny size for tests: two levels (cross-attention at the finer one), as SD-1.x."""
    fields = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D",
                                                                 "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=(1, 1),
                  num_attention_heads=(8, 8), transformer_layers_per_block=(1, 1),
                  cross_attention_dim=24, time_embed_dim=128)
    fields.update(overrides)
    return cls(**fields)


@dataclasses.dataclass(frozen=True)
class VAEConfig(config_io.DictConfig):
  """The `AutoencoderKL` encoder options implemented here. Defaults: SD-1.x.

  Attributes:
    in_channels: image channels.
    block_out_channels: C per DownEncoderBlock2D.
    layers_per_block: resnets per encoder block.
    latent_channels: L.
    norm_num_groups: GroupNorm groups.
    scaling_factor: latents are multiplied by it before the UNet (0.18215 for SD-1.x).
    shift_factor: subtracted before scaling (None: 0).
    use_quant_conv: the 1x1 conv after the encoder.
    mid_block_add_attention: the mid block's self-attention.
    out_channels: image channels of the decoder (not converted; its keys are validated).
    use_post_quant_conv: the decoder's 1x1 conv (likewise validated only).
  """
  in_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  shift_factor: Optional[float] = None
  use_quant_conv: bool = True
  mid_block_add_attention: bool = True
  out_channels: int = 3
  use_post_quant_conv: bool = True

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))

  @classmethod
  def from_hf_config(cls, config: dict[str, Any]) -> "VAEConfig":
    """From a diffusers `vae/config.json`.

    Raises:
      ValueError: an option this module does not implement (names it and its value).
    """
    _check_class_name(config, "AutoencoderKL")
    n = len(config["block_out_channels"])
    for name, expected in (("act_fn", "silu"), ("down_block_types", ["DownEncoderBlock2D"] * n),
                           ("up_block_types", ["UpDecoderBlock2D"] * n),
                           ("latents_mean", None), ("latents_std", None)):
      value = config.get(name, expected)
      value = list(value) if isinstance(value, tuple) else value
      if value != expected:
        raise ValueError(f"config.json: {name} = {value!r}, only {expected!r} is implemented")
    shift = config.get("shift_factor")
    return cls(in_channels=config.get("in_channels", 3),
               block_out_channels=tuple(config["block_out_channels"]),
               layers_per_block=int(config.get("layers_per_block", 1)),
               latent_channels=int(config.get("latent_channels", 4)),
               norm_num_groups=int(config.get("norm_num_groups", 32)),
               scaling_factor=float(config.get("scaling_factor", 0.18215)),
               shift_factor=None if shift is None else float(shift),
               use_quant_conv=bool(config.get("use_quant_conv", True)),
               mid_block_add_attention=bool(config.get("mid_block_add_attention", True)),
               out_channels=int(config.get("out_channels", 3)),
               use_post_quant_conv=bool(config.get("use_post_quant_conv", True)))

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)


# ----------------------------------------------------------------------------- building blocks


def _group_norm(groups: int, eps: float, dtype: Any, name: str) -> nn.GroupNorm:
  # Two-pass variance, as torch computes it.
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype,
                      name=name)


def _conv(features: int, size: int, dtype: Any, name: str, stride: int = 1,
          padding: Any = None) -> nn.Conv:
  padding = (size - 1) // 2 if padding is None else padding
  return nn.Conv(features, (size, size), stride, padding=padding, dtype=dtype, name=name)


def timestep_embedding(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool,
                       freq_shift: float, max_period: float = 10000.0) -> jax.Array:
  """diffusers' `get_timestep_embedding`: [B] -> float32 [B, dim].

  freqs_i = exp(-ln(max_period) i / (dim/2 - freq_shift)); [sin(t f), cos(t f)], swapped to
  [cos, sin] with flip_sin_to_cos; an odd dim is zero-padded.
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None]  # [B, dim/2]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class ResnetBlock(nn.Module):
  """diffusers' ResnetBlock2D (pre-norm, SiLU, optional timestep bias, 1x1 shortcut if widths
  differ): [B, h, w, C_in] -> [B, h, w, out_channels]."""
  out_channels: int
  groups: int
  eps: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, temb: Optional[jax.Array]) -> jax.Array:
    h = nn.silu(_group_norm(self.groups, self.eps, self.dtype, "norm1")(x))
    h = _conv(self.out_channels, 3, self.dtype, "conv1")(h)
    if temb is not None:  # [B, T_emb]
      h = h + nn.Dense(self.out_channels, dtype=self.dtype,
                       name="time_emb_proj")(nn.silu(temb))[:, None, None, :]
    h = nn.silu(_group_norm(self.groups, self.eps, self.dtype, "norm2")(h))
    h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
    return x + h


class Attention(nn.Module):
  """diffusers' `Attention` (scaled dot product, heads x head_dim, to_out.0): queries [B, N, D],
  context [B, M, D_ctx] (None: self-attention) -> [B, N, out_dim]. Softmax in float32.

  `group_norm` = (groups, eps) adds the VAE mid block's form: GroupNorm of the queries' input
  first and the input added back (diffusers' group_norm + residual_connection).
  """
  heads: int
  head_dim: int
  out_dim: int
  qkv_bias: bool
  dtype: Any
  group_norm: Optional[tuple[int, float]] = None

  @nn.compact
  def __call__(self, x: jax.Array, context: Optional[jax.Array] = None) -> jax.Array:
    residual = x
    if self.group_norm is not None:
      # flax's GroupNorm reduces over every non-batch axis per group: over N and the group's
      # channels, as torch's GroupNorm on the [B, C, N] map.
      x = _group_norm(*self.group_norm, self.dtype, "group_norm")(x)
    context = x if context is None else context
    inner = self.heads * self.head_dim
    dense = functools.partial(nn.Dense, inner, use_bias=self.qkv_bias, dtype=self.dtype)
    split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)
    q = split(dense(name="to_q")(x))  # [B, N, heads, head_dim]
    k = split(dense(name="to_k")(context))  # [B, M, heads, head_dim]
    v = split(dense(name="to_v")(context))
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits / math.sqrt(self.head_dim), axis=-1)
    out = jnp.einsum("bhnm,bmhd->bnhd", weights, v.astype(jnp.float32))
    out = out.reshape(*out.shape[:2], inner).astype(self.dtype)
    out = nn.Dense(self.out_dim, dtype=self.dtype, name="to_out_0")(out)
    return out + residual if self.group_norm is not None else out


class BasicTransformerBlock(nn.Module):
  """x += attn1(LN x); x += attn2(LN x, context); x += GEGLU-FF(LN x). [B, N, D] -> same."""
  heads: int
  head_dim: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    norm = functools.partial(nn.LayerNorm, epsilon=TRANSFORMER_LAYER_NORM_EPS,
                             use_fast_variance=False, dtype=self.dtype)
    attention = functools.partial(Attention, self.heads, self.head_dim, dim, False, self.dtype)
    x = x + attention(name="attn1")(norm(name="norm1")(x))
    x = x + attention(name="attn2")(norm(name="norm2")(x), context)
    h = nn.Dense(8 * dim, dtype=self.dtype, name="ff_net_0_proj")(norm(name="norm3")(x))
    hidden, gate = jnp.split(h, 2, axis=-1)  # GEGLU: hidden * gelu(gate), exact GELU
    h = hidden * nn.gelu(gate, approximate=False)
    return x + nn.Dense(dim, dtype=self.dtype, name="ff_net_2")(h)


class Transformer2D(nn.Module):
  """diffusers' Transformer2DModel on a feature map: [B, h, w, C] -> same (+ input)."""
  heads: int
  num_layers: int
  groups: int
  linear_projection: bool
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    b, height, width, channels = x.shape
    head_dim = channels // self.heads
    inner = self.heads * head_dim
    h = _group_norm(self.groups, TRANSFORMER_GROUP_NORM_EPS, self.dtype, "norm")(x)
    if self.linear_projection:
      h = nn.Dense(inner, dtype=self.dtype, name="proj_in")(h.reshape(b, height * width, -1))
    else:
      h = _conv(inner, 1, self.dtype, "proj_in")(h).reshape(b, height * width, inner)
    for i in range(self.num_layers):
      h = BasicTransformerBlock(self.heads, head_dim, self.dtype,
                                name=f"transformer_blocks_{i}")(h, context)
    if self.linear_projection:
      h = nn.Dense(channels, dtype=self.dtype, name="proj_out")(h)
      h = h.reshape(b, height, width, channels)
    else:
      h = _conv(channels, 1, self.dtype, "proj_out")(h.reshape(b, height, width, inner))
    return h + x


class Downsample(nn.Module):
  """Stride-2 3x3 conv; padding 0 means diffusers' asymmetric (0, 1) zero pad first (VAE)."""
  channels: int
  padding: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.padding == 0:
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(self.channels, 3, self.dtype, "conv", stride=2, padding=self.padding)(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2 (torch `interpolate(scale_factor=2, mode="nearest")`), 3x3 conv."""
  channels: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(self.channels, 3, self.dtype, "conv")(x)


# ----------------------------------------------------------------------------- UNet


class UNet(nn.Module):
  """`UNet2DConditionModel`: noisy sample [B, h, w, in_channels], timesteps [B] (integers or
  floats), context [B, S, E] -> the prediction (epsilon for UniSkill) float32 [B, h, w,
  out_channels]. h and w must be divisible by 2 ** (num_levels - 1)."""
  config: UNetConfig = UNetConfig()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, sample: jax.Array, timesteps: jax.Array, context: jax.Array) -> jax.Array:
    c, dtype = self.config, self.dtype
    factor = 2 ** (c.num_levels - 1)
    if sample.shape[1] % factor or sample.shape[2] % factor:
      raise ValueError(f"sample: spatial size {sample.shape[1:3]} is not divisible by {factor}")
    resnet = functools.partial(ResnetBlock, groups=c.norm_num_groups, eps=c.norm_eps, dtype=dtype)
    transformer = functools.partial(Transformer2D, groups=c.norm_num_groups,
                                    linear_projection=c.use_linear_projection, dtype=dtype)
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps), sample.shape[:1])
    temb = timestep_embedding(timesteps, c.block_out_channels[0], c.flip_sin_to_cos,
                              c.freq_shift).astype(dtype)
    temb = nn.Dense(c.time_embed_dim, dtype=dtype, name="time_embedding_linear_1")(temb)
    temb = nn.Dense(c.time_embed_dim, dtype=dtype, name="time_embedding_linear_2")(nn.silu(temb))
    context = context.astype(dtype)

    x = _conv(c.block_out_channels[0], 3, dtype, "conv_in")(sample.astype(dtype))
    skips = [x]
    for level, width in enumerate(c.block_out_channels):
      name = f"down_blocks_{level}"
      for j in range(c.layers_per_block[level]):
        x = resnet(width, name=f"{name}_resnets_{j}")(x, temb)
        if c.down_has_attention(level):
          x = transformer(c.num_attention_heads[level], c.transformer_layers_per_block[level],
                          name=f"{name}_attentions_{j}")(x, context)
        skips.append(x)
      if level < c.num_levels - 1:
        x = Downsample(width, c.downsample_padding, dtype, name=f"{name}_downsamplers_0")(x)
        skips.append(x)

    width = c.block_out_channels[-1]
    x = resnet(width, name="mid_block_resnets_0")(x, temb)
    x = transformer(c.num_attention_heads[-1], c.transformer_layers_per_block[-1],
                    name="mid_block_attentions_0")(x, context)
    x = resnet(width, name="mid_block_resnets_1")(x, temb)

    for i in range(c.num_levels):
      level = c.num_levels - 1 - i
      width, name = c.block_out_channels[level], f"up_blocks_{i}"
      for j in range(c.layers_per_block[level] + 1):
        x = jnp.concatenate([x, skips.pop()], axis=-1)
        x = resnet(width, name=f"{name}_resnets_{j}")(x, temb)
        if c.up_has_attention(i):
          x = transformer(c.num_attention_heads[level], c.transformer_layers_per_block[level],
                          name=f"{name}_attentions_{j}")(x, context)
      if i < c.num_levels - 1:
        x = Upsample(width, dtype, name=f"{name}_upsamplers_0")(x)

    x = nn.silu(_group_norm(c.norm_num_groups, c.norm_eps, dtype, "conv_norm_out")(x))
    return _conv(c.out_channels, 3, dtype, "conv_out")(x).astype(jnp.float32)


# ----------------------------------------------------------------------------- VAE encoder


class VAEEncoder(nn.Module):
  """`AutoencoderKL.encode` up to the Gaussian's moments: images [B, H, W, 3] in [-1, 1] ->
  (mean, logvar) float32 [B, H/f, W/f, L] each (f = downsample_factor; logvar clamped as
  diffusers does)."""
  config: VAEConfig = VAEConfig()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    c, dtype = self.config, self.dtype
    resnet = functools.partial(ResnetBlock, groups=c.norm_num_groups, eps=VAE_EPS, dtype=dtype)
    x = _conv(c.block_out_channels[0], 3, dtype, "encoder_conv_in")(images.astype(dtype))
    for level, width in enumerate(c.block_out_channels):
      name = f"encoder_down_blocks_{level}"
      for j in range(c.layers_per_block):
        x = resnet(width, name=f"{name}_resnets_{j}")(x, None)
      if level < len(c.block_out_channels) - 1:
        x = Downsample(width, 0, dtype, name=f"{name}_downsamplers_0")(x)
    width = c.block_out_channels[-1]
    x = resnet(width, name="encoder_mid_block_resnets_0")(x, None)
    if c.mid_block_add_attention:
      b, height, width_, _ = x.shape  # one head over the h*w positions
      x = Attention(1, width, width, True, dtype, (c.norm_num_groups, VAE_EPS),
                    name="encoder_mid_block_attentions_0")(x.reshape(b, height * width_, width))
      x = x.reshape(b, height, width_, width)
    x = resnet(width, name="encoder_mid_block_resnets_1")(x, None)
    x = nn.silu(_group_norm(c.norm_num_groups, VAE_EPS, dtype, "encoder_conv_norm_out")(x))
    x = _conv(2 * c.latent_channels, 3, dtype, "encoder_conv_out")(x)
    if c.use_quant_conv:
      x = _conv(2 * c.latent_channels, 1, dtype, "quant_conv")(x)
    mean, logvar = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)


# ----------------------------------------------------------------------------- helpers


def abstract_unet_params(config: UNetConfig) -> dict:
  """The UNet params tree of ShapeDtypeStructs, computing nothing."""
  side = 2 ** (config.num_levels - 1)
  sample = jax.ShapeDtypeStruct((1, side, side, config.in_channels), jnp.float32)
  context = jax.ShapeDtypeStruct((1, 1, config.cross_attention_dim), jnp.float32)
  timesteps = jax.ShapeDtypeStruct((1,), jnp.int32)
  return jax.eval_shape(UNet(config).init, jax.random.key(0), sample, timesteps,
                        context)["params"]


def abstract_vae_params(config: VAEConfig) -> dict:
  """The VAE encoder params tree of ShapeDtypeStructs, computing nothing."""
  side = config.downsample_factor
  images = jax.ShapeDtypeStruct((1, side, side, config.in_channels), jnp.float32)
  return jax.eval_shape(VAEEncoder(config).init, jax.random.key(0), images)["params"]


def unet_apply(params: dict, sample: jax.Array, timesteps: jax.Array, context: jax.Array, *,
               config: UNetConfig, dtype: Any = jnp.float32) -> jax.Array:
  """Frozen UNet forward (parameters behind `stop_gradient`); differentiable in the inputs."""
  return UNet(config, dtype).apply({"params": jax.lax.stop_gradient(params)}, sample, timesteps,
                                   context)


def vae_moments(params: dict, images: jax.Array, *, config: VAEConfig,
                dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Frozen VAE encoder: images [B, H, W, 3] in [-1, 1] -> (mean, logvar) [B, h, w, L]."""
  return VAEEncoder(config, dtype).apply({"params": jax.lax.stop_gradient(params)}, images)


def scale_latents(latents: jax.Array, config: VAEConfig) -> jax.Array:
  """(latents - shift_factor) * scaling_factor, what SD feeds the UNet."""
  shift = 0.0 if config.shift_factor is None else config.shift_factor
  return (latents - shift) * config.scaling_factor


def num_parameters(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))

