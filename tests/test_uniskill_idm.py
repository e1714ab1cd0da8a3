"""UniSkill's IDM in Flax against a PyTorch reference written from ../shared/UNISKILL.md.

The reference (experiments/uniskill_torch_reference.py) has random weights and random BatchNorm
statistics and is saved as the release is (`torch.save(model.state_dict())`); the converter
reads that file. Relative errors are max|flax - torch| / max|torch| per output (per parameter
leaf for gradients). `-m slow` runs the same parity check at full size (20M parameters, 224 px).
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hilam_jax.lam.uniskill import convert as uniskill_convert
from hilam_jax.lam.uniskill import idm as uniskill_idm
from hilam_jax.lam.uniskill.idm import IDMConfig
from experiments import uniskill_torch_reference as reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = IDMConfig.tiny()
# XLA's CPU backend optimisation dominates these tests: 6-20 s per compile of the tiny model on
# the shared 2-core machine, under 2 s without it (values agree to float32 rounding). The slow
# full-size test compiles normally.
FAST_COMPILE = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None

# The 288 keys exactly as UNISKILL.md lists them (brace patterns, expanded below).
RELEASE_KEY_PATTERNS = """
pos_embed_spatial  pos_embed_temporal
depth_proj.{1,2,3}.{weight,bias}
visual_encoder.0.weight  visual_encoder.1.{weight,bias,running_mean,running_var,num_batches_tracked}
visual_encoder.{4,5,6,7}.{0,1}.{conv1,conv2}.weight
visual_encoder.{4,5,6,7}.{0,1}.{bn1,bn2}.{weight,bias,running_mean,running_var,num_batches_tracked}
visual_encoder.{5,6,7}.0.downsample.0.weight
visual_encoder.{5,6,7}.0.downsample.1.{weight,bias,running_mean,running_var,num_batches_tracked}
modal_proj.{0,1,2}.{weight,bias}
transformer.layers.{L}.norm{1,2,3}.{weight,bias}
transformer.layers.{L}.{spatial,temporal}_attn.multihead_attn.{in_proj_weight,in_proj_bias}
transformer.layers.{L}.{spatial,temporal}_attn.multihead_attn.out_proj.{weight,bias}
transformer.layers.{L}.mlp.{fc1,fc2}.{weight,bias}
{proj,skill_norm,skill_proj,latent_norm,latent_proj}.{weight,bias}
""".replace("{L}", "{0,1,2,3,4,5,6,7}")
RELEASE_SHAPES = {
    "pos_embed_spatial": (1, 1, 196, 256), "pos_embed_temporal": (1, 2, 1, 256),
    "depth_proj.1.weight": (256,), "depth_proj.2.weight": (256, 256),
    "depth_proj.3.bias": (256,), "visual_encoder.0.weight": (64, 3, 7, 7),
    "visual_encoder.7.0.downsample.0.weight": (512, 256, 1, 1),
    "modal_proj.0.weight": (768,), "modal_proj.1.weight": (256, 768),
    "transformer.layers.5.spatial_attn.multihead_attn.in_proj_weight": (768, 256),
    "transformer.layers.5.temporal_attn.multihead_attn.in_proj_bias": (768,),
    "transformer.layers.5.temporal_attn.multihead_attn.out_proj.weight": (256, 256),
    "transformer.layers.7.mlp.fc1.weight": (1024, 256),
    "transformer.layers.7.mlp.fc2.weight": (256, 1024),
    "skill_proj.weight": (64, 256), "latent_norm.weight": (64,), "latent_proj.weight": (768, 64),
}


def expand_braces(pattern: str) -> list[str]:
  match = re.search(r"\{([^{}]*)\}", pattern)
  if match is None:
    return [pattern]
  return [key for option in match.group(1).split(",")
          for key in expand_braces(pattern[:match.start()] + option + pattern[match.end():])]


_COMPILED = {}


def compiled(jitted, *args, **static):
  """`jitted` lowered for `args` (and its static keyword arguments), compiled with FAST_COMPILE
  (cached per function, static arguments and argument shapes): call it with `args`-like arrays."""
  shapes = tuple((x.shape, str(x.dtype)) for x in jax.tree_util.tree_leaves(args))
  key = (jitted, tuple(sorted(static.items(), key=str)), jax.tree_util.tree_structure(args), shapes)
  if key not in _COMPILED:
    _COMPILED[key] = jitted.lower(*args, **static).compile(compiler_options=FAST_COMPILE)
  return _COMPILED[key]


def relative_error(actual, expected) -> float:
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.abs(actual - expected).max() / np.abs(expected).max())


def random_inputs(config: IDMConfig, batch_size: int, seed: int):
  """RGB [B, T, H, W, 3] in [0, 1] and depth [B, T, H, W] on an arbitrary scale, float32."""
  rng = np.random.default_rng(seed)
  frames = (batch_size, config.num_frames, config.image_size, config.image_size)
  return (rng.uniform(size=(*frames, 3)).astype(np.float32),
          rng.uniform(0.3, 4.0, size=frames).astype(np.float32))


def torch_outputs(model, rgb, depth):
  """(skill [B, Z], fdm token [B, 1, E]) from the reference, inputs in our layout."""
  rgb_t, depth_t = torch.from_numpy(rgb).permute(0, 1, 4, 2, 3), torch.from_numpy(depth)
  with torch.no_grad():
    skill = model(depth_t, rgb_t, return_skill=True)[:, 0]
    token = model(depth_t, rgb_t)
  return skill.numpy(), token.numpy()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """The tiny reference, its saved state_dict and its conversion."""
  root = tmp_path_factory.mktemp("uniskill")
  model = reference.make_reference(TINY, seed=0)
  idm_path = str(root / "idm.pth")
  reference.save_state_dict(model, idm_path)
  out_dir = str(root / "converted")
  manifest = uniskill_convert.convert_idm(idm_path, out_dir, TINY)
  return {"model": model, "idm_path": idm_path, "out_dir": out_dir, "manifest": manifest}


def test_reference_has_the_released_keys_shapes_and_parameter_count():
  release = [k for line in RELEASE_KEY_PATTERNS.split() for k in expand_braces(line)]
  assert len(release) == len(set(release)) == 288
  model = reference.ReferenceIDM(IDMConfig())  # full size, no forward pass
  state_dict = model.state_dict()
  assert sorted(state_dict) == sorted(release)
  assert sum(p.numel() for p in model.parameters()) == 20_053_248
  for key, shape in RELEASE_SHAPES.items():
    assert tuple(state_dict[key].shape) == shape, key
  rules = uniskill_convert.idm_key_map(IDMConfig())
  assert {k: r.shape for k, r in rules.items()} == {k: tuple(v.shape)
                                                    for k, v in state_dict.items()}
  flax_variables = uniskill_idm.abstract_variables(IDMConfig())
  assert uniskill_idm.num_parameters(flax_variables) == 20_053_248
  assert set(flax_variables) == {"params", "batch_stats"}


@pytest.mark.parametrize("batch_size", [1, 3])
def test_converted_idm_matches_torch(converted, batch_size):
  config, variables = uniskill_convert.load_idm(converted["out_dir"])
  assert config == TINY
  rgb, depth = random_inputs(TINY, batch_size, seed=batch_size)
  skill, token = torch_outputs(converted["model"], rgb, depth)
  idm_skill = compiled(uniskill_idm.idm_skill, variables, rgb, depth, config=TINY)
  flax_skill = idm_skill(variables, rgb, depth)
  flax_token = compiled(uniskill_idm.idm_fdm_token, variables, rgb, depth, config=TINY)(
      variables, rgb, depth)
  assert flax_skill.shape == (batch_size, TINY.skill_dim) and flax_skill.dtype == jnp.float32
  assert flax_token.shape == (batch_size, 1, TINY.out_dim)
  # The issue asks for 1e-4; the tiny model agrees to ~5e-7, and two of the details parity
  # depends on stay under 1e-4 here (tanh GELU: 6e-5, LayerNorm eps 1e-6: 2e-5), so hold it
  # to 5e-6.
  assert relative_error(flax_skill, skill) <= 5e-6
  assert relative_error(flax_token, token) <= 5e-6
  token_of_skill = compiled(uniskill_idm.fdm_token_from_skill, variables, flax_skill,
                            config=TINY)(variables, flax_skill)
  np.testing.assert_allclose(token_of_skill, flax_token, rtol=1e-6, atol=1e-6)
  # The inputs matter: the second frame's pixels and depth both move the latent.
  moved_rgb, moved_depth = rgb.copy(), depth.copy()
  moved_rgb[:, 1, :8] = 1.0 - moved_rgb[:, 1, :8]
  moved_depth[:, 1, :, :8] *= 3.0
  for r, d in ((moved_rgb, depth), (rgb, moved_depth)):
    assert relative_error(idm_skill(variables, r, d), skill) > 1e-3


def test_gradients_match_torch_autograd(converted):
  """d(loss)/d(rgb, depth, every parameter) of loss = <skill, a> + <token, b>."""
  model = converted["model"]
  _, variables = uniskill_convert.load_idm(converted["out_dir"])
  rgb, depth = random_inputs(TINY, 2, seed=7)
  rng = np.random.default_rng(8)
  a = rng.normal(size=(2, TINY.skill_dim)).astype(np.float32)
  b = rng.normal(size=(2, 1, TINY.out_dim)).astype(np.float32)

  model.zero_grad()
  rgb_t = torch.from_numpy(rgb).permute(0, 1, 4, 2, 3).clone().requires_grad_()
  depth_t = torch.from_numpy(depth).clone().requires_grad_()
  loss = ((model(depth_t, rgb_t, return_skill=True)[:, 0] * torch.from_numpy(a)).sum()
          + (model(depth_t, rgb_t) * torch.from_numpy(b)).sum())
  loss.backward()
  # Conversion is linear per key (transposes, reshapes, splits), so torch's parameter gradients
  # convert exactly like the parameters do.
  torch_grads = {n: p.grad.numpy() for n, p in model.named_parameters()}
  torch_grads.update({n: t.numpy() for n, t in model.named_buffers()})
  torch_param_grads = uniskill_convert.state_dict_to_variables(torch_grads, TINY)["params"]

  module = uniskill_idm.UniSkillIDM(TINY)

  def flax_loss(params, rgb, depth):
    out = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, rgb, depth)
    return jnp.sum(out.skill * a) + jnp.sum(out.fdm_token * b)

  value, (g_params, g_rgb, g_depth) = compiled(
      jax.jit(jax.value_and_grad(flax_loss, (0, 1, 2))), variables["params"], rgb, depth)(
          variables["params"], rgb, depth)
  assert abs(float(value) - loss.item()) <= 1e-4 * abs(loss.item())
  assert relative_error(g_rgb, rgb_t.grad.permute(0, 1, 3, 4, 2).numpy()) <= 1e-4
  assert relative_error(g_depth, depth_t.grad.numpy()) <= 1e-4
  flat_torch = {jax.tree_util.keystr(p): g
                for p, g in jax.tree_util.tree_leaves_with_path(torch_param_grads)}
  flat_flax = {jax.tree_util.keystr(p): g
               for p, g in jax.tree_util.tree_leaves_with_path(g_params)}
  assert sorted(flat_flax) == sorted(flat_torch)
  scale = max(np.abs(g).max() for g in flat_torch.values())
  errors = {}
  for path, g in flat_flax.items():
    if path.endswith("['key']['bias']"):
      # Softmax ignores a constant shift of a query's logits: the true gradient is exactly 0.
      assert np.abs(g).max() <= 1e-6 * scale and np.abs(flat_torch[path]).max() <= 1e-6 * scale
    else:
      errors[path] = relative_error(g, flat_torch[path])
  assert max(errors.values()) <= 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:3]
  # The frozen entry points pass no gradient to the parameters.
  frozen_loss = lambda v: jnp.sum(uniskill_idm.idm_skill(v, rgb, depth, config=TINY))
  frozen = compiled(jax.jit(jax.grad(frozen_loss)), variables)(variables)
  assert all(not np.any(g) for g in jax.tree_util.tree_leaves(frozen))


def _state_dict(model):
  return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("case, key", [
    ("missing", "transformer.layers.1.temporal_attn.multihead_attn.in_proj_bias"),
    ("missing", "visual_encoder.5.0.downsample.1.num_batches_tracked"),
    ("unexpected", "transformer.layers.2.norm1.weight"),
    ("unexpected", "module.proj.weight"),
    ("mis-shaped", "visual_encoder.6.1.conv2.weight"),
    ("mis-shaped", "pos_embed_temporal"),
    ("non-integer counter", "visual_encoder.1.num_batches_tracked"),
])
def test_converter_refuses_mismatched_state_dicts(converted, tmp_path, case, key):
  state_dict = _state_dict(converted["model"])
  if case == "missing":
    del state_dict[key]
  elif case == "unexpected":
    state_dict[key] = torch.ones(TINY.hidden_dim)
  elif case == "mis-shaped":
    state_dict[key] = state_dict[key][..., :-1].clone()
  else:
    state_dict[key] = state_dict[key].float()
  path = str(tmp_path / "idm.pth")
  torch.save(state_dict, path)
  with pytest.raises(uniskill_convert.ConversionError, match=re.escape(repr(key))):
    uniskill_convert.convert_idm(path, str(tmp_path / "out"), TINY)
  assert not os.path.exists(tmp_path / "out")  # nothing written


def test_converter_refuses_a_config_that_does_not_fit(converted, tmp_path):
  wider = IDMConfig(**{**TINY.to_dict(), "resnet_widths": (8, 16, 24, 40)})
  with pytest.raises(uniskill_convert.ConversionError, match="'visual_encoder.7.0.conv1.weight'"):
    uniskill_convert.convert_idm(converted["idm_path"], str(tmp_path / "out"), wider)


def test_manifest_describes_the_conversion(converted):
  manifest, state_dict = converted["manifest"], converted["model"].state_dict()
  with open(os.path.join(converted["out_dir"], "manifest.json")) as f:
    assert json.load(f) == manifest
  with open(converted["idm_path"], "rb") as f:
    assert manifest["source"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
  assert manifest["source"]["bytes"] == os.path.getsize(converted["idm_path"])
  assert manifest["state_dict"] == {
      k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
      for k, v in state_dict.items()}
  assert {v["dtype"] for v in manifest["state_dict"].values()} == {"float32", "int64"}
  assert manifest["num_batches_tracked"] == {k: int(v) for k, v in state_dict.items()
                                             if k.endswith("num_batches_tracked")}
  assert len(manifest["num_batches_tracked"]) == 20
  assert manifest["num_parameters"] == sum(p.numel() for p in converted["model"].parameters())
  assert IDMConfig.from_dict(manifest["config"]) == TINY
  for package in ("torch", "jax", "flax", "numpy"):
    assert manifest["versions"][package]
  variables_path = os.path.join(converted["out_dir"], manifest["variables_file"])
  with open(variables_path, "rb") as f:
    assert manifest["variables_file_sha256"] == hashlib.sha256(f.read()).hexdigest()


def test_load_refuses_a_changed_variables_file(converted, tmp_path):
  out_dir = tmp_path / "copy"
  out_dir.mkdir()
  for name in ("manifest.json", "idm_variables.msgpack"):
    (out_dir / name).write_bytes(open(os.path.join(converted["out_dir"], name), "rb").read())
  data = bytearray((out_dir / "idm_variables.msgpack").read_bytes())
  data[-1] ^= 1
  (out_dir / "idm_variables.msgpack").write_bytes(bytes(data))
  with pytest.raises(uniskill_convert.ConversionError, match="sha256"):
    uniskill_convert.load_idm(str(out_dir))


def _primitive_dtypes(jaxpr, names):
  """Input dtypes of every `names` primitive in a (closed) jaxpr, sub-jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in names:
      found.append({str(v.aval.dtype) for v in eqn.invars})
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          found += _primitive_dtypes(sub.jaxpr, names)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          found += _primitive_dtypes(sub, names)
  return found


