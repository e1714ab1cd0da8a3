"""UniSkill's FDM in Flax against diffusers' PyTorch `UNet2DConditionModel` and `AutoencoderKL`.

The references are diffusers' own classes (diffusers 0.42.1, the `test` extra) built from small
configs with random weights, saved with `save_pretrained` (safetensors, and the
safe_serialization=False `.bin` variant), converted by `uniskill_fdm_convert` and compared in
float32 on random inputs. Relative error = max |flax - torch| / max |torch|. Measured
(2026-12-02, this machine): UNet 1.3e-6 (32 groups) and 1.3e-6 (16 groups), VAE encoder mean and
logvar 1.1e-6, bfloat16 compute vs float32 (VAE) 2.7e-2; `reconstruction_loss`'s z-gradient
against torch autograd of the same loss built from diffusers' pieces 8.1e-6.

`UniSkillDynamics` is also built end to end from a converted tiny directory (the IDM reference of
experiments/uniskill_torch_reference.py, the tiny Depth-Anything of tests/test_depth_anything.py).
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

from hilam_jax.lam import frozen_models
from hilam_jax.lam.uniskill import dynamics as uniskill_dynamics
from hilam_jax.lam.uniskill import fdm as uniskill_fdm
from hilam_jax.lam.uniskill import fdm_convert as convert
from hilam_jax.lam.uniskill.convert import ConversionError
from hilam_jax.lam.uniskill.idm import IDMConfig
from experiments import uniskill_torch_reference as reference
from tests.test_uniskill_idm import FAST_COMPILE, compiled

diffusers = pytest.importorskip("diffusers")
torch.set_num_threads(1)  # the references are tiny: one thread, no contention with XLA
TOLERANCE = 1e-4  # max |flax - torch| / max |torch|
IDM = IDMConfig.tiny()  # FDM token width 24: the tiny UNet's cross_attention_dim
FDM_RESOLUTION = 32  # the tiny VAE downsamples x2, the UNet x2: latents 16 x 16


UNET_APPLY = jax.jit(uniskill_fdm.unet_apply, static_argnames=("config", "dtype"))
VAE_MOMENTS = jax.jit(uniskill_fdm.vae_moments, static_argnames=("config", "dtype"))


def unet_kwargs(groups: int = 32) -> dict:
  return reference.unet_kwargs(IDM.out_dim, groups)


vae_kwargs = reference.vae_kwargs
randomize_ = reference.randomize_parameters_  # every parameter random, norm scales around 1


def relative_error(actual, expected) -> float:
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.abs(actual - expected).max() / np.abs(expected).max())


def nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


def nhwc(x):
  return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def fdm(tmp_path_factory):
  """Torch UNet (32 and 16 groups) and VAE, saved (safetensors and .bin) and converted."""
  root = tmp_path_factory.mktemp("fdm")
  torch.manual_seed(0)
  out = {"root": root}
  for name, model, serializations in (
      ("unet", randomize_(diffusers.UNet2DConditionModel(**unet_kwargs()), 0), (True, False)),
      ("unet16", randomize_(diffusers.UNet2DConditionModel(**unet_kwargs(16)), 1), (True,)),
      ("vae", randomize_(diffusers.AutoencoderKL(**vae_kwargs()), 2), (True, False))):
    out[name] = model
    for safe in serializations:
      folder = str(root / f"{name}_{'st' if safe else 'bin'}")
      model.save_pretrained(folder, safe_serialization=safe)
      conv, load = ((convert.convert_vae, convert.load_vae) if name == "vae"
                    else (convert.convert_unet, convert.load_unet))
      manifest = conv(folder, str(root / "converted" / os.path.basename(folder)))
      out[f"{name}_{'st' if safe else 'bin'}"] = {
          "folder": folder, "manifest": manifest, "out_dir": str(root / "converted" /
                                                                os.path.basename(folder)),
          "loaded": load(str(root / "converted" / os.path.basename(folder)))}
  return out


def test_both_weight_files_convert_to_the_same_params(fdm):
  for name in ("unet", "vae"):
    st, pt = fdm[f"{name}_st"], fdm[f"{name}_bin"]
    assert st["manifest"]["source"]["weights_file"] == convert.SAFETENSORS_FILE
    assert st["manifest"]["source"]["weights_format"].startswith("safetensors")
    assert pt["manifest"]["source"]["weights_file"] == convert.BIN_FILE
    assert "weights_only=True" in pt["manifest"]["source"]["weights_format"]
    assert st["manifest"]["params_sha256"] == pt["manifest"]["params_sha256"]
    assert st["loaded"][0] == pt["loaded"][0]
  assert fdm["unet_st"]["loaded"][0] == uniskill_fdm.UNetConfig.tiny()
  assert fdm["unet16_st"]["loaded"][0].norm_num_groups == 16


@pytest.mark.parametrize("name", ["unet", "unet16"])
def test_unet_matches_diffusers(fdm, name):
  config, params = fdm[f"{name}_st"]["loaded"]
  rng = np.random.default_rng(0)
  sample = rng.normal(size=(3, 8, 16, 16)).astype(np.float32)
  timesteps = np.array([0, 417, 999])
  context = rng.normal(size=(3, 1, IDM.out_dim)).astype(np.float32)
  with torch.no_grad():
    expected = fdm[name](torch.from_numpy(sample), torch.from_numpy(timesteps),
                         torch.from_numpy(context)).sample.numpy()
  args = (params, nhwc(sample), timesteps, context)
  actual = compiled(UNET_APPLY, *args, config=config)(*args)
  assert actual.shape == (3, 16, 16, 4) and actual.dtype == jnp.float32
  assert np.abs(expected).max() > 1.0
  assert relative_error(nchw(actual), expected) < TOLERANCE


def test_vae_encoder_matches_diffusers(fdm):
  config, params = fdm["vae_st"]["loaded"]
  images = np.random.default_rng(1).uniform(-1, 1, size=(2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    dist = fdm["vae"].encode(torch.from_numpy(images)).latent_dist
  mean, logvar = compiled(VAE_MOMENTS, params, nhwc(images), config=config)(params, nhwc(images))
  assert mean.shape == logvar.shape == (2, 16, 16, 4)
  assert relative_error(nchw(mean), dist.mean.numpy()) < TOLERANCE
  assert relative_error(nchw(logvar), dist.logvar.numpy()) < TOLERANCE
  assert config.scaling_factor == pytest.approx(0.18215)


@pytest.mark.parametrize("flip, shift, dim", [(True, 0, 32), (False, 1, 33)])
def test_timestep_embedding_matches_diffusers(flip, shift, dim):
  from diffusers.models.embeddings import get_timestep_embedding  # pylint: disable=g-import-not-at-top
  t = np.array([0, 1, 250, 999])
  expected = get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip,
                                    downscale_freq_shift=shift).numpy()
  actual = uniskill_fdm.timestep_embedding(jnp.asarray(t), dim, flip, shift)
  # sin / cos of float32 arguments up to 999: one ulp of the argument there is 6e-5.
  np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_bfloat16_compute_stays_close(fdm):
  """dtype=bfloat16 (float32 params) on the VAE encoder (the UNet shares its building blocks;
  the VAE compiles faster)."""
  config, params = fdm["vae_st"]["loaded"]
  images = nhwc(np.random.default_rng(1).uniform(-1, 1, size=(2, 3, 32, 32)).astype(np.float32))
  full, _ = compiled(VAE_MOMENTS, params, images, config=config)(params, images)
  half, _ = compiled(VAE_MOMENTS, params, images, config=config, dtype=jnp.bfloat16)(params,
                                                                                   images)
  assert half.dtype == jnp.float32
  assert 0 < relative_error(half, full) < 0.05  # bfloat16 does differ, but not by much


# ----------------------------------------------------------------------------- strictness


def _rewrite(folder, out_folder, edit):
  """Copies a safetensors save_pretrained folder with `edit(tensors)` applied."""
  tensors = safetensors_numpy.load_file(os.path.join(folder, convert.SAFETENSORS_FILE))
  edit(tensors)
  os.makedirs(out_folder, exist_ok=True)
  safetensors_numpy.save_file(tensors, os.path.join(out_folder, convert.SAFETENSORS_FILE))
  with open(os.path.join(folder, convert.CONFIG_FILE)) as f, open(
      os.path.join(out_folder, convert.CONFIG_FILE), "w") as g:
    g.write(f.read())


@pytest.mark.parametrize("part, case, key", [
    ("unet", "missing", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
    ("unet", "unexpected", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.bias"),
    ("unet", "shape", "up_blocks.1.resnets.1.conv_shortcut.weight"),
    ("unet", "integer", "time_embedding.linear_1.bias"),
    ("vae", "missing", "encoder.mid_block.attentions.0.group_norm.weight"),
    ("vae", "missing", "decoder.up_blocks.1.resnets.1.conv2.weight"),  # validated, not converted
    ("vae", "unexpected", "encoder.down_blocks.2.resnets.0.conv1.weight"),
    ("vae", "shape", "post_quant_conv.weight")])
def test_converter_refuses_mismatched_weights(fdm, tmp_path, part, case, key):
  def edit(tensors):
    if case == "missing":
      del tensors[key]
    elif case == "unexpected":
      tensors[key] = np.ones(8, np.float32)
    elif case == "shape":
      tensors[key] = tensors[key][:1]
    else:
      tensors[key] = tensors[key].astype(np.int32)

  _rewrite(fdm[f"{part}_st"]["folder"], str(tmp_path / "bad"), edit)
  conv = convert.convert_vae if part == "vae" else convert.convert_unet
  with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
    conv(str(tmp_path / "bad"), str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out" / convert.MANIFEST_FILE)


def test_vae_decoder_is_recorded_not_converted_and_old_attention_names_load(fdm, tmp_path):
  manifest = fdm["vae_st"]["manifest"]
  skipped = manifest["validated_not_converted"]
  assert skipped and all(k.startswith(("decoder.", "post_quant_conv.")) for k in skipped)
  assert set(skipped) == {k for k in manifest["tensors"] if k.startswith(("decoder.",
                                                                          "post_quant_conv."))}
  old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

  def rename(tensors):
    for key in [k for k in tensors if ".mid_block.attentions.0." in k]:
      for new, old in old_names.items():
        if f".attentions.0.{new}." in key:
          tensors[key.replace(f".{new}.", f".{old}.")] = tensors.pop(key)

  _rewrite(fdm["vae_st"]["folder"], str(tmp_path / "old"), rename)
  renamed = convert.convert_vae(str(tmp_path / "old"), str(tmp_path / "out"))
  assert len(renamed["renamed_keys"]) == 16  # 4 weights + 4 biases, encoder and decoder
  assert renamed["params_sha256"] == manifest["params_sha256"]


def test_unimplemented_unet_options_are_refused(fdm):
  with open(os.path.join(fdm["unet_st"]["folder"], convert.CONFIG_FILE)) as f:
    hf_config = json.load(f)
  for name, value in (("class_embed_type", "timestep"), ("addition_embed_type", "text"),
                      ("resnet_time_scale_shift", "scale_shift"),
                      ("down_block_types", ["SimpleCrossAttnDownBlock2D", "DownBlock2D"])):
    with pytest.raises(ValueError, match=name):
      uniskill_fdm.UNetConfig.from_hf_config({**hf_config, name: value})


# ----------------------------------------------------------------------------- the loss


@pytest.fixture(scope="module")
def converted_dir(fdm, tmp_path_factory):
  """A complete converted UniSkill directory of tiny random parts."""
  from tests import test_depth_anything  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("uniskill")
  idm = reference.make_reference(IDM, seed=3)
  reference.save_state_dict(idm, root / "idm.pth")
  test_depth_anything.randomize_(test_depth_anything.transformers.DepthAnythingForDepthEstimation(
      test_depth_anything.tiny_hf_config()), 4).save_pretrained(str(root / "depth_hf"))
  out = root / "converted"
  uniskill_dynamics.convert_release(
      str(out), idm=str(root / "idm.pth"), depth=str(root / "depth_hf"),
      unet=fdm["unet_st"]["folder"], vae=fdm["vae_bin"]["folder"], idm_config=IDM.to_dict(),
      dynamics={"fdm_resolution": FDM_RESOLUTION, "num_timestep_samples": 2, "frame_gap": 4})
  return {"dir": str(out), "idm": idm}


def _frames(seed, batch=2, size=IDM.image_size):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8) for _ in range(2)]


@pytest.fixture(scope="module")
def dynamics(converted_dir):
  return frozen_models.load_frozen_model(f"uniskill:{converted_dir['dir']}")


@pytest.fixture(scope="module")
def loss_and_grads(dynamics):
  """(params, frame_t, z, frame_tk, rng) -> (summed per-pair loss, (d/dparams, d/dz)), through
  the function reconstruction_loss runs, compiled once (FAST_COMPILE) for 2 pairs."""
  loss_fn = dynamics.per_sample_loss_fn()
  jitted = jax.jit(jax.value_and_grad(lambda p, ft, z, ftk, rng: loss_fn(p, ft, z, ftk, rng).sum(),
                                      argnums=(0, 2)))
  frame_t, frame_tk = _frames(0)
  z = jnp.zeros((2, dynamics.latent_dim))
  return compiled(jitted, dynamics.params, frame_t, z, frame_tk, jax.random.key(0))


def test_load_frozen_model_builds_uniskill_dynamics(dynamics, converted_dir):
  assert isinstance(dynamics, uniskill_dynamics.UniSkillDynamics)
  assert (dynamics.latent_dim, dynamics.frame_gap, dynamics.image_size) == (8, 4, (64, 64))
  assert dynamics.config.num_timestep_samples == 2
  frame_t, frame_tk = _frames(0)
  # Under the test's own jit only to compile with FAST_COMPILE (the method jits itself too).
  z = compiled(jax.jit(dynamics.encode), frame_t, frame_tk)(frame_t, frame_tk)
  assert z.shape == (2, 8) and np.isfinite(z).all()
  assert np.abs(np.asarray(z)[0] - np.asarray(z)[1]).max() > 1e-4  # depends on the frames
  fingerprint = frozen_models.frozen_model_fingerprint(f"uniskill:{converted_dir['dir']}")
  assert set(fingerprint["parts"]) == set(frozen_models.UNISKILL_PARTS)
  unet_manifest = json.load(open(os.path.join(converted_dir["dir"], "unet", "manifest.json")))
  assert fingerprint["parts"]["fdm_unet"]["source_sha256"] == unet_manifest["source"]["sha256"]
  assert fingerprint["parts"]["fdm_unet"]["params_sha256"] == unet_manifest["params_sha256"]
  assert fingerprint["dynamics"]["frame_gap"] == 4
  with pytest.raises(ValueError, match="step"):
    frozen_models.frozen_model_fingerprint(f"uniskill:{converted_dir['dir']}", step=1)


def test_reconstruction_loss_is_a_frozen_deterministic_function_of_z(dynamics, loss_and_grads):
  frame_t, frame_tk = _frames(1)
  z = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8)).astype(np.float32))
  rng = jax.random.key(7)
  loss, (param_grads, z_grad) = loss_and_grads(dynamics.params, frame_t, z, frame_tk, rng)
  assert np.isfinite(loss) and loss > 0
  assert np.isfinite(z_grad).all() and np.abs(z_grad).max() > 0
  assert set(param_grads) == {"idm", "depth", "unet", "vae"}
  assert all(not np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(param_grads))
  again, (_, z_grad_again) = loss_and_grads(dynamics.params, frame_t, z, frame_tk, rng)
  assert float(again) == float(loss)
  np.testing.assert_array_equal(z_grad_again, z_grad)
  other, _ = loss_and_grads(dynamics.params, frame_t, z, frame_tk, jax.random.key(8))
  assert float(other) != float(loss)
  # The public method runs the same function (under the test's jit only to compile faster).
  public = compiled(jax.jit(lambda ft, z, ftk, rng: dynamics.reconstruction_loss(
      ft, z, ftk, rng=rng, per_sample=True)), frame_t, z, frame_tk, rng)
  per_sample = public(frame_t, z, frame_tk, rng)
  assert per_sample.shape == (2,)
  assert float(per_sample.sum()) == pytest.approx(float(loss), rel=1e-5)


def test_reconstruction_loss_and_z_gradient_match_torch(dynamics, loss_and_grads, fdm,
                                                        converted_dir):
  """The same loss in PyTorch from diffusers' UNet / VAE / DDPMScheduler and the reference IDM's
  latent head, at the draws (timesteps, noise, VAE sample noise) `dynamics` makes for an rng."""
  frame_t, frame_tk = _frames(2)
  z = np.random.default_rng(2).normal(size=(2, 8)).astype(np.float32)
  rng = jax.random.key(3)
  draws = {k: np.array(v) for k, v in dynamics.draws(rng, 2).items()}
  assert draws["timesteps"].shape == (2, 2)  # num_timestep_samples 2 (dynamics.json)
  loss, (_, grad) = loss_and_grads(dynamics.params, frame_t, jnp.asarray(z), frame_tk, rng)

  idm, unet, vae = converted_dir["idm"], fdm["unet"], fdm["vae"]
  scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085,
                                      beta_end=0.012, beta_schedule="scaled_linear")
  z_t = torch.from_numpy(z).requires_grad_(True)
  token = idm.latent_proj(idm.latent_norm(z_t))[:, None]  # [B, 1, E]

  def pixels(frames):
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(FDM_RESOLUTION,) * 2, mode="bilinear",
                                        align_corners=False)
    return x * 2.0 - 1.0

  with torch.no_grad():
    condition = vae.encode(pixels(frame_t)).latent_dist.mean
    dist = vae.encode(pixels(frame_tk)).latent_dist
    x0 = (dist.mean + dist.std * torch.from_numpy(nchw(draws["latent_noise"])))
    x0 = x0 * vae.config.scaling_factor
  total = 0.0
  for k in range(draws["timesteps"].shape[0]):
    t = torch.from_numpy(draws["timesteps"][k]).long()
    noise = torch.from_numpy(nchw(draws["noise"][k]))
    noisy = scheduler.add_noise(x0, noise, t)
    prediction = unet(torch.cat([noisy, condition], dim=1), t, token).sample
    total = total + ((prediction - noise) ** 2).mean(dim=(1, 2, 3))
  expected_loss = (total / draws["timesteps"].shape[0]).sum()
  expected_loss.backward()
  assert float(loss) == pytest.approx(expected_loss.item(), rel=TOLERANCE)
  assert np.abs(z_t.grad.numpy()).max() > 0
  assert relative_error(grad, z_t.grad.numpy()) < TOLERANCE


def test_launch_script_converts_unet_and_vae(fdm, tmp_path):
  """`convert_uniskill --unet --vae` writes <out_dir>/unet and <out_dir>/vae and says which
  weights file it read. In a subprocess: launch scripts define absl flags at import, and another
  script's --out_dir in the same test process would clash."""
  out_dir = str(tmp_path / "uniskill")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, "-m", "experiments.convert_uniskill", f"--unet={fdm['unet_bin']['folder']}",
       f"--vae={fdm['vae_st']['folder']}", f"--out_dir={out_dir}"],
      cwd=repo, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  printed = result.stdout
  assert f"unet: read {convert.BIN_FILE} (torch .bin" in printed
  assert f"vae: read {convert.SAFETENSORS_FILE} (safetensors" in printed
  assert frozen_models.missing_uniskill_parts(out_dir).keys() == {"idm", "depth"}
  for part, library in (("unet", fdm["unet_bin"]), ("vae", fdm["vae_st"])):
    with open(os.path.join(out_dir, part, convert.MANIFEST_FILE)) as f:
      assert json.load(f)["params_sha256"] == library["manifest"]["params_sha256"]


