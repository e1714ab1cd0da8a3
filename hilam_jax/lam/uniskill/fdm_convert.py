"""Strict, pickle-free conversion of UniSkill's FDM folders (`unet/`, `vae/`) to Flax params.

Each folder is what diffusers' `save_pretrained` writes: `config.json` + either
`diffusion_pytorch_model.safetensors` (read with `safetensors.numpy`: no torch, no pickle) or,
if there is no safetensors file, `diffusion_pytorch_model.bin` (read with
`torch.load(weights_only=True)`, torch's restricted unpickler). The manifest records which file
was read (`source.weights_file`, `source.weights_format`) and the converter prints it.

  convert_unet(folder, out_dir) -> <out_dir>/{unet_params.msgpack, manifest.json}
  convert_vae(folder, out_dir)  -> <out_dir>/{vae_params.msgpack, manifest.json}

(for UniSkill: <converted dir>/unet and <converted dir>/vae, `frozen_models.UNISKILL_PARTS`),
and `load_unet` / `load_vae` read them back, checking the params file's sha256 and every shape.

The key maps are exhaustive and strict: a key missing from the file, a key the map does not
know, a shape other than the config implies, or a non-float tensor is a `ConversionError` naming
the key. Per key: Conv2d weight [O, I, kh, kw] -> kernel [kh, kw, I, O]; Linear weight [out, in]
-> kernel [in, out]; GroupNorm / LayerNorm weight -> scale. The VAE's decoder (`decoder.*`,
`post_quant_conv.*`) is expected and validated (every key, shape, float) but deliberately not
converted: the diffusion loss only encodes; the manifest lists those keys under
`validated_not_converted`. VAE folders saved by older diffusers name the mid-block attention
`query` / `key` / `value` / `proj_attn`; these are renamed to `to_q` / `to_k` / `to_v` /
`to_out.0` (the manifest lists the renames), as diffusers does when it loads them.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from data_pipeline import run_info
from hilam_jax.lam.uniskill import convert as common
from hilam_jax.lam.uniskill import fdm as uniskill_fdm
from hilam_jax.lam.uniskill.convert import ConversionError, KeyRule
from hilam_jax.lam.uniskill.fdm import UNetConfig, VAEConfig

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "diffusion_pytorch_model.safetensors"
BIN_FILE = "diffusion_pytorch_model.bin"
MANIFEST_FILE = "manifest.json"
UNET_PARAMS_FILE = "unet_params.msgpack"
VAE_PARAMS_FILE = "vae_params.msgpack"
UNET_FORMAT = "hilam_jax.uniskill_fdm.unet/1"
VAE_FORMAT = "hilam_jax.uniskill_fdm.vae/1"
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

Rules = Iterator[tuple[str, KeyRule]]
_leaf = common._leaf  # pylint: disable=protected-access


def _not_converted(array: np.ndarray) -> dict:
  del array
  return {}


def _validated_only(rules: Rules) -> Rules:
  """The same keys and shapes, checked but not converted."""
  for key, rule in rules:
    yield key, KeyRule(rule.shape, _not_converted)


def _dense(torch_name: str, path: tuple[str, ...], out_dim: int, in_dim: int,
           bias: bool = True) -> Rules:
  yield f"{torch_name}.weight", KeyRule((out_dim, in_dim),
                                        _leaf(("params", *path, "kernel"), np.transpose))
  if bias:
    yield f"{torch_name}.bias", KeyRule((out_dim,), _leaf(("params", *path, "bias")))


def _norm(torch_name: str, path: tuple[str, ...], dim: int) -> Rules:
  return common._layer_norm(torch_name, path, dim)  # pylint: disable=protected-access


def _conv(torch_name: str, path: tuple[str, ...], out_dim: int, in_dim: int, size: int) -> Rules:
  yield from common._conv(torch_name, path, out_dim, in_dim, size)  # pylint: disable=protected-access
  yield f"{torch_name}.bias", KeyRule((out_dim,), _leaf(("params", *path, "bias")))


def _flax_name(torch_prefix: str) -> tuple[str, ...]:
  return (torch_prefix.replace(".", "_"),)


def _resnet(prefix: str, in_dim: int, out_dim: int, temb_dim: int | None) -> Rules:
  path = _flax_name(prefix)
  yield from _norm(f"{prefix}.norm1", (*path, "norm1"), in_dim)
  yield from _conv(f"{prefix}.conv1", (*path, "conv1"), out_dim, in_dim, 3)
  if temb_dim is not None:
    yield from _dense(f"{prefix}.time_emb_proj", (*path, "time_emb_proj"), out_dim, temb_dim)
  yield from _norm(f"{prefix}.norm2", (*path, "norm2"), out_dim)
  yield from _conv(f"{prefix}.conv2", (*path, "conv2"), out_dim, out_dim, 3)
  if in_dim != out_dim:
    yield from _conv(f"{prefix}.conv_shortcut", (*path, "conv_shortcut"), out_dim, in_dim, 1)


def _attention(prefix: str, path: tuple[str, ...], dim: int, context_dim: int, inner: int,
               qkv_bias: bool) -> Rules:
  yield from _dense(f"{prefix}.to_q", (*path, "to_q"), inner, dim, qkv_bias)
  yield from _dense(f"{prefix}.to_k", (*path, "to_k"), inner, context_dim, qkv_bias)
  yield from _dense(f"{prefix}.to_v", (*path, "to_v"), inner, context_dim, qkv_bias)
  yield from _dense(f"{prefix}.to_out.0", (*path, "to_out_0"), dim, inner)


def _transformer(prefix: str, channels: int, heads: int, layers: int, config: UNetConfig) -> Rules:
  path = _flax_name(prefix)
  inner = heads * (channels // heads)
  yield from _norm(f"{prefix}.norm", (*path, "norm"), channels)
  projection = ((lambda name, p, o, i: _dense(name, p, o, i)) if config.use_linear_projection
                else (lambda name, p, o, i: _conv(name, p, o, i, 1)))
  yield from projection(f"{prefix}.proj_in", (*path, "proj_in"), inner, channels)
  for k in range(layers):
    block, block_path = f"{prefix}.transformer_blocks.{k}", (*path, f"transformer_blocks_{k}")
    for n in (1, 2, 3):
      yield from _norm(f"{block}.norm{n}", (*block_path, f"norm{n}"), inner)
    yield from _attention(f"{block}.attn1", (*block_path, "attn1"), inner, inner, inner, False)
    yield from _attention(f"{block}.attn2", (*block_path, "attn2"), inner,
                          config.cross_attention_dim, inner, False)
    yield from _dense(f"{block}.ff.net.0.proj", (*block_path, "ff_net_0_proj"), 8 * inner, inner)
    yield from _dense(f"{block}.ff.net.2", (*block_path, "ff_net_2"), inner, 4 * inner)
  yield from projection(f"{prefix}.proj_out", (*path, "proj_out"), channels, inner)


def unet_key_map(config: UNetConfig = UNetConfig()) -> dict[str, KeyRule]:
  """Every state_dict key of diffusers' `UNet2DConditionModel` for `config` and its rule."""
  c = config
  boc, temb = c.block_out_channels, c.time_embed_dim

  def transformer(prefix, width, level):
    return _transformer(prefix, width, c.num_attention_heads[level],
                        c.transformer_layers_per_block[level], c)

  def items():
    yield from _conv("conv_in", ("conv_in",), boc[0], c.in_channels, 3)
    yield from _dense("time_embedding.linear_1", ("time_embedding_linear_1",), temb, boc[0])
    yield from _dense("time_embedding.linear_2", ("time_embedding_linear_2",), temb, temb)
    in_dim = boc[0]
    for level, width in enumerate(boc):
      for j in range(c.layers_per_block[level]):
        yield from _resnet(f"down_blocks.{level}.resnets.{j}", in_dim if j == 0 else width,
                           width, temb)
        if c.down_has_attention(level):
          yield from transformer(f"down_blocks.{level}.attentions.{j}", width, level)
      if level < c.num_levels - 1:
        yield from _conv(f"down_blocks.{level}.downsamplers.0.conv",
                         (f"down_blocks_{level}_downsamplers_0", "conv"), width, width, 3)
      in_dim = width
    for j in (0, 1):
      yield from _resnet(f"mid_block.resnets.{j}", boc[-1], boc[-1], temb)
    yield from transformer("mid_block.attentions.0", boc[-1], c.num_levels - 1)
    reversed_boc = list(reversed(boc))
    out_dim = reversed_boc[0]
    for i in range(c.num_levels):  # diffusers' channel bookkeeping of the up path
      level = c.num_levels - 1 - i
      prev_out, out_dim = out_dim, reversed_boc[i]
      block_in = reversed_boc[min(i + 1, c.num_levels - 1)]
      num_layers = c.layers_per_block[level] + 1
      for j in range(num_layers):
        skip = block_in if j == num_layers - 1 else out_dim
        resnet_in = prev_out if j == 0 else out_dim
        yield from _resnet(f"up_blocks.{i}.resnets.{j}", resnet_in + skip, out_dim, temb)
        if c.up_has_attention(i):
          yield from transformer(f"up_blocks.{i}.attentions.{j}", out_dim, level)
      if i < c.num_levels - 1:
        yield from _conv(f"up_blocks.{i}.upsamplers.0.conv",
                         (f"up_blocks_{i}_upsamplers_0", "conv"), out_dim, out_dim, 3)
    yield from _norm("conv_norm_out", ("conv_norm_out",), boc[0])
    yield from _conv("conv_out", ("conv_out",), c.out_channels, boc[0], 3)

  return dict(items())


