"""A PyTorch reference of UniSkill's IDM, written from ../shared/UNISKILL.md, for the parity tests
and `experiments/benchmark_uniskill.py` (it lives here, not in tests/, so that the benchmark can
import it from an installed checkout: setup.py installs `experiments`, not `tests`).

Module names reproduce the released `idm.pth` keys exactly: the ResNet-18 trunk is an
`nn.Sequential` of torchvision's children (conv1, bn1, relu, maxpool, layer1..4 ->
`visual_encoder.0..7`), written by hand because torchvision does not import beside the CPU torch
build here; attention is `nn.MultiheadAttention` (packed in_proj) wrapped as
`{spatial,temporal}_attn.multihead_attn`. Inputs follow UniSkill's layout: RGB [B, T, 3, H, W]
in [0, 1], depth [B, T, H, W].

`depth_anything_hf_config` gives transformers' `DepthAnythingConfig` of Depth-Anything-V2-Small
(or a tiny one of the same structure) to build the depth reference from (transformers is imported
only there).
"""
import os

import torch
from torch import nn
from torch.nn import functional as F

from hilam_jax.lam.uniskill.idm import IDMConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
  """torchvision.models.resnet.BasicBlock."""

  def __init__(self, in_width: int, width: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_width, width, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.downsample = None
    if stride != 1 or in_width != width:
      self.downsample = nn.Sequential(nn.Conv2d(in_width, width, 1, stride, bias=False),
                                      nn.BatchNorm2d(width))

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(out)) + identity)


def resnet18_trunk(widths) -> nn.Sequential:
  """`nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])`."""
  layers = [nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
  in_width = widths[0]
  for stage, width in enumerate(widths):
    stride = 1 if stage == 0 else 2
    layers.append(nn.Sequential(BasicBlock(in_width, width, stride),
                                BasicBlock(width, width, 1)))
    in_width = width
  return nn.Sequential(*layers)


class SelfAttention(nn.Module):

  def __init__(self, dim: int, num_heads: int):
    super().__init__()
    self.multihead_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

  def forward(self, x, causal: bool = False):
    mask = None
    if causal:  # True = not allowed: token t attends to <= t
      mask = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), diagonal=1)
    return self.multihead_attn(x, x, x, attn_mask=mask, need_weights=False)[0]


class Mlp(nn.Module):

  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()  # exact erf form
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class STBlock(nn.Module):

  def __init__(self, dim: int, num_heads: int, mlp_ratio: int):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-5)
    self.spatial_attn = SelfAttention(dim, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-5)
    self.temporal_attn = SelfAttention(dim, num_heads)
    self.norm3 = nn.LayerNorm(dim, eps=1e-5)
    self.mlp = Mlp(dim, mlp_ratio * dim)

  def forward(self, x):  # [B, T, N, D]
    b, t, n, d = x.shape
    xs = x.reshape(b * t, n, d)
    xs = xs + self.spatial_attn(self.norm1(xs))
    xt = xs.reshape(b, t, n, d).transpose(1, 2).reshape(b * n, t, d)
    xt = xt + self.temporal_attn(self.norm2(xt), causal=True)
    xt = xt + self.mlp(self.norm3(xt))
    return xt.reshape(b, n, t, d).transpose(1, 2)


