"""Strict, pickle-free conversion of UniSkill's released IDM (`idm.pth`) to Flax variables.

`convert_idm(idm_path, out_dir)` reads the PyTorch state_dict with
`torch.load(path, weights_only=True, map_location="cpu")` (torch's restricted unpickler: tensors
and plain containers only, never arbitrary objects), maps every key to the `UniSkillIDM`
variables and writes

  <out_dir>/idm_variables.msgpack  {"params", "batch_stats"} (flax.serialization msgpack)
  <out_dir>/manifest.json          source sha256, every source key's shape and dtype, the config,
                                   the output file's sha256, package versions

`load_idm(out_dir)` reads them back (checking the sha256 and every shape). torch is imported only
inside `read_state_dict`, so loading converted weights never needs it.

The map (`idm_key_map`) is exhaustive and strict: a key missing from the file, a key the map does
not know, a shape that differs from what the config implies, or a non-float tensor is a
`ConversionError` that names the key. Per key:
  Conv2d weight [O, I, kh, kw]      -> kernel [kh, kw, I, O]
  Linear weight [out, in]           -> kernel [in, out]
  LayerNorm / BatchNorm weight      -> scale (BatchNorm's in "params")
  BatchNorm running_mean / _var     -> "batch_stats" mean / var
  BatchNorm num_batches_tracked     -> validated (an integer scalar >= 0), recorded in the
                                       manifest, not converted: it only sets torch's momentum in
                                       training mode and has no effect in inference
  MultiheadAttention in_proj [3D, D] -> query / key / value kernels [D, heads, D/heads] (rows
                                       [q; k; v], heads contiguous), biases [heads, D/heads]
  out_proj weight [D, D]            -> out kernel [heads, D/heads, D]

Why msgpack and not orbax: the converted weights are one immutable artifact read whole (80 MB,
replicated), not a training checkpoint. A single file gets one sha256 in the manifest, loads
with `flax.serialization.msgpack_restore` into plain numpy without orbax's directory layout or
async machinery, and is checked against `uniskill_idm.abstract_variables` just as strictly.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
from flax import serialization

from data_pipeline import run_info
from hilam_jax.lam.uniskill import idm as uniskill_idm
from hilam_jax.training import checkpoint
from hilam_jax.lam.uniskill.idm import IDMConfig

VARIABLES_FILE = "idm_variables.msgpack"
MANIFEST_FILE = "manifest.json"
FORMAT = "hilam_jax.uniskill_idm/1"
_MAX_LISTED = 20  # keys listed in one error message

FlaxPath = tuple[str, ...]  # (collection, module, ..., leaf)


class ConversionError(ValueError):
  """The state_dict does not match the IDM the config describes; the message names the keys."""


@dataclasses.dataclass(frozen=True)
class KeyRule:
  """How one state_dict key becomes Flax leaves.

  Attributes:
    shape: the torch shape the config implies.
    to_flax: torch-layout array -> {flax path: array}; empty for validated-only keys.
    integer: the key holds an integer counter (num_batches_tracked), not a float tensor.
  """
  shape: tuple[int, ...]
  to_flax: Callable[[np.ndarray], dict[FlaxPath, np.ndarray]]
  integer: bool = False


def _leaf(path: FlaxPath, transform=lambda a: a):
  return lambda a: {path: transform(a)}


def _linear(torch_name: str, flax_path: FlaxPath, out_dim: int, in_dim: int):
  yield f"{torch_name}.weight", KeyRule((out_dim, in_dim),
                                        _leaf(("params", *flax_path, "kernel"), np.transpose))
  yield f"{torch_name}.bias", KeyRule((out_dim,), _leaf(("params", *flax_path, "bias")))


def _layer_norm(torch_name: str, flax_path: FlaxPath, dim: int):
  yield f"{torch_name}.weight", KeyRule((dim,), _leaf(("params", *flax_path, "scale")))
  yield f"{torch_name}.bias", KeyRule((dim,), _leaf(("params", *flax_path, "bias")))


def _conv(torch_name: str, flax_path: FlaxPath, out_dim: int, in_dim: int, size: int):
  oihw_to_hwio = lambda a: a.transpose(2, 3, 1, 0)
  yield f"{torch_name}.weight", KeyRule((out_dim, in_dim, size, size),
                                        _leaf(("params", *flax_path, "kernel"), oihw_to_hwio))


def _batch_norm(torch_name: str, flax_path: FlaxPath, dim: int):
  yield from _layer_norm(torch_name, flax_path, dim)
  yield f"{torch_name}.running_mean", KeyRule((dim,), _leaf(("batch_stats", *flax_path, "mean")))
  yield f"{torch_name}.running_var", KeyRule((dim,), _leaf(("batch_stats", *flax_path, "var")))
  yield f"{torch_name}.num_batches_tracked", KeyRule((), lambda a: {}, integer=True)


def _attention(torch_name: str, flax_path: FlaxPath, dim: int, heads: int):
  head_dim = dim // heads
  names = ("query", "key", "value")

  def in_weight(a):  # [3D, D] = [Wq; Wk; Wv], each [out, in] -> kernels [D, heads, head_dim]
    return {("params", *flax_path, n, "kernel"): w.T.reshape(dim, heads, head_dim)
            for n, w in zip(names, np.split(a, 3))}

  def in_bias(a):
    return {("params", *flax_path, n, "bias"): b.reshape(heads, head_dim)
            for n, b in zip(names, np.split(a, 3))}

  yield f"{torch_name}.in_proj_weight", KeyRule((3 * dim, dim), in_weight)
  yield f"{torch_name}.in_proj_bias", KeyRule((3 * dim,), in_bias)
  yield f"{torch_name}.out_proj.weight", KeyRule(
      (dim, dim), _leaf(("params", *flax_path, "out", "kernel"),
                        lambda a: a.T.reshape(heads, head_dim, dim)))
  yield f"{torch_name}.out_proj.bias", KeyRule((dim,), _leaf(("params", *flax_path, "out", "bias")))


def _resnet(config: IDMConfig) -> Iterator[tuple[str, KeyRule]]:
  """visual_encoder.{0: conv1, 1: bn1, 4..7: layer1..4} (2: relu, 3: maxpool hold nothing)."""
  widths = config.resnet_widths
  yield from _conv("visual_encoder.0", ("visual_encoder", "conv1"), widths[0], 3, 7)
  yield from _batch_norm("visual_encoder.1", ("visual_encoder", "bn1"), widths[0])
  in_width = widths[0]
  for stage, width in enumerate(widths):
    for j in range(2):
      torch_name = f"visual_encoder.{4 + stage}.{j}"
      flax_path = ("visual_encoder", f"layer{stage + 1}_{j}")
      block_in = in_width if j == 0 else width
      yield from _conv(f"{torch_name}.conv1", (*flax_path, "conv1"), width, block_in, 3)
      yield from _batch_norm(f"{torch_name}.bn1", (*flax_path, "bn1"), width)
      yield from _conv(f"{torch_name}.conv2", (*flax_path, "conv2"), width, width, 3)
      yield from _batch_norm(f"{torch_name}.bn2", (*flax_path, "bn2"), width)
      if j == 0 and stage > 0:
        yield from _conv(f"{torch_name}.downsample.0", (*flax_path, "downsample_conv"), width,
                         block_in, 1)
        yield from _batch_norm(f"{torch_name}.downsample.1", (*flax_path, "downsample_bn"), width)
    in_width = width


def idm_key_map(config: IDMConfig = IDMConfig()) -> dict[str, KeyRule]:
  """Every state_dict key of UniSkill's IDM for `config` (288 for the release) and its rule."""
  c = config
  d, patch_dim, fused = c.hidden_dim, c.patch_size ** 2, c.hidden_dim + c.resnet_widths[-1]

  def items():
    yield "pos_embed_spatial", KeyRule((1, 1, c.num_tokens, d),
                                       _leaf(("params", "pos_embed_spatial")))
    yield "pos_embed_temporal", KeyRule((1, c.num_frames, 1, d),
                                        _leaf(("params", "pos_embed_temporal")))
    # depth_proj.0 is UniSkill's einops Rearrange (no weights).
    yield from _layer_norm("depth_proj.1", ("depth_proj", "norm_in"), patch_dim)
    yield from _linear("depth_proj.2", ("depth_proj", "dense"), d, patch_dim)
    yield from _layer_norm("depth_proj.3", ("depth_proj", "norm_out"), d)
    yield from _resnet(c)
    yield from _layer_norm("modal_proj.0", ("modal_proj", "norm_in"), fused)
    yield from _linear("modal_proj.1", ("modal_proj", "dense"), d, fused)
    yield from _layer_norm("modal_proj.2", ("modal_proj", "norm_out"), d)
    for i in range(c.num_layers):
      torch_name, flax_path = f"transformer.layers.{i}", ("transformer", f"layers_{i}")
      for norm in ("norm1", "norm2", "norm3"):
        yield from _layer_norm(f"{torch_name}.{norm}", (*flax_path, norm), d)
      for attn in ("spatial_attn", "temporal_attn"):
        yield from _attention(f"{torch_name}.{attn}.multihead_attn", (*flax_path, attn), d,
                              c.num_heads)
      yield from _linear(f"{torch_name}.mlp.fc1", (*flax_path, "fc1"), c.mlp_ratio * d, d)
      yield from _linear(f"{torch_name}.mlp.fc2", (*flax_path, "fc2"), d, c.mlp_ratio * d)
    yield from _linear("proj", ("proj",), d, d)
    yield from _layer_norm("skill_norm", ("skill_norm",), d)
    yield from _linear("skill_proj", ("skill_proj",), c.skill_dim, d)
    yield from _layer_norm("latent_norm", ("latent_norm",), c.skill_dim)
    yield from _linear("latent_proj", ("latent_proj",), c.out_dim, c.skill_dim)

  return dict(items())