@pytest.mark.parametrize("schedule", [{}, {"beta_schedule": "linear", "beta_start": 1e-4,
                                           "beta_end": 0.02, "num_train_timesteps": 500}])
def test_noise_schedule_matches_ddpm_scheduler(schedule):
  expected = diffusers.DDPMScheduler(**schedule).alphas_cumprod.numpy()
  ours = uniskill_dynamics.NoiseSchedule.from_scheduler_config(
      {**diffusers.DDPMScheduler(**schedule).config}).alphas_cumprod()
  np.testing.assert_allclose(ours, expected, rtol=1e-5)


def test_dynamics_config_files(tmp_path):
  assert uniskill_dynamics.load_dynamics_config(str(tmp_path)) == uniskill_dynamics.DynamicsConfig()
  (tmp_path / "scheduler").mkdir()
  diffusers.DDPMScheduler(num_train_timesteps=500, prediction_type="v_prediction").save_config(
      str(tmp_path / "scheduler"))
  config = uniskill_dynamics.load_dynamics_config(str(tmp_path))
  assert (config.schedule.num_train_timesteps, config.schedule.prediction_type) == (
      500, "v_prediction")
  (tmp_path / uniskill_dynamics.DYNAMICS_FILE).write_text(json.dumps({"loss_weighting": "snr"}))
  with pytest.raises(ValueError, match="loss_weighting"):
    uniskill_dynamics.load_dynamics_config(str(tmp_path))
  (tmp_path / uniskill_dynamics.DYNAMICS_FILE).write_text(json.dumps({"num_timesteps": 2}))
  with pytest.raises(ValueError, match="num_timesteps"):
    uniskill_dynamics.load_dynamics_config(str(tmp_path))
  config = uniskill_dynamics.DynamicsConfig(loss_weighting="min_snr")
  assert uniskill_dynamics.DynamicsConfig.from_dict(json.loads(json.dumps(config.to_dict()))) \
      == config


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_diffusers_training_scripts(prediction_type):
  from diffusers.training_utils import compute_snr  # pylint: disable=g-import-not-at-top
  scheduler = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                      beta_end=0.012, prediction_type=prediction_type)
  timesteps = np.array([[0, 10, 500], [900, 999, 250]])
  snr = compute_snr(scheduler, torch.from_numpy(timesteps.reshape(-1))).numpy()
  expected = np.minimum(snr, 5.0) / (snr if prediction_type == "epsilon" else snr + 1)
  config = uniskill_dynamics.DynamicsConfig(
      loss_weighting="min_snr", schedule=uniskill_dynamics.NoiseSchedule(
          prediction_type=prediction_type))
  weights = uniskill_dynamics.timestep_weights(config, jnp.asarray(timesteps))
  np.testing.assert_allclose(weights, expected.reshape(timesteps.shape), rtol=1e-4)
  assert np.asarray(weights).min() < 0.5  # the weighting matters at these timesteps
  np.testing.assert_array_equal(uniskill_dynamics.timestep_weights(
      uniskill_dynamics.DynamicsConfig(), jnp.asarray(timesteps)), np.ones((2, 3)))