class STTransformer(nn.Module):

  def __init__(self, num_layers: int, dim: int, num_heads: int, mlp_ratio: int):
    super().__init__()
    self.layers = nn.ModuleList([STBlock(dim, num_heads, mlp_ratio) for _ in range(num_layers)])

  def forward(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


class ReferenceIDM(nn.Module):
  """UniSkill's IDM. forward(depth [B,T,H,W], rgb [B,T,3,H,W], return_skill) as UniSkill's."""

  def __init__(self, config: IDMConfig):
    super().__init__()
    c = config
    self.config = c
    p = c.patch_size
    self.depth_proj = nn.Sequential(nn.Identity(),  # index 0: UniSkill's einops Rearrange
                                    nn.LayerNorm(p * p, eps=1e-5), nn.Linear(p * p, c.hidden_dim),
                                    nn.LayerNorm(c.hidden_dim, eps=1e-5))
    self.visual_encoder = resnet18_trunk(c.resnet_widths)
    fused = c.hidden_dim + c.resnet_widths[-1]
    self.modal_proj = nn.Sequential(nn.LayerNorm(fused, eps=1e-5), nn.Linear(fused, c.hidden_dim),
                                    nn.LayerNorm(c.hidden_dim, eps=1e-5))
    self.transformer = STTransformer(c.num_layers, c.hidden_dim, c.num_heads, c.mlp_ratio)
    self.pos_embed_spatial = nn.Parameter(torch.zeros(1, 1, c.num_tokens, c.hidden_dim))
    self.pos_embed_temporal = nn.Parameter(torch.zeros(1, c.num_frames, 1, c.hidden_dim))
    self.proj = nn.Linear(c.hidden_dim, c.hidden_dim)
    self.skill_norm = nn.LayerNorm(c.hidden_dim, eps=1e-5)
    self.skill_proj = nn.Linear(c.hidden_dim, c.skill_dim)
    self.latent_norm = nn.LayerNorm(c.skill_dim, eps=1e-5)
    self.latent_proj = nn.Linear(c.skill_dim, c.out_dim)

  def patchify(self, depth):
    b, t, height, width = depth.shape
    p = self.config.patch_size
    x = depth.reshape(b, t, height // p, p, width // p, p).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(b, t, (height // p) * (width // p), p * p)

  def rgb_tokens(self, rgb):
    b, t = rgb.shape[:2]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (rgb.reshape(b * t, *rgb.shape[2:]) - mean) / std
    x = F.interpolate(self.visual_encoder(x), scale_factor=2, mode="bilinear",
                      align_corners=False)  # [B*T, C, h, w]
    return x.flatten(2).transpose(1, 2).reshape(b, t, -1, x.shape[1])

  def forward(self, depth, rgb, return_skill: bool = False):
    flat = depth.flatten(2)
    low, high = flat.min(-1).values, flat.max(-1).values
    depth = (depth - low[..., None, None]) / (high[..., None, None] - low[..., None, None])
    x = torch.cat([self.depth_proj(self.patchify(depth)), self.rgb_tokens(rgb)], dim=-1)
    x = self.modal_proj(x) + self.pos_embed_spatial + self.pos_embed_temporal
    x = self.transformer(x)
    skill = self.skill_proj(self.skill_norm(self.proj(x[:, [-1]].mean(dim=2))))  # [B, 1, Z]
    if return_skill:
      return skill
    return self.latent_proj(self.latent_norm(skill))  # [B, 1, E]


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
  """Non-trivial values everywhere (the default init leaves LayerNorms at 1/0, position
  embeddings at 0 and BatchNorm statistics at 0/1, which would hide mapping errors), and eval
  mode, so BatchNorm uses its running statistics."""
  gen = torch.Generator().manual_seed(seed)
  randn = lambda t: torch.randn(t.shape, generator=gen)
  for module in model.modules():
    if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
      module.weight.copy_(1 + 0.2 * randn(module.weight))
      module.bias.copy_(0.2 * randn(module.bias))
    if isinstance(module, nn.BatchNorm2d):
      module.running_mean.copy_(0.2 * randn(module.running_mean))
      module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
      module.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (), generator=gen)))
    if isinstance(module, nn.Linear):
      module.bias.copy_(0.1 * randn(module.bias))
    if isinstance(module, nn.MultiheadAttention):
      module.in_proj_bias.copy_(0.1 * randn(module.in_proj_bias))
      module.out_proj.bias.copy_(0.1 * randn(module.out_proj.bias))
  for name in ("pos_embed_spatial", "pos_embed_temporal"):
    getattr(model, name).copy_(0.5 * randn(getattr(model, name)))
  return model.eval()


def make_reference(config: IDMConfig, seed: int = 0) -> ReferenceIDM:
  """A randomly initialised reference IDM in eval mode."""
  torch.manual_seed(seed)
  return randomize_(ReferenceIDM(config), seed)


def save_state_dict(model: nn.Module, path) -> None:
  """As the release was saved: a plain state_dict, no wrapper."""
  torch.save(model.state_dict(), path)