def _listed(keys) -> str:
  keys = sorted(keys)
  more = f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
  return ", ".join(repr(k) for k in keys[:_MAX_LISTED]) + more


def _nest(flat: Mapping[FlaxPath, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree


def check_tree(tree: Any, expected_tree: Any, what: str) -> None:
  """Strict: `tree` has exactly the paths and leaf shapes of `expected_tree` (ShapeDtypeStructs).

  Raises:
    ConversionError: "<what>: missing ...; unexpected ...; shape mismatch ..." (names the paths).
  """
  expected = {jax.tree_util.keystr(p): tuple(v.shape) for p, v in
              jax.tree_util.tree_leaves_with_path(expected_tree)}
  actual = {jax.tree_util.keystr(p): tuple(np.shape(v)) for p, v in
            jax.tree_util.tree_leaves_with_path(tree)}
  problems = []
  if set(expected) - set(actual):
    problems.append(f"missing {_listed(set(expected) - set(actual))}")
  if set(actual) - set(expected):
    problems.append(f"unexpected {_listed(set(actual) - set(expected))}")
  mismatched = [f"{k}: {actual[k]} vs expected {expected[k]}"
                for k in sorted(set(expected) & set(actual)) if expected[k] != actual[k]]
  if mismatched:
    problems.append("shape mismatch " + "; ".join(mismatched[:_MAX_LISTED]))
  if problems:
    raise ConversionError(f"{what}: " + "; ".join(problems))


def check_keys(state_dict: Mapping[str, Any], rules: Mapping[str, KeyRule], what: str) -> None:
  """Raises a ConversionError naming every key of `rules` not in `state_dict` and vice versa."""
  missing, unexpected = set(rules) - set(state_dict), set(state_dict) - set(rules)
  if missing or unexpected:
    parts = ([f"missing key(s) {_listed(missing)}"] if missing else []) + (
        [f"unexpected key(s) {_listed(unexpected)}"] if unexpected else [])
    raise ConversionError(f"{what} does not match the config: " + "; ".join(parts))


def check_variables(variables: Any, config: IDMConfig, what: str) -> None:
  """Strict: `variables` has exactly the tree and shapes `UniSkillIDM(config)` initialises."""
  check_tree(variables, uniskill_idm.abstract_variables(config),
             f"{what} do not match the UniSkillIDM config")


def state_dict_to_variables(state_dict: Mapping[str, np.ndarray],
                            config: IDMConfig = IDMConfig()) -> dict:
  """numpy state_dict (torch layouts) -> {"params", "batch_stats"} float32 numpy tree.

  Raises:
    ConversionError: a missing, unexpected or mis-shaped key, a float key holding integers or
      vice versa, or a negative num_batches_tracked; the message names the key(s).
  """
  rules = idm_key_map(config)
  check_keys(state_dict, rules, "IDM state_dict")
  flat: dict[FlaxPath, np.ndarray] = {}
  for key, rule in rules.items():
    value = np.asarray(state_dict[key])
    if tuple(value.shape) != rule.shape:
      raise ConversionError(f"key {key!r}: shape {tuple(value.shape)}, expected {rule.shape}")
    if rule.integer:
      if value.dtype.kind not in "iu" or int(value) < 0:
        raise ConversionError(f"key {key!r}: expected a non-negative integer counter, got "
                              f"{value.dtype} {value}")
    elif value.dtype.kind != "f":
      raise ConversionError(f"key {key!r}: expected a floating tensor, got {value.dtype}")
    flat.update(rule.to_flax(value.astype(np.float32)))
  variables = _nest({p: np.ascontiguousarray(v) for p, v in flat.items()})
  check_variables(variables, config, "converted variables")
  return variables


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Loads a torch state_dict with the restricted (weights-only) unpickler.

  torch is imported here and only here. Returns (numpy arrays, each key's torch dtype name);
  float16/bfloat16 tensors are read as float32 (the dtype names record what the file held).
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading the PyTorch checkpoint {path} needs torch: "
                      'pip install -e ".[convert]" (or any torch>=2.3)') from e

  state_dict = torch.load(path, weights_only=True, map_location="cpu")
  if not isinstance(state_dict, Mapping) or not all(
      isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
    raise ConversionError(f"{path}: expected a state_dict (str -> Tensor), got "
                          f"{type(state_dict).__name__}")
  arrays = {k: (v.float() if v.is_floating_point() else v).numpy()
            for k, v in state_dict.items()}
  return arrays, {k: str(v.dtype).removeprefix("torch.") for k, v in state_dict.items()}


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def write_msgpack_atomic(tree: Any, out_dir: str, name: str) -> str:
  """Writes `tree` (flax msgpack) to <out_dir>/<name> through a temporary file; returns the path."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, name)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(serialization.msgpack_serialize(tree))
  os.replace(tmp, path)
  return path


def convert_idm(idm_path: str, out_dir: str, config: IDMConfig = IDMConfig()) -> dict:
  """Converts `idm_path` (UniSkill's idm.pth) into `out_dir`; returns the manifest.

  Raises:
    ConversionError: the file does not hold exactly the IDM `config` describes (names the key).
  """
  state_dict, dtypes = read_state_dict(idm_path)
  variables = state_dict_to_variables(state_dict, config)
  variables_path = write_msgpack_atomic(variables, out_dir, VARIABLES_FILE)
  manifest = {
      "format": FORMAT,
      "source": {"path": os.path.abspath(idm_path), "sha256": file_sha256(idm_path),
                 "bytes": os.path.getsize(idm_path)},
      "config": config.to_dict(),
      "state_dict": {k: {"shape": list(state_dict[k].shape), "dtype": dtypes[k]}
                     for k in sorted(state_dict)},
      "num_batches_tracked": {k: int(v) for k, v in sorted(state_dict.items())
                              if k.endswith("num_batches_tracked")},
      "num_parameters": uniskill_idm.num_parameters(variables),
      "variables_file": VARIABLES_FILE,
      "variables_file_sha256": file_sha256(variables_path),
      "variables_sha256": checkpoint.params_sha256(variables),
      "versions": run_info.package_versions(run_info.PACKAGES + ("msgpack",)),
      "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  run_info.write_json_atomic(os.path.join(out_dir, MANIFEST_FILE), manifest)
  return manifest


def load_idm(out_dir: str) -> tuple[IDMConfig, dict]:
  """Reads `convert_idm`'s output -> (config, {"params", "batch_stats"} numpy tree).

  Raises:
    ConversionError: the variables file's sha256 differs from the manifest's, or its tree or
      shapes differ from the config's.
  """
  manifest, path, variables = read_converted(out_dir, FORMAT, "variables_file")
  config = IDMConfig.from_dict(manifest["config"])
  check_variables(variables, config, f"variables in {path}")
  return config, variables


def params_file_entries(params: Any, params_path: str, file_key: str) -> dict[str, Any]:
  """The manifest entries of a converted params file: the parameter count, `<file_key>` (its
  name) and `<file_key>_sha256`, the params' content sha256, package versions (incl. msgpack and
  safetensors) and the time."""
  return {
      "num_parameters": int(sum(np.size(v) for v in jax.tree_util.tree_leaves(params))),
      file_key: os.path.basename(params_path),
      f"{file_key}_sha256": file_sha256(params_path),
      "params_sha256": checkpoint.params_sha256(params),
      "versions": run_info.package_versions(run_info.PACKAGES + ("msgpack", "safetensors")),
      "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def read_converted(out_dir: str, fmt: str, file_key: str) -> tuple[dict, str, Any]:
  """Reads a converter's manifest.json (its "format" must be `fmt`) and the msgpack tree it names
  under `file_key`, whose sha256 must be the manifest's `<file_key>_sha256`.

  Returns (manifest, tree path, numpy tree). Raises ConversionError otherwise.
  """
  with open(os.path.join(out_dir, MANIFEST_FILE)) as f:
    manifest = json.load(f)
  if manifest.get("format") != fmt:
    raise ConversionError(f"{out_dir}: manifest format {manifest.get('format')!r}, "
                          f"expected {fmt!r}")
  path = os.path.join(out_dir, manifest[file_key])
  if file_sha256(path) != manifest[f"{file_key}_sha256"]:
    raise ConversionError(f"{path}: sha256 differs from the manifest's (file changed?)")
  with open(path, "rb") as f:
    return manifest, path, serialization.msgpack_restore(f.read())
