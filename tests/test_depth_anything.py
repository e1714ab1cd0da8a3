"""Depth-Anything-V2 in Flax against transformers' `DepthAnythingForDepthEstimation`.

The reference is transformers' own PyTorch model from a small config (4 blocks, width 32, 2x2
trained position grid) with random weights, saved with `save_pretrained` (config.json +
model.safetensors, the release's layout and key names), converted by `depth_anything_convert`
and compared in float32: outputs and input gradients (torch autograd).
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors import numpy as safetensors_numpy

from experiments import uniskill_torch_reference as reference
from hilam_jax.lam.uniskill import depth_anything as da
from hilam_jax.lam.uniskill import depth_anything_convert as convert
from hilam_jax.lam.uniskill.depth_anything import DepthConfig
from hilam_jax.lam.uniskill.convert import ConversionError

transformers = pytest.importorskip("transformers")
TOLERANCE = 1e-4  # max |flax - torch| / max |torch|


def tiny_hf_config():
  return reference.depth_anything_hf_config(tiny=True)


def randomize_(model, seed):
  """Every parameter random (layer scales and norm scales around 1), so each one matters."""
  return reference.randomize_parameters_(model, seed, matrix_scale=0.3, vector_scale=0.5)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  root = tmp_path_factory.mktemp("depth")
  model = randomize_(transformers.DepthAnythingForDepthEstimation(tiny_hf_config()), 0).eval()
  folder = str(root / "hf")
  model.save_pretrained(folder)
  manifest = convert.convert(folder, str(root / "converted"))
  config, params = convert.load(str(root / "converted"))
  return {"model": model, "folder": folder, "out_dir": str(root / "converted"),
          "manifest": manifest, "config": config, "params": params}


def relative_error(actual, expected):
  return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


def test_config_and_released_key_names(released):
  assert released["config"] == DepthConfig.tiny()
  with open(os.path.join(released["folder"], "model.safetensors"), "rb") as f:
    assert f.read(8)  # a safetensors header, not a pickle
  keys = set(released["manifest"]["tensors"])
  assert "backbone.encoder.layer.0.attention.attention.query.weight" in keys  # released names
  assert keys == set(convert.key_map(released["config"]))


@pytest.mark.parametrize("batch, height, width", [(1, 28, 28), (3, 42, 56), (2, 56, 42)])
def test_depth_matches_transformers(released, batch, height, width):
  """28x28 is the trained grid (position embeddings as stored); the others interpolate them."""
  pixels = np.random.default_rng(batch).normal(size=(batch, 3, height, width)).astype(np.float32)
  with torch.no_grad():
    expected = released["model"](pixel_values=torch.from_numpy(pixels)).predicted_depth.numpy()
  actual = da.predict_depth(released["params"], jnp.asarray(pixels.transpose(0, 2, 3, 1)),
                            config=released["config"])
  assert actual.shape == expected.shape == (batch, height, width)
  assert relative_error(actual, expected) < TOLERANCE


def test_input_gradients_match_torch_autograd(released):
  rng = np.random.default_rng(7)
  pixels = rng.normal(size=(3, 3, 42, 56)).astype(np.float32)
  weights = rng.normal(size=(3, 42, 56)).astype(np.float32)
  x = torch.from_numpy(pixels).requires_grad_(True)
  (released["model"](pixel_values=x).predicted_depth * torch.from_numpy(weights)).sum().backward()
  expected = x.grad.numpy().transpose(0, 2, 3, 1)

  def loss(p):
    return jnp.sum(da.predict_depth(released["params"], p, config=released["config"]) * weights)

  actual = jax.grad(loss)(jnp.asarray(pixels.transpose(0, 2, 3, 1)))
  assert np.abs(expected).max() > 0
  assert relative_error(actual, expected) < TOLERANCE


@pytest.mark.parametrize("in_size, out_size", [(2, 3), (2, 4), (5, 3), (37, 16), (7, 7)])
def test_resampling_matches_torch_interpolate(in_size, out_size):
  x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 2, in_size, in_size + 1))
                       .astype(np.float32))
  flax_x = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  size = (out_size, out_size + 2)
  for mode, align in (("bicubic", False), ("bilinear", False), ("bilinear", True)):
    expected = torch.nn.functional.interpolate(x, size=size, mode=mode, align_corners=align)
    if mode == "bicubic":
      actual = da.resize_2d(flax_x, da.cubic_matrix(in_size, size[0]),
                            da.cubic_matrix(in_size + 1, size[1]))
    else:
      actual = da.resize_bilinear(flax_x, size, align_corners=align)
    np.testing.assert_allclose(np.asarray(actual).transpose(0, 3, 1, 2), expected.numpy(),
                               atol=1e-5, err_msg=f"{mode} align_corners={align}")


def _write(folder, tensors, config_json):
  os.makedirs(folder, exist_ok=True)
  safetensors_numpy.save_file(tensors, os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config_json, f)


@pytest.mark.parametrize("case, key", [
    ("missing", "backbone.encoder.layer.2.layer_scale1.lambda1"),
    ("missing", "backbone.embeddings.mask_token"),
    ("unexpected", "backbone.encoder.layer.4.norm1.weight"),
    ("shape", "neck.reassemble_stage.layers.0.resize.weight"),
    ("integer", "head.conv3.bias")])
def test_converter_refuses_mismatched_weights(released, tmp_path, case, key):
  _, tensors, hf_config = convert.read_folder(released["folder"])
  if case == "missing":
    del tensors[key]
  elif case == "unexpected":
    tensors[key] = np.ones(32, np.float32)
  elif case == "shape":
    tensors[key] = tensors[key][:, :, :2]
  else:
    tensors[key] = tensors[key].astype(np.int32)
  _write(str(tmp_path / "bad"), tensors, hf_config)
  with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
    convert.convert(str(tmp_path / "bad"), str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out" / convert.MANIFEST_FILE)


@pytest.mark.parametrize("path, value", [(("backbone_config", "use_swiglu_ffn"), True),
                                         (("backbone_config", "hidden_act"), "gelu_new"),
                                         (("model_type",), "dpt")])
def test_unimplemented_options_are_refused(released, path, value):
  with open(os.path.join(released["folder"], "config.json")) as f:
    hf_config = json.load(f)
  (hf_config if len(path) == 1 else hf_config[path[0]])[path[-1]] = value
  with pytest.raises(ValueError, match=path[-1]):
    DepthConfig.from_hf_config(hf_config)


def test_manifest_and_a_changed_params_file(released, tmp_path):
  manifest = released["manifest"]
  sha = manifest["source"]["model.safetensors"]["sha256"]
  assert sha == convert.common.file_sha256(os.path.join(released["folder"], "model.safetensors"))
  assert manifest["config"] == DepthConfig.tiny().to_dict()
  assert manifest["num_parameters"] == sum(
      int(v.size) for v in jax.tree_util.tree_leaves(released["params"]))
  out = tmp_path / "copy"
  out.mkdir()
  for name in (convert.MANIFEST_FILE, convert.PARAMS_FILE):
    data = open(os.path.join(released["out_dir"], name), "rb").read()
    if name == convert.PARAMS_FILE:
      data = data[:-1] + bytes([data[-1] ^ 1])
    (out / name).write_bytes(data)
  with pytest.raises(ConversionError, match="sha256"):
    convert.load(str(out))


def _pil_processor():
  from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil  # pylint: disable=g-import-not-at-top
  return DPTImageProcessorPil(
      do_resize=True, size={"height": 518, "width": 518}, keep_aspect_ratio=True,
      ensure_multiple_of=14, do_rescale=False, do_normalize=True,
      image_mean=list(da.IMAGENET_MEAN), image_std=list(da.IMAGENET_STD), do_pad=False)


@pytest.mark.parametrize("height, width, expected_shape", [(224, 224, (518, 518)),
                                                           (96, 128, (392, 518))])
def test_preprocessing_matches_the_pil_dpt_processor(height, width, expected_shape):
  image = np.random.default_rng(height).random((height, width, 3)).astype(np.float32)
  expected = _pil_processor()(images=[image], return_tensors="np",
                              input_data_format="channels_last")["pixel_values"][0]
  expected = expected.transpose(1, 2, 0)
  actual = np.asarray(da.uniskill_depth_pixels(jnp.asarray(image[None])))[0]
  assert actual.shape == expected.shape == (*expected_shape, 3)
  levels = np.abs(actual - expected) * np.array(da.IMAGENET_STD) * 255  # in uint8 levels
  assert levels.max() < 1.01  # PIL's fixed-point weights: at most one level apart ...
  assert (levels > 0.01).mean() < 1e-3  # ... and rarely (measured ~5e-5)


def test_uniskill_depth_matches_the_torch_pipeline(released):
  """224 RGB -> DPT processor -> transformers model -> per-image min-max -> bilinear 224."""
  rgb = np.random.default_rng(3).random((2, 224, 224, 3)).astype(np.float32)
  pixels = _pil_processor()(images=list(rgb), return_tensors="pt",
                            input_data_format="channels_last")["pixel_values"]
  with torch.no_grad():
    depth = released["model"](pixel_values=pixels).predicted_depth  # [2, 518, 518]
  low = depth.amin(dim=(1, 2), keepdim=True)
  depth = (depth - low) / (depth.amax(dim=(1, 2), keepdim=True) - low)
  expected = torch.nn.functional.interpolate(depth[:, None], size=(224, 224), mode="bilinear",
                                             align_corners=False)[:, 0].numpy()
  actual = np.asarray(da.uniskill_depth(released["params"], jnp.asarray(rgb),
                                        config=released["config"]))
  assert actual.shape == (2, 224, 224) and actual.min() >= 0 and actual.max() <= 1
  # The two pipelines' inputs differ in ~5e-5 of the values by one uint8 level.
  assert np.abs(actual - expected).max() < 1e-2
  assert np.abs(actual - expected).mean() < 1e-4


def test_launch_script_converts_without_torch(released, tmp_path):
  """`convert_uniskill --depth` writes <out_dir>/depth, and neither converting nor loading imports
  torch (safetensors read as numpy)."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu")
  out_dir = str(tmp_path / "uniskill")
  code = ("import sys\n"
          "from absl import app\n"
          "from experiments import convert_uniskill\n"
          f"sys.argv = ['convert_uniskill', '--depth={released['folder']}', '--out_dir={out_dir}']\n"
          "try:\n  app.run(convert_uniskill.main)\n"
          "except SystemExit as e:\n  assert not e.code, e.code\n"
          "from hilam_jax.lam.uniskill import depth_anything_convert as c\n"
          f"c.load({os.path.join(out_dir, 'depth')!r})\n"
          "assert 'torch' not in sys.modules, 'torch was imported'\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=repo, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"depth: {len(released['manifest']['tensors'])} keys" in result.stdout
  with open(os.path.join(out_dir, "depth", convert.PARAMS_FILE), "rb") as f, open(
      os.path.join(released["out_dir"], convert.PARAMS_FILE), "rb") as g:
    assert f.read() == g.read()  # the script writes what the library writes