def test_full_size_key_maps_match_diffusers():
  """The released sizes (SD-1.x InstructPix2Pix UNet, SD VAE), built on torch's meta device (no
  memory, no compute): our default configs are what their config.json gives, and the key maps
  hold exactly diffusers' keys and shapes (UNet 686 keys, 859,532,484 parameters)."""
  with torch.device("meta"):
    unet = diffusers.UNet2DConditionModel(in_channels=8, cross_attention_dim=768)
    vae = diffusers.AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                  down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4)
  unet_config = uniskill_fdm.UNetConfig.from_hf_config(dict(unet.config))
  vae_config = uniskill_fdm.VAEConfig.from_hf_config(dict(vae.config))
  assert unet_config == uniskill_fdm.UNetConfig() and vae_config == uniskill_fdm.VAEConfig()
  for model, rules in ((unet, convert.unet_key_map(unet_config)),
                       (vae, convert.vae_key_map(vae_config))):
    assert {k: r.shape for k, r in rules.items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()}
  assert len(convert.unet_key_map(unet_config)) == 686
  assert uniskill_fdm.num_parameters(uniskill_fdm.abstract_unet_params(unet_config)) == sum(
      p.numel() for p in unet.parameters()) == 859_532_484
  assert uniskill_fdm.num_parameters(uniskill_fdm.abstract_vae_params(vae_config)) == sum(
      p.numel() for n, p in vae.named_parameters() if n.startswith(("encoder.", "quant_conv.")))