def _vae_mid_block(prefix: str, width: int) -> Rules:
  yield from _resnet(f"{prefix}.resnets.0", width, width, None)
  yield from _norm(f"{prefix}.attentions.0.group_norm",
                   (*_flax_name(f"{prefix}.attentions.0"), "group_norm"), width)
  yield from _attention(f"{prefix}.attentions.0", _flax_name(f"{prefix}.attentions.0"), width,
                        width, width, True)
  yield from _resnet(f"{prefix}.resnets.1", width, width, None)


def vae_key_map(config: VAEConfig = VAEConfig()) -> dict[str, KeyRule]:
  """Every state_dict key of diffusers' `AutoencoderKL` for `config` and its rule (the decoder's
  keys validated only)."""
  c = config
  boc, latent = c.block_out_channels, c.latent_channels

  def mid_block(prefix):
    rules = _vae_mid_block(prefix, boc[-1])
    if not c.mid_block_add_attention:
      rules = ((k, r) for k, r in rules if ".attentions." not in k)
    return rules

  def encoder():
    yield from _conv("encoder.conv_in", ("encoder_conv_in",), boc[0], c.in_channels, 3)
    in_dim = boc[0]
    for level, width in enumerate(boc):
      for j in range(c.layers_per_block):
        yield from _resnet(f"encoder.down_blocks.{level}.resnets.{j}",
                           in_dim if j == 0 else width, width, None)
      if level < len(boc) - 1:
        yield from _conv(f"encoder.down_blocks.{level}.downsamplers.0.conv",
                         (f"encoder_down_blocks_{level}_downsamplers_0", "conv"), width, width, 3)
      in_dim = width
    yield from mid_block("encoder.mid_block")
    yield from _norm("encoder.conv_norm_out", ("encoder_conv_norm_out",), boc[-1])
    yield from _conv("encoder.conv_out", ("encoder_conv_out",), 2 * latent, boc[-1], 3)
    if c.use_quant_conv:
      yield from _conv("quant_conv", ("quant_conv",), 2 * latent, 2 * latent, 1)

  def decoder():
    yield from _conv("decoder.conv_in", ("decoder",), boc[-1], latent, 3)
    yield from mid_block("decoder.mid_block")
    reversed_boc = list(reversed(boc))
    out_dim = reversed_boc[0]
    for i in range(len(boc)):
      prev_out, out_dim = out_dim, reversed_boc[i]
      for j in range(c.layers_per_block + 1):
        yield from _resnet(f"decoder.up_blocks.{i}.resnets.{j}", prev_out if j == 0 else out_dim,
                           out_dim, None)
      if i < len(boc) - 1:
        yield from _conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", ("decoder",), out_dim,
                         out_dim, 3)
    yield from _norm("decoder.conv_norm_out", ("decoder",), boc[0])
    yield from _conv("decoder.conv_out", ("decoder",), c.out_channels, boc[0], 3)
    if c.use_post_quant_conv:
      yield from _conv("post_quant_conv", ("decoder",), latent, latent, 1)

  return {**dict(encoder()), **dict(_validated_only(decoder()))}


