"""Strict, pickle-free conversion of a Depth-Anything(-V2) folder to `DepthAnything` params.

The folder is what transformers' `save_pretrained` writes and the Hub release holds
(`depth-anything/Depth-Anything-V2-Small-hf`): `config.json` + `model.safetensors`. The tensors
are read with `safetensors.numpy` (no torch, no pickle); key names are the released ones
(`backbone.encoder.layer.0.attention.attention.query.weight`, ...; transformers 5.x renames them
to q_proj/... only in memory and writes the released names back).

`convert(folder, out_dir)` writes

  <out_dir>/depth_params.msgpack  the params tree (flax.serialization msgpack)
  <out_dir>/manifest.json         source sha256s, every key's shape and dtype, the config, the
                                  output's sha256, package versions

and `load(out_dir)` reads them back (sha256 and every shape checked). For UniSkill the folder is
`<converted dir>/depth` (`frozen_models.UNISKILL_PARTS`).

Per key: Conv2d weight [O, I, kh, kw] -> kernel [kh, kw, I, O]; ConvTranspose2d weight
[I, O, f, f] -> kernel [I, f, f, O]; Linear weight [out, in] -> kernel [in, out]; LayerNorm
weight -> scale; layer_scale{1,2}.lambda1 -> layer_scale{1,2}. Two groups are validated (shape,
float) and recorded in the manifest but not converted, because the forward never reads them:
`embeddings.mask_token` (masked-image pre-training only) and
`neck.fusion_stage.layers.0.residual_layer1.*` (the coarsest fusion layer has no residual input). A missing, unexpected
or mis-shaped key, or a non-float tensor, is a `ConversionError` naming it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Mapping

import numpy as np

from data_pipeline import run_info
from hilam_jax.lam.uniskill import depth_anything
from hilam_jax.lam.uniskill import convert as common
from hilam_jax.lam.uniskill.depth_anything import DepthConfig
from hilam_jax.lam.uniskill.convert import ConversionError, KeyRule

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PARAMS_FILE = "depth_params.msgpack"
MANIFEST_FILE = "manifest.json"
FORMAT = "hilam_jax.depth_anything/1"
# The IDM converter's key rules and helpers (one definition).
_leaf, _linear, _layer_norm, _conv_weight, _nest = (  # pylint: disable=protected-access
    common._leaf, common._linear, common._layer_norm, common._conv, common._nest)


def _conv(torch_name: str, flax_path: tuple[str, ...], out_dim: int, in_dim: int, size: int,
          bias: bool = True) -> Iterator[tuple[str, KeyRule]]:
  yield from _conv_weight(torch_name, flax_path, out_dim, in_dim, size)
  if bias:
    yield f"{torch_name}.bias", KeyRule((out_dim,), _leaf(("params", *flax_path, "bias")))


def _transposed_conv(torch_name: str, flax_path: tuple[str, ...], dim: int, factor: int):
  yield f"{torch_name}.weight", KeyRule(
      (dim, dim, factor, factor),
      _leaf(("params", *flax_path, "kernel"), lambda a: a.transpose(0, 2, 3, 1)))
  yield f"{torch_name}.bias", KeyRule((dim,), _leaf(("params", *flax_path, "bias")))


def key_map(config: DepthConfig = DepthConfig()) -> dict[str, KeyRule]:
  """Every released key of `DepthAnythingForDepthEstimation` for `config` and its rule."""
  c = config
  d, f, p = c.hidden_size, c.fusion_hidden_size, c.patch_size
  leaf = _leaf

  def items():
    e, ef = "backbone.embeddings", ("backbone", "embeddings")
    yield f"{e}.cls_token", KeyRule((1, 1, d), leaf(("params", *ef, "cls_token")))
    yield f"{e}.mask_token", KeyRule((1, d), lambda a: {})
    yield f"{e}.position_embeddings", KeyRule((1, 1 + c.position_grid ** 2, d),
                                              leaf(("params", *ef, "position_embeddings")))
    yield from _conv(f"{e}.patch_embeddings.projection", (*ef, "patch_embeddings"), d, 3, p)
    for i in range(c.num_layers):
      t, fl = f"backbone.encoder.layer.{i}", ("backbone", f"layer_{i}")
      yield from _layer_norm(f"{t}.norm1", (*fl, "norm1"), d)
      yield from _layer_norm(f"{t}.norm2", (*fl, "norm2"), d)
      for name in ("query", "key", "value"):
        yield from _linear(f"{t}.attention.attention.{name}", (*fl, "attention", name),
                                  d, d)
      yield from _linear(f"{t}.attention.output.dense", (*fl, "attention", "output"), d, d)
      yield from _linear(f"{t}.mlp.fc1", (*fl, "fc1"), c.mlp_ratio * d, d)
      yield from _linear(f"{t}.mlp.fc2", (*fl, "fc2"), d, c.mlp_ratio * d)
      for j in (1, 2):
        yield f"{t}.layer_scale{j}.lambda1", KeyRule((d,), leaf(("params", *fl,
                                                                 f"layer_scale{j}")))
    yield from _layer_norm("backbone.layernorm", ("backbone", "layernorm"), d)
    for i, (channels, factor) in enumerate(zip(c.neck_hidden_sizes, c.reassemble_factors)):
      t, fl = f"neck.reassemble_stage.layers.{i}", ("neck", f"reassemble_stage_{i}")
      yield from _conv(f"{t}.projection", (*fl, "projection"), channels, d, 1)
      if factor > 1:
        yield from _transposed_conv(f"{t}.resize", (*fl, "resize"), channels, int(factor))
      elif factor < 1:
        yield from _conv(f"{t}.resize", (*fl, "resize"), channels, channels, 3)
      yield from _conv(f"neck.convs.{i}", ("neck", f"convs_{i}"), f, channels, 3, bias=False)
      t, fl = f"neck.fusion_stage.layers.{i}", ("neck", f"fusion_stage_{i}")
      yield from _conv(f"{t}.projection", (*fl, "projection"), f, f, 1)
      for unit in ("residual_layer1", "residual_layer2"):
        for conv in ("convolution1", "convolution2"):
          for key, rule in _conv(f"{t}.{unit}.{conv}", (*fl, unit, conv), f, f, 3):
            if i == 0 and unit == "residual_layer1":  # the coarsest map has no residual input:
              rule = KeyRule(rule.shape, lambda a: {})  # unused by the forward, validated only
            yield key, rule
    yield from _conv("head.conv1", ("head", "conv1"), f // 2, f, 3)
    yield from _conv("head.conv2", ("head", "conv2"), c.head_hidden_size, f // 2, 3)
    yield from _conv("head.conv3", ("head", "conv3"), 1, c.head_hidden_size, 1)

  return dict(items())


def check_params(params: Any, config: DepthConfig, what: str) -> None:
  """Strict: `params` has exactly the tree and shapes `DepthAnything(config)` initialises."""
  common.check_tree(params, depth_anything.abstract_params(config),
                    f"{what} do not match the DepthAnything config")


def state_dict_to_params(state_dict: Mapping[str, np.ndarray],
                         config: DepthConfig = DepthConfig()) -> dict:
  """numpy tensors (released names, torch layouts) -> the float32 params tree.

  Raises:
    ConversionError: a missing, unexpected or mis-shaped key, or a non-float tensor (named).
  """
  rules = key_map(config)
  common.check_keys(state_dict, rules, "Depth-Anything weights")
  flat = {}
  for key, rule in rules.items():
    value = np.asarray(state_dict[key])
    if tuple(value.shape) != rule.shape:
      raise ConversionError(f"key {key!r}: shape {tuple(value.shape)}, expected {rule.shape}")
    if value.dtype.kind != "f" and value.dtype.name != "bfloat16":
      raise ConversionError(f"key {key!r}: expected a floating tensor, got {value.dtype}")
    flat.update(rule.to_flax(value.astype(np.float32)))
  params = _nest({p[1:]: np.ascontiguousarray(v) for p, v in flat.items()})
  check_params(params, config, "converted params")
  return params


def read_folder(folder: str) -> tuple[DepthConfig, dict[str, np.ndarray], dict]:
  """config.json + model.safetensors -> (config, numpy tensors, config.json dict). No torch."""
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  for name in (CONFIG_FILE, WEIGHTS_FILE):
    if not os.path.exists(os.path.join(folder, name)):
      raise FileNotFoundError(f"{folder}: no {name} (expected a save_pretrained folder with "
                              f"{CONFIG_FILE} and {WEIGHTS_FILE})")
  with open(os.path.join(folder, CONFIG_FILE)) as f:
    hf_config = json.load(f)
  tensors = safetensors_numpy.load_file(os.path.join(folder, WEIGHTS_FILE))
  return DepthConfig.from_hf_config(hf_config), tensors, hf_config


def convert(folder: str, out_dir: str) -> dict:
  """Converts a Depth-Anything folder into `out_dir`; returns the manifest."""
  config, tensors, _ = read_folder(folder)
  params = state_dict_to_params(tensors, config)
  params_path = common.write_msgpack_atomic(params, out_dir, PARAMS_FILE)
  sources = {name: {"path": os.path.abspath(os.path.join(folder, name)),
                    "sha256": common.file_sha256(os.path.join(folder, name))}
             for name in (CONFIG_FILE, WEIGHTS_FILE)}
  manifest = {
      "format": FORMAT,
      "source": sources,
      "config": config.to_dict(),
      "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                  for k, v in sorted(tensors.items())},
      **common.params_file_entries(params, params_path, "params_file"),
  }
  run_info.write_json_atomic(os.path.join(out_dir, MANIFEST_FILE), manifest)
  return manifest


def load(out_dir: str) -> tuple[DepthConfig, dict]:
  """Reads `convert`'s output -> (config, params numpy tree), strictly."""
  manifest, path, params = common.read_converted(out_dir, FORMAT, "params_file")
  config = DepthConfig.from_dict(manifest["config"])
  check_params(params, config, f"params in {path}")
  return config, params