def depth_anything_hf_config(tiny: bool = False):
  """transformers' DepthAnythingConfig: Depth-Anything-V2-Small's (DINOv2-S, 12 blocks, width
  384, 518 px trained grid; `DepthConfig()`), or with `tiny` a 4-block width-32 one with a 2x2
  trained grid (`DepthConfig.tiny()`)."""
  import transformers  # pylint: disable=g-import-not-at-top
  if tiny:
    backbone = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=28,
                    out_features=["stage1", "stage2", "stage3", "stage4"])
    head = dict(neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                reassemble_hidden_size=32)
  else:
    backbone = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518,
                    out_features=["stage3", "stage6", "stage9", "stage12"])
    head = dict(neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32,
                reassemble_hidden_size=384)
  backbone = transformers.Dinov2Config(patch_size=14, apply_layernorm=True,
                                       reshape_hidden_states=False, layerscale_value=1.0,
                                       **backbone)
  return transformers.DepthAnythingConfig(backbone_config=backbone, patch_size=14, **head)


@torch.no_grad()
def randomize_parameters_(model: nn.Module, seed: int, *, matrix_scale: float = 0.2,
                          vector_scale: float = 0.3) -> nn.Module:
  """Every parameter of a transformers / diffusers model random: N(0, matrix_scale²) for
  matrices and kernels, N(0, vector_scale²) for vectors, norm weights and layer scales
  (`lambda1`) around 1 (zero-initialised parameters would hide mapping errors). Eval mode."""
  generator = torch.Generator().manual_seed(seed)
  for name, p in model.named_parameters():
    noise = torch.randn(p.shape, generator=generator)
    around_one = "lambda1" in name or ("norm" in name and name.endswith("weight"))
    p.copy_(noise * (matrix_scale if p.ndim > 1 else vector_scale) + (1.0 if around_one else 0.0))
  return model.eval()


def unet_kwargs(cross_attention_dim: int, groups: int = 32) -> dict:
  """A small diffusers `UNet2DConditionModel` of the FDM's structure (8 input channels: the
  noisy target latent and the condition frame's latent; one cross-attention token)."""
  return dict(sample_size=16, in_channels=8, out_channels=4, block_out_channels=(32, 64),
              layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8,
              cross_attention_dim=cross_attention_dim, norm_num_groups=groups)


def vae_kwargs() -> dict:
  """A small diffusers `AutoencoderKL` (x2 downsampling, 4 latent channels)."""
  return dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
              norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32)


# Sizes of `write_random_release`: "tiny" (every part small: tests, smoke runs) or "idm" (the
# release's IDM and Depth-Anything-V2-Small at full size, a small FDM: labeling at real cost).
RELEASE_SIZES = ("tiny", "idm")


def write_random_release(out_dir: str, *, size: str = "tiny", seed: int = 0) -> dict:
  """A stand-in for UniSkill's released files, with random weights, in the released formats:
  `idm.pth` (a torch state_dict), `depth/` (transformers `save_pretrained`), `unet/` and `vae/`
  (diffusers `save_pretrained`, safetensors). For trying the conversion and labeling pipeline
  where the real files cannot be downloaded; its latents mean nothing.

  Returns {"idm", "depth", "unet", "vae"} paths, "idm_config" (the IDMConfig overrides the
  converter needs: {} at the release's size) and "dynamics" (DynamicsConfig fields that fit the
  small FDM: its resolution).
  """
  if size not in RELEASE_SIZES:
    raise ValueError(f"size {size!r} not in {RELEASE_SIZES}")
  import diffusers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  config = IDMConfig.tiny() if size == "tiny" else IDMConfig()
  overrides = config.to_dict() if size == "tiny" else {}
  paths = {"idm": os.path.join(out_dir, "idm.pth")}
  save_state_dict(make_reference(config, seed=seed), paths["idm"])
  torch.manual_seed(seed)
  depth = transformers.DepthAnythingForDepthEstimation(depth_anything_hf_config(size == "tiny"))
  models = {"depth": randomize_parameters_(depth, seed + 1, matrix_scale=0.3, vector_scale=0.5),
            "unet": randomize_parameters_(diffusers.UNet2DConditionModel(
                **unet_kwargs(config.out_dim)), seed + 2),
            "vae": randomize_parameters_(diffusers.AutoencoderKL(**vae_kwargs()), seed + 3)}
  for name, model in models.items():
    paths[name] = os.path.join(out_dir, name)
    model.save_pretrained(paths[name])
  return dict(paths, idm_config=overrides, dynamics={"fdm_resolution": 32})
