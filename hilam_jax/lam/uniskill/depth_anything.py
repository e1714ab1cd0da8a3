"""Depth-Anything-V2-Small (DINOv2-S backbone + DPT neck and head) in Flax Linen.

UniSkill's IDM reads a depth map of each frame predicted by Depth-Anything-V2-Small (transformers'
`DepthAnythingForDepthEstimation`, the `depth-anything/Depth-Anything-V2-Small-hf` release). This
module computes what that class computes, so `depth_anything_convert` can load the released
`model.safetensors`:

  backbone  P x P patch conv -> [CLS] + patches + position embeddings (bicubic-interpolated from
            the trained grid to the input's, align_corners=False, A = -0.75 as torch) ->
            L x [x + ls1 * attn(LN x); x + ls2 * mlp(LN x)] (exact GELU, layer scale) ->
            the hidden states after the blocks `out_indices` (1-based), each through the final
            LayerNorm
  neck      reassemble: drop [CLS], tokens -> [h, w] map, 1x1 conv to neck_hidden_sizes[i], then
            resize by reassemble_factors[i] (transposed conv x4 / x2, identity, 3x3 stride-2
            conv); 3x3 conv (no bias) to fusion width; fusion from the coarsest map up:
            x = x + residual_unit(next map), residual_unit(x), bilinear resize to the next map's
            size (the last: x2), align_corners=True, 1x1 conv
  head      3x3 conv (F/2), bilinear resize to (h*P, w*P) align_corners=True, 3x3 conv, ReLU,
            1x1 conv to 1, ReLU (relative) or sigmoid (metric), * max_depth

Parameter names mirror the PyTorch ones (`backbone/encoder/layer_3/attention/query`,
`neck/fusion_stage/layers_0/residual_layer1/convolution1`, ...). torch is never imported here.

Dimension glossary:
  B     batch of images
  H, W  input height and width in pixels, multiples of P
  P     patch size (14)
  h, w  patch grid, H / P and W / P; N = h * w patch tokens (+1 [CLS])
  D     backbone width (`hidden_size`, 384 for -Small)
  G     side of the trained position-embedding grid (`position_grid`, 37 = 518 / 14)
  C_i   neck_hidden_sizes[i]; F fusion width (`fusion_hidden_size`)
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hilam_jax import config_io

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DPT_SIZE = 518  # the DPT image processor's target size for Depth-Anything-V2
CUBIC_A = -0.75  # torch's bicubic interpolation coefficient (PIL and JAX use -0.5)


@dataclasses.dataclass(frozen=True)
class DepthConfig(config_io.DictConfig):
  """Hyper-parameters of Depth-Anything(-V2) with a DINOv2 backbone. Defaults: V2-Small.

  Attributes:
    hidden_size: D, backbone width.
    num_layers: L, backbone blocks.
    num_heads: attention heads (not visible in the weights' shapes).
    mlp_ratio: MLP hidden width / D.
    patch_size: P.
    position_grid: G, the trained position-embedding grid side (config image_size / P).
    layer_norm_eps: every backbone LayerNorm's epsilon.
    out_indices: 1-based blocks whose outputs feed the neck (len == len(neck_hidden_sizes)).
    apply_layernorm: the backbone's final LayerNorm applied to those outputs.
    neck_hidden_sizes: C_i, reassembled widths.
    reassemble_factors: resize factors of the reassembled maps (>1 up, 1 same, <1 down).
    fusion_hidden_size: F.
    head_hidden_size: width of the head's second conv.
    head_in_index: which fused map the head reads (-1: the finest).
    depth_estimation_type: "relative" (ReLU output) or "metric" (sigmoid).
    max_depth: output scale.
  """
  hidden_size: int = 384
  num_layers: int = 12
  num_heads: int = 6
  mlp_ratio: int = 4
  patch_size: int = 14
  position_grid: int = 37
  layer_norm_eps: float = 1e-6
  out_indices: tuple[int, ...] = (3, 6, 9, 12)
  apply_layernorm: bool = True
  neck_hidden_sizes: tuple[int, ...] = (48, 96, 192, 384)
  reassemble_factors: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
  fusion_hidden_size: int = 64
  head_hidden_size: int = 32
  head_in_index: int = -1
  depth_estimation_type: str = "relative"
  max_depth: float = 1.0

  def __post_init__(self):
    for name in ("out_indices", "neck_hidden_sizes"):
      object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
    object.__setattr__(self, "reassemble_factors",
                       tuple(float(v) for v in self.reassemble_factors))
    if not len(self.out_indices) == len(self.neck_hidden_sizes) == len(self.reassemble_factors):
      raise ValueError(f"out_indices {self.out_indices}, neck_hidden_sizes "
                       f"{self.neck_hidden_sizes} and reassemble_factors "
                       f"{self.reassemble_factors} must have one entry per neck input")
    if any(not 1 <= i <= self.num_layers for i in self.out_indices):
      raise ValueError(f"out_indices {self.out_indices} must be blocks 1..{self.num_layers}")
    for f in self.reassemble_factors:
      if not (f == 1 or (f > 1 and f == int(f)) or (f < 1 and 1 / f == int(1 / f))):
        raise ValueError(f"reassemble factor {f}: expected an integer, 1 or 1/integer")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} not divisible by num_heads "
                       f"{self.num_heads}")
    if self.depth_estimation_type not in ("relative", "metric"):
      raise ValueError(f"depth_estimation_type {self.depth_estimation_type!r}: expected "
                       "'relative' or 'metric'")

  @classmethod
  def tiny(cls) -> "DepthConfig":
    """A tiny size for tests (2x2 trained grid, 4 blocks); same structure as the release."""
    return cls(hidden_size=32, num_layers=4, num_heads=2, position_grid=2,
               out_indices=(1, 2, 3, 4), neck_hidden_sizes=(8, 16, 32, 32),
               fusion_hidden_size=16, head_hidden_size=8)

  @classmethod
  def from_hf_config(cls, config: dict[str, Any]) -> "DepthConfig":
    """From a transformers `config.json` (DepthAnythingConfig with a DINOv2 backbone).

    Raises:
      ValueError: an option this module does not implement (names it).
    """
    backbone = config.get("backbone_config") or {}
    required = {("model_type",): "depth_anything", ("backbone_config", "model_type"): "dinov2",
                ("backbone_config", "hidden_act"): "gelu",
                ("backbone_config", "use_swiglu_ffn"): False,
                ("backbone_config", "qkv_bias"): True,
                ("backbone_config", "reshape_hidden_states"): False,
                ("backbone_config", "num_channels"): 3}
    for path, value in required.items():
      actual = config if path[0] != "backbone_config" else backbone
      actual = actual.get(path[-1], None if path[-1] != "num_channels" else 3)
      if actual != value:
        raise ValueError(f"config.json: {'.'.join(path)} = {actual!r}, only {value!r} is "
                         "implemented")
    if config.get("use_pretrained_backbone") or config.get("backbone"):
      raise ValueError("config.json: a named/pretrained backbone is not implemented")
    if config.get("reassemble_hidden_size", backbone["hidden_size"]) != backbone["hidden_size"]:
      raise ValueError(f"config.json: reassemble_hidden_size {config['reassemble_hidden_size']} "
                       f"!= backbone hidden_size {backbone['hidden_size']}")
    patch = int(backbone["patch_size"])
    if int(config.get("patch_size", patch)) != patch:
      raise ValueError(f"config.json: patch_size {config['patch_size']} != backbone's {patch}")
    image_size = backbone["image_size"]
    if isinstance(image_size, (list, tuple)):
      if image_size[0] != image_size[1]:
        raise ValueError(f"config.json: a non-square trained grid {image_size} is not implemented")
      image_size = image_size[0]
    return cls(hidden_size=backbone["hidden_size"], num_layers=backbone["num_hidden_layers"],
               num_heads=backbone["num_attention_heads"], mlp_ratio=backbone["mlp_ratio"],
               patch_size=patch, position_grid=int(image_size) // patch,
               layer_norm_eps=backbone["layer_norm_eps"],
               out_indices=tuple(backbone["out_indices"]),
               apply_layernorm=backbone.get("apply_layernorm", True),
               neck_hidden_sizes=tuple(config["neck_hidden_sizes"]),
               reassemble_factors=tuple(config["reassemble_factors"]),
               fusion_hidden_size=config["fusion_hidden_size"],
               head_hidden_size=config["head_hidden_size"],
               head_in_index=config.get("head_in_index", -1),
               depth_estimation_type=config.get("depth_estimation_type", "relative"),
               max_depth=float(config.get("max_depth", 1.0)))


# ----------------------------------------------------------------------------- resampling
# As weight matrices built with numpy at trace time (shapes are static): out = M @ in along one
# axis. Exact torch formulas, so parity does not depend on jax.image's conventions.


def _source_coordinate(out_size: int, in_size: int, align_corners: bool) -> np.ndarray:
  dst = np.arange(out_size, dtype=np.float64)
  if align_corners:
    return dst * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
  return (dst + 0.5) * (in_size / out_size) - 0.5


def linear_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
  """[out, in] weights of torch's bilinear `interpolate(size=...)` along one axis."""
  src = _source_coordinate(out_size, in_size, align_corners)
  if not align_corners:
    src = np.maximum(src, 0.0)  # torch clamps negative source coordinates (linear modes)
  low = np.minimum(np.floor(src).astype(int), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  frac = src - low
  m = np.zeros((out_size, in_size))
  np.add.at(m, (np.arange(out_size), low), 1 - frac)
  np.add.at(m, (np.arange(out_size), high), frac)
  return m.astype(np.float32)


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
  t = np.abs(t)
  return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                  np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def cubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of torch's bicubic `interpolate(size=..., align_corners=False)`: A = -0.75,
  taps at floor(src) - 1 .. + 2 with indices clamped to the border (not renormalised)."""
  src = _source_coordinate(out_size, in_size, align_corners=False)
  base = np.floor(src)
  frac = src - base
  m = np.zeros((out_size, in_size))
  for offset in (-1, 0, 1, 2):
    index = np.clip(base.astype(int) + offset, 0, in_size - 1)
    np.add.at(m, (np.arange(out_size), index), _cubic(frac - offset, CUBIC_A))
  return m.astype(np.float32)


def resize_2d(x: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
  """[B, h, w, C] -> [B, h', w', C] with separable weights rows [h', h], cols [w', w]."""
  x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(rows, x.dtype), x,
                 precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("pw,bowc->bopc", jnp.asarray(cols, x.dtype), x,
                    precision=jax.lax.Precision.HIGHEST)


def resize_bilinear(x: jax.Array, size: Sequence[int], align_corners: bool) -> jax.Array:
  """torch `interpolate(x, size, mode="bilinear", align_corners=...)` on [B, h, w, C]."""
  _, h, w, _ = x.shape
  return resize_2d(x, linear_matrix(h, size[0], align_corners),
                   linear_matrix(w, size[1], align_corners))


# ----------------------------------------------------------------------------- backbone


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class Embeddings(nn.Module):
  """Patch conv + [CLS] + (interpolated) position embeddings: [B, H, W, 3] -> [B, 1 + N, D]."""
  config: DepthConfig

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    c = self.config
    b, height, width, _ = pixels.shape
    h, w = height // c.patch_size, width // c.patch_size
    x = nn.Conv(c.hidden_size, (c.patch_size, c.patch_size), strides=c.patch_size,
                padding="VALID", name="patch_embeddings")(pixels)  # [B, h, w, D]
    x = x.reshape(b, h * w, c.hidden_size)
    cls_token = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, c.hidden_size))
    positions = self.param("position_embeddings", nn.initializers.normal(0.02),
                           (1, 1 + c.position_grid ** 2, c.hidden_size))
    x = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, c.hidden_size)), x], axis=1)
    return x + interpolate_positions(positions, c.position_grid, h, w)


def interpolate_positions(positions: jax.Array, grid: int, h: int, w: int) -> jax.Array:
  """[1, 1 + G*G, D] -> [1, 1 + h*w, D]: the patch part bicubically resized to h x w (as
  transformers' `Dinov2Embeddings.interpolate_pos_encoding`; an identity when h == w == G)."""
  if (h, w) == (grid, grid):
    return positions
  d = positions.shape[-1]
  patch = positions[:, 1:].reshape(1, grid, grid, d)
  patch = resize_2d(patch, cubic_matrix(grid, h), cubic_matrix(grid, w)).reshape(1, h * w, d)
  return jnp.concatenate([positions[:, :1], patch], axis=1)


class Attention(nn.Module):
  config: DepthConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, S, D]
    c = self.config
    heads, head_dim = c.num_heads, c.hidden_size // c.num_heads
    split = lambda t: t.reshape(*t.shape[:-1], heads, head_dim)  # [B, S, heads, head_dim]
    q = split(nn.Dense(c.hidden_size, name="query")(x))
    k = split(nn.Dense(c.hidden_size, name="key")(x))
    v = split(nn.Dense(c.hidden_size, name="value")(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim ** -0.5
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
    return nn.Dense(c.hidden_size, name="output")(out.reshape(*x.shape))


class Layer(nn.Module):
  """One DINOv2 block with layer scale: pre-LN attention and MLP, each scaled per channel."""
  config: DepthConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    ones = nn.initializers.ones
    y = Attention(c, name="attention")(_layer_norm(c.layer_norm_eps, "norm1")(x))
    x = x + y * self.param("layer_scale1", ones, (c.hidden_size,))
    y = _layer_norm(c.layer_norm_eps, "norm2")(x)
    y = nn.Dense(c.mlp_ratio * c.hidden_size, name="fc1")(y)
    y = nn.Dense(c.hidden_size, name="fc2")(nn.gelu(y, approximate=False))  # exact GELU
    return x + y * self.param("layer_scale2", ones, (c.hidden_size,))


class Backbone(nn.Module):
  """[B, H, W, 3] normalised pixels -> the `out_indices` hidden states, each [B, 1 + N, D]."""
  config: DepthConfig

  @nn.compact
  def __call__(self, pixels: jax.Array) -> list[jax.Array]:
    c = self.config
    x = Embeddings(c, name="embeddings")(pixels)
    layernorm = _layer_norm(c.layer_norm_eps, "layernorm")
    features = []
    for i in range(c.num_layers):
      x = Layer(c, name=f"layer_{i}")(x)
      if i + 1 in c.out_indices:  # stage i+1 = the output of block i+1
        features.append(layernorm(x) if c.apply_layernorm else x)
    return features


# ----------------------------------------------------------------------------- neck and head


class TransposedConvNoOverlap(nn.Module):
  """torch ConvTranspose2d(kernel=stride=f, padding=0): every input pixel paints its own f x f
  block. kernel [C_in, f, f, C_out] (torch's [C_in, C_out, f, f] transposed)."""
  features: int
  factor: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, h, w, C_in] -> [B, f h, f w, C_out]
    f = self.factor
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (x.shape[-1], f, f, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    b, h, w, _ = x.shape
    y = jnp.einsum("bhwc,cijo->bhiwjo", x, kernel)
    return y.reshape(b, h * f, w * f, self.features) + bias


class ReassembleLayer(nn.Module):
  channels: int
  factor: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.channels, (1, 1), name="projection")(x)
    if self.factor > 1:
      return TransposedConvNoOverlap(self.channels, int(self.factor), name="resize")(x)
    if self.factor < 1:
      return nn.Conv(self.channels, (3, 3), strides=int(round(1 / self.factor)),
                     padding=((1, 1), (1, 1)), name="resize")(x)
    return x


class ResidualUnit(nn.Module):
  """Pre-activation residual unit: x + conv(relu(conv(relu(x))))."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda name: nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name=name)
    return x + conv("convolution2")(nn.relu(conv("convolution1")(nn.relu(x))))


class FusionLayer(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, residual: jax.Array | None,
               size: Sequence[int] | None) -> jax.Array:
    if residual is not None:
      if residual.shape != x.shape:
        residual = resize_bilinear(residual, x.shape[1:3], align_corners=False)
      x = x + ResidualUnit(self.features, name="residual_layer1")(residual)
    x = ResidualUnit(self.features, name="residual_layer2")(x)
    size = (2 * x.shape[1], 2 * x.shape[2]) if size is None else size
    x = resize_bilinear(x, size, align_corners=True)
    return nn.Conv(self.features, (1, 1), name="projection")(x)


class Neck(nn.Module):
  """Backbone features -> fused maps, coarsest first: [B, h_i, w_i, F] each."""
  config: DepthConfig

  @nn.compact
  def __call__(self, features: list[jax.Array], h: int, w: int) -> list[jax.Array]:
    c = self.config
    maps = []
    for i, (x, channels, factor) in enumerate(zip(features, c.neck_hidden_sizes,
                                                  c.reassemble_factors)):
      x = x[:, 1:].reshape(x.shape[0], h, w, x.shape[-1])  # drop [CLS]; row-major patches
      x = ReassembleLayer(channels, factor, name=f"reassemble_stage_{i}")(x)
      maps.append(nn.Conv(c.fusion_hidden_size, (3, 3), padding=((1, 1), (1, 1)),
                          use_bias=False, name=f"convs_{i}")(x))
    maps = maps[::-1]
    fused, out = None, []
    for i, x in enumerate(maps):
      size = maps[i + 1].shape[1:3] if i + 1 < len(maps) else None
      layer = FusionLayer(c.fusion_hidden_size, name=f"fusion_stage_{i}")
      fused = layer(x, None, size) if fused is None else layer(fused, x, size)
      out.append(fused)
    return out


class Head(nn.Module):
  config: DepthConfig

  @nn.compact
  def __call__(self, fused: list[jax.Array], h: int, w: int) -> jax.Array:
    c = self.config
    pad = ((1, 1), (1, 1))
    x = nn.Conv(c.fusion_hidden_size // 2, (3, 3), padding=pad, name="conv1")(
        fused[c.head_in_index])
    x = resize_bilinear(x, (h * c.patch_size, w * c.patch_size), align_corners=True)
    x = nn.relu(nn.Conv(c.head_hidden_size, (3, 3), padding=pad, name="conv2")(x))
    x = nn.Conv(1, (1, 1), name="conv3")(x)[..., 0]  # [B, H, W]
    x = nn.relu(x) if c.depth_estimation_type == "relative" else nn.sigmoid(x)
    return x * c.max_depth


class DepthAnything(nn.Module):
  """`DepthAnythingForDepthEstimation`: normalised pixels [B, H, W, 3] (H, W multiples of P)
  -> predicted depth float32 [B, H, W] (relative: larger is nearer)."""
  config: DepthConfig = DepthConfig()

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    c = self.config
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
      raise ValueError(f"pixels: expected [B, H, W, 3], got shape {pixels.shape}")
    height, width = pixels.shape[1:3]
    if height % c.patch_size or width % c.patch_size:
      raise ValueError(f"pixels: H and W must be multiples of the patch size {c.patch_size}, "
                       f"got {height} x {width}")
    h, w = height // c.patch_size, width // c.patch_size
    features = Backbone(c, name="backbone")(pixels.astype(jnp.float32))
    return Head(c, name="head")(Neck(c, name="neck")(features, h, w), h, w)


def abstract_params(config: DepthConfig) -> dict:
  """The params tree of ShapeDtypeStructs (the trained grid's input size), computing nothing."""
  side = config.position_grid * config.patch_size
  pixels = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
  return jax.eval_shape(DepthAnything(config).init, jax.random.key(0), pixels)["params"]


@functools.partial(jax.jit, static_argnames=("config",))
def predict_depth(params: dict, pixels: jax.Array, *, config: DepthConfig) -> jax.Array:
  """Frozen forward: normalised pixels [B, H, W, 3] -> depth [B, H, W]. No gradient reaches the
  parameters (`stop_gradient`); gradients w.r.t. the pixels are available."""
  return DepthAnything(config).apply({"params": jax.lax.stop_gradient(params)}, pixels)


# ----------------------------------------------------------------------------- preprocessing


def dpt_resize_shape(height: int, width: int, size: int = DPT_SIZE, multiple: int = 14,
                     keep_aspect_ratio: bool = True) -> tuple[int, int]:
  """The DPT image processor's output size (transformers `get_resize_output_image_size`): scale
  as little as possible to reach `size` on one side, keep the aspect ratio, round each side to a
  multiple of `multiple` (Python's round: halves to even)."""
  scale_h, scale_w = size / height, size / width
  if keep_aspect_ratio:
    if abs(1 - scale_w) < abs(1 - scale_h):
      scale_h = scale_w
    else:
      scale_w = scale_h
  return (round(scale_h * height / multiple) * multiple,
          round(scale_w * width / multiple) * multiple)


def pil_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of PIL's `Image.resize(..., BICUBIC)` along one axis: A = -0.5, support
  2 * max(in / out, 1) (antialiased when shrinking), taps outside the image dropped and the rest
  renormalised (PIL `ImagingResample`'s precompute_coeffs)."""
  scale = in_size / out_size
  filter_scale = max(scale, 1.0)
  support = 2.0 * filter_scale
  m = np.zeros((out_size, in_size))
  for i in range(out_size):
    center = (i + 0.5) * scale
    low = max(int(center - support + 0.5), 0)
    high = min(int(center + support + 0.5), in_size)
    taps = np.arange(low, high)
    weights = _cubic((taps - center + 0.5) / filter_scale, -0.5)
    m[i, low:high] = weights / weights.sum()
  return m.astype(np.float32)


def _round_to_uint8_levels(x: jax.Array) -> jax.Array:
  return jnp.clip(jnp.floor(x + 0.5), 0.0, 255.0)


def resize_like_pil_uint8(rgb: jax.Array, size: Sequence[int]) -> jax.Array:
  """What transformers' PIL backend does to a float [0, 1] image: to uint8 (x * 255, truncated),
  PIL bicubic (horizontal pass, then vertical, each rounded and clipped to uint8), back / 255.
  [B, H, W, 3] -> [B, size[0], size[1], 3]. Piecewise constant in the input (zero gradient).
  Measured against `DPTImageProcessorPil` on random images: equal except ~0.005% of values one
  uint8 level apart (PIL's fixed-point weights)."""
  _, height, width, _ = rgb.shape
  x = jnp.floor(rgb.astype(jnp.float32) * 255.0)
  x = jnp.einsum("pw,bhwc->bhpc", jnp.asarray(pil_bicubic_matrix(width, size[1])), x,
                 precision=jax.lax.Precision.HIGHEST)
  x = _round_to_uint8_levels(x)
  x = jnp.einsum("oh,bhpc->bopc", jnp.asarray(pil_bicubic_matrix(height, size[0])), x,
                 precision=jax.lax.Precision.HIGHEST)
  return _round_to_uint8_levels(x) / 255.0


def uniskill_depth_pixels(rgb: jax.Array, size: int = DPT_SIZE) -> jax.Array:
  """UniSkill's training-time depth input: RGB [B, H, W, 3] floats in [0, 1] (the frames after
  the IDM's 224 resize) -> normalised pixels [B, H', W', 3] for `DepthAnything`.

  As the DPT processor UniSkill used with the PIL backend and do_rescale=False: bicubic resize to
  `dpt_resize_shape` (keep aspect ratio, multiple of 14) through uint8 (`resize_like_pil_uint8`),
  then ImageNet mean / std.
  """
  _, height, width, _ = rgb.shape
  x = resize_like_pil_uint8(rgb, dpt_resize_shape(height, width, size))
  return (x - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)


def minmax_per_image(depth: jax.Array) -> jax.Array:
  """[B, H, W] -> per-image min-max to [0, 1] (no epsilon: a constant map gives NaN)."""
  low = depth.min(axis=(1, 2), keepdims=True)
  high = depth.max(axis=(1, 2), keepdims=True)
  return (depth - low) / (high - low)


@functools.partial(jax.jit, static_argnames=("config", "out_size", "pixels_size"))
def uniskill_depth(params: dict, rgb: jax.Array, *, config: DepthConfig,
                   out_size: int = 224, pixels_size: int = DPT_SIZE) -> jax.Array:
  """UniSkill's depth maps for the IDM: RGB [B, H, W, 3] in [0, 1] -> [B, out_size, out_size]
  in [0, 1]: `uniskill_depth_pixels` (at `pixels_size`, the DPT processor's 518 for the
  release) -> Depth-Anything -> per-image min-max -> bilinear resize (align_corners=False) to
  out_size. The last resize's mode is not in the facts we have (an assumption; the IDM min-max
  normalises again, so only the interpolation matters)."""
  depth = predict_depth(params, uniskill_depth_pixels(rgb, pixels_size), config=config)
  depth = minmax_per_image(depth)[..., None]
  return resize_bilinear(depth, (out_size, out_size), align_corners=False)[..., 0]