def rename_deprecated_attention(tensors: dict[str, np.ndarray]) -> dict[str, str]:
  """In place: VAE mid-block attention keys of older diffusers -> current names. Returns
  {old: new}. Raises ConversionError if both names of one weight are present."""
  pattern = re.compile(r"^((?:en|de)coder\.mid_block\.attentions\.0)\.(query|key|value|proj_attn)"
                       r"\.(weight|bias)$")
  renames = {}
  for key in sorted(tensors):
    match = pattern.match(key)
    if match:
      new = f"{match.group(1)}.{_DEPRECATED_ATTENTION[match.group(2)]}.{match.group(3)}"
      if new in tensors:
        raise ConversionError(f"key {key!r}: both it and its current name {new!r} are present")
      renames[key] = new
  for old, new in renames.items():
    tensors[new] = tensors.pop(old)
  return renames


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], rules: Mapping[str, KeyRule],
                         abstract: Any, what: str) -> dict:
  """numpy tensors (torch names and layouts) -> the float32 params tree `abstract` describes.

  Raises:
    ConversionError: a missing, unexpected or mis-shaped key, or a non-float tensor (named).
  """
  common.check_keys(state_dict, rules, what)
  flat = {}
  for key, rule in rules.items():
    value = np.asarray(state_dict[key])
    if tuple(value.shape) != rule.shape:
      raise ConversionError(f"key {key!r}: shape {tuple(value.shape)}, expected {rule.shape}")
    if value.dtype.kind != "f":
      raise ConversionError(f"key {key!r}: expected a floating tensor, got {value.dtype}")
    flat.update(rule.to_flax(value.astype(np.float32)))
  params = common._nest({p[1:]: np.ascontiguousarray(v)  # pylint: disable=protected-access
                         for p, v in flat.items()})
  common.check_tree(params, abstract, f"converted {what} params")
  return params