def test_bfloat16_compute_is_finite_and_close_to_float32(converted):
  _, variables = uniskill_convert.load_idm(converted["out_dir"])
  rgb, depth = random_inputs(TINY, 3, seed=11)
  f32 = compiled(uniskill_idm.idm_fdm_token, variables, rgb, depth, config=TINY)(
      variables, rgb, depth)
  bf16 = compiled(uniskill_idm.idm_fdm_token, variables, rgb, depth, config=TINY,
                  dtype=jnp.bfloat16)(variables, rgb, depth)
  assert bf16.dtype == jnp.float32 and np.all(np.isfinite(bf16))
  error = relative_error(bf16, f32)
  assert 0 < error <= 0.05, error
  jaxpr = jax.make_jaxpr(lambda v, r, d: uniskill_idm.idm_fdm_token(
      v, r, d, config=TINY, dtype=jnp.bfloat16))(variables, rgb, depth)
  operand_dtypes = _primitive_dtypes(jaxpr.jaxpr, ("dot_general", "conv_general_dilated"))
  # 20 convs; 2 contractions of the bilinear upsampling; per block 2 x (q, k, v, out, logits,
  # weighted sum) + 2 MLP matmuls; 5 projections (depth, modal, proj, skill, latent).
  assert len(operand_dtypes) == 20 + 2 + 14 * TINY.num_layers + 5
  # All in bfloat16 but the attention's weighted sum of values: its softmax weights stay float32.
  mixed = [d for d in operand_dtypes if d != {"bfloat16"}]
  assert mixed == [{"float32", "bfloat16"}] * (2 * TINY.num_layers), operand_dtypes