def test_random_release_converts_into_a_loadable_directory(tmp_path):
  """write_random_release writes every part in its released format; convert_release turns them
  into the directory `uniskill:<dir>` loads, whose encode gives finite skill latents."""
  release = reference.write_random_release(str(tmp_path / "release"), size="tiny")
  assert release["idm"].endswith(".pth")
  for part in ("depth", "unet", "vae"):
    assert os.path.exists(os.path.join(release[part], "config.json")), part
  out = str(tmp_path / "converted")
  manifests = uniskill_dynamics.convert_release(
      out, **{k: release[k] for k in ("idm", "depth", "unet", "vae", "idm_config", "dynamics")})
  assert sorted(manifests) == ["depth", "idm", "unet", "vae"]
  model = frozen_models.load_frozen_model(f"uniskill:{out}")
  assert model.config.fdm_resolution == release["dynamics"]["fdm_resolution"]
  z = np.asarray(model.encode(*_frames(0, size=model.image_size[0])))
  assert z.shape == (2, IDM.skill_dim) and np.isfinite(z).all()


def test_convert_release_refuses_nothing_and_unknown_dynamics_fields(tmp_path):
  with pytest.raises(ValueError, match="nothing to convert"):
    uniskill_dynamics.convert_release(str(tmp_path / "a"))
  with pytest.raises((ValueError, TypeError), match="no_such_field"):
    uniskill_dynamics.convert_release(str(tmp_path / "b"), idm="idm.pth",
                                      dynamics={"no_such_field": 1})
  assert not os.path.exists(tmp_path / "b")