def read_folder(folder: str) -> tuple[dict, dict[str, np.ndarray], dict[str, Any]]:
  """config.json + the weights of a save_pretrained folder -> (config.json dict, numpy tensors,
  source info: which weights file was read, its format, sha256s, each key's stored dtype)."""
  config_path = os.path.join(folder, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{folder}: no {CONFIG_FILE} (expected a diffusers save_pretrained "
                            f"folder)")
  with open(config_path) as f:
    hf_config = json.load(f)
  safetensors_path, bin_path = (os.path.join(folder, n) for n in (SAFETENSORS_FILE, BIN_FILE))
  if os.path.exists(safetensors_path):
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    tensors = safetensors_numpy.load_file(safetensors_path)
    dtypes = {k: str(v.dtype) for k, v in tensors.items()}
    weights, fmt = safetensors_path, "safetensors (safetensors.numpy, no torch)"
  elif os.path.exists(bin_path):
    tensors, dtypes = common.read_state_dict(bin_path)
    weights, fmt = bin_path, "torch .bin (torch.load weights_only=True)"
  else:
    present = sorted(os.listdir(folder))
    raise FileNotFoundError(f"{folder}: neither {SAFETENSORS_FILE} nor {BIN_FILE} (found "
                            f"{present}; sharded or variant files are not supported)")
  source = {"folder": os.path.abspath(folder), "weights_file": os.path.basename(weights),
            "weights_format": fmt,
            "also_present_not_read": [BIN_FILE] if weights == safetensors_path and
                                     os.path.exists(bin_path) else [],
            "sha256": {os.path.basename(p): common.file_sha256(p) for p in (config_path, weights)},
            "dtypes": dtypes}
  return hf_config, tensors, source


def _convert(folder: str, out_dir: str, config_from_hf: Callable, key_map: Callable,
             abstract: Callable, params_file: str, fmt: str, what: str) -> dict:
  hf_config, tensors, source = read_folder(folder)
  dtypes = source.pop("dtypes")
  renamed = rename_deprecated_attention(tensors) if fmt == VAE_FORMAT else {}
  for old, new in renamed.items():
    dtypes[new] = dtypes.pop(old)
  config = config_from_hf(hf_config)
  rules = key_map(config)
  params = state_dict_to_params(tensors, rules, abstract(config), what)
  params_path = common.write_msgpack_atomic(params, out_dir, params_file)
  manifest = {
      "format": fmt,
      "source": source,
      "config": config.to_dict(),
      "hf_config": hf_config,
      "tensors": {k: {"shape": list(v.shape), "dtype": dtypes[k]}
                  for k, v in sorted(tensors.items())},
      "renamed_keys": renamed,
      "validated_not_converted": sorted(k for k, r in rules.items()
                                        if r.to_flax is _not_converted),
      **common.params_file_entries(params, params_path, "params_file"),
  }
  run_info.write_json_atomic(os.path.join(out_dir, MANIFEST_FILE), manifest)
  return manifest


def convert_unet(folder: str, out_dir: str) -> dict:
  """Converts a diffusers `unet/` folder into `out_dir`; returns the manifest."""
  return _convert(folder, out_dir, UNetConfig.from_hf_config, unet_key_map,
                  uniskill_fdm.abstract_unet_params, UNET_PARAMS_FILE, UNET_FORMAT, "UNet")


def convert_vae(folder: str, out_dir: str) -> dict:
  """Converts a diffusers `vae/` folder (encoder + quant_conv) into `out_dir`; returns the
  manifest."""
  return _convert(folder, out_dir, VAEConfig.from_hf_config, vae_key_map,
                  uniskill_fdm.abstract_vae_params, VAE_PARAMS_FILE, VAE_FORMAT, "VAE")


def load_unet(out_dir: str) -> tuple[UNetConfig, dict]:
  """Reads `convert_unet`'s output -> (config, params numpy tree), strictly."""
  manifest, path, params = common.read_converted(out_dir, UNET_FORMAT, "params_file")
  config = UNetConfig.from_dict(manifest["config"])
  common.check_tree(params, uniskill_fdm.abstract_unet_params(config), f"UNet params in {path}")
  return config, params


def load_vae(out_dir: str) -> tuple[VAEConfig, dict]:
  """Reads `convert_vae`'s output -> (config, params numpy tree), strictly."""
  manifest, path, params = common.read_converted(out_dir, VAE_FORMAT, "params_file")
  config = VAEConfig.from_dict(manifest["config"])
  common.check_tree(params, uniskill_fdm.abstract_vae_params(config), f"VAE params in {path}")
  return config, params