def test_inputs_of_the_wrong_size_are_refused(converted):
  _, variables = uniskill_convert.load_idm(converted["out_dir"])
  rgb, depth = random_inputs(IDMConfig(**{**TINY.to_dict(), "image_size": 96}), 1, seed=0)
  with pytest.raises(ValueError, match="rgb: expected"):
    uniskill_idm.idm_skill(variables, rgb, depth, config=TINY)
  rgb, depth = random_inputs(TINY, 2, seed=0)
  with pytest.raises(ValueError, match="depth: expected"):
    uniskill_idm.idm_skill(variables, rgb, depth[:1], config=TINY)


def test_launch_script_converts_and_loading_never_imports_torch(converted, tmp_path):
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  out_dir = str(tmp_path / "out")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.convert_uniskill", f"--idm={converted['idm_path']}",
       f"--out_dir={out_dir}", f"--idm_config={json.dumps(TINY.to_dict())}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "180 keys" in proc.stdout
  script = (
      "import sys\n"
      "from hilam_jax.lam.uniskill import convert as uniskill_convert\n"
      "from hilam_jax.lam.uniskill import idm as uniskill_idm\n"
      f"config, variables = uniskill_convert.load_idm({os.path.join(out_dir, 'idm')!r})\n"
      "print(uniskill_idm.num_parameters(variables))\n"
      "assert 'torch' not in sys.modules, 'torch was imported'\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split()[-1] == str(converted["manifest"]["num_parameters"])
  with open(os.path.join(out_dir, "idm", "idm_variables.msgpack"), "rb") as f, open(
      os.path.join(converted["out_dir"], "idm_variables.msgpack"), "rb") as g:
    assert f.read() == g.read()  # the script writes what the library writes


def _torch_input_gradients(model, rgb, depth, dtype):
  """d(sum of skill)/d(rgb, depth) from the reference in `dtype`, in our layout, float64."""
  rgb_t = torch.from_numpy(rgb).to(dtype).permute(0, 1, 4, 2, 3).clone().requires_grad_()
  depth_t = torch.from_numpy(depth).to(dtype).clone().requires_grad_()
  model.to(dtype)(depth_t, rgb_t, return_skill=True).sum().backward()
  model.float()
  return (rgb_t.grad.permute(0, 1, 3, 4, 2).double().numpy(), depth_t.grad.double().numpy())


@pytest.mark.slow
@pytest.mark.manual
def test_full_size_idm_matches_torch(tmp_path):
  """The released size (20M parameters, 224 px), random weights: values and input gradients.

  Run: python -m pytest -q -s -m slow tests/test_uniskill_idm.py. The RGB gradient crosses 17
  ReLU convs and a max pool; float32 rounding flips a few ReLU / max-pool decisions, so both
  float32 implementations differ from float64 at a few pixels (measured: torch float32 vs
  float64 5.7e-3, ours vs torch float32 7.3e-4 max-relative). For it the test asks that ours is
  no further from float64 than torch's float32 is.
  """
  config = IDMConfig()
  start = time.perf_counter()
  model = reference.make_reference(config, seed=1)
  path = str(tmp_path / "idm.pth")
  reference.save_state_dict(model, path)
  manifest = uniskill_convert.convert_idm(path, str(tmp_path / "out"), config)
  assert len(manifest["state_dict"]) == 288 and manifest["num_parameters"] == 20_053_248
  _, variables = uniskill_convert.load_idm(str(tmp_path / "out"))
  rgb, depth = random_inputs(config, 3, seed=2)
  skill, token = torch_outputs(model, rgb, depth)
  grads = jax.jit(jax.grad(lambda r, d: jnp.sum(uniskill_idm.idm_skill(
      variables, r, d, config=config)), (0, 1)))(rgb, depth)
  torch32 = _torch_input_gradients(model, rgb, depth, torch.float32)
  torch64 = _torch_input_gradients(model, rgb, depth, torch.float64)
  errors = {
      "skill": relative_error(uniskill_idm.idm_skill(variables, rgb, depth, config=config), skill),
      "token": relative_error(uniskill_idm.idm_fdm_token(variables, rgb, depth, config=config),
                              token),
      "grad_depth": relative_error(grads[1], torch32[1]),
      "grad_rgb": relative_error(grads[0], torch32[0]),
      "grad_rgb_vs_float64": relative_error(grads[0], torch64[0]),
      "torch_float32_grad_rgb_vs_float64": relative_error(torch32[0], torch64[0]),
      "grad_rgb_vs_float64_l2": float(np.linalg.norm(grads[0] - torch64[0])
                                      / np.linalg.norm(torch64[0])),
  }
  print(f"full-size IDM: {errors}, {time.perf_counter() - start:.1f} s")
  assert max(errors["skill"], errors["token"], errors["grad_depth"]) <= 1e-4, errors
  assert errors["grad_rgb_vs_float64"] <= 1.5 * errors["torch_float32_grad_rgb_vs_float64"]
  assert errors["grad_rgb_vs_float64_l2"] <= 1e-3, errors
