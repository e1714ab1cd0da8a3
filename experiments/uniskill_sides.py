"""The two sides of UniSkill labeling that `benchmark_uniskill.py` and `device_check.py` time: the
PyTorch reference (UniSkill's pipeline, `uniskill_torch_reference.py`) and our Flax path
(`hilam_jax/lam/uniskill/`), from the same random weights (made in torch, saved as the release
files are, converted with our converters). No flags here: the scripts keep their own.

Rows: "idm", the IDM alone on given RGB + depth; "depth+idm", RGB only (Depth-Anything, then the
IDM). Each side is (prepare(rgb, depth) -> args, call(args) -> skill latents numpy [B, Z]).
"""
import os

SEED = 0


def configs(small: bool):
  """(IDMConfig, DepthConfig): the release sizes, or the tiny test sizes with `small`."""
  # pylint: disable=g-import-not-at-top
  from hilam_jax.lam.uniskill.depth_anything import DepthConfig
  from hilam_jax.lam.uniskill.idm import IDMConfig
  return (IDMConfig.tiny(), DepthConfig.tiny()) if small else (IDMConfig(), DepthConfig())


def randomize_depth_(model, seed: int):
  """Random weights at a scale that keeps activations O(1) through the 12 blocks and the
  bias-free conv stacks (weights ~ N(0, 1/fan_in), norm and layer scales ~ 1), and a positive
  bias on the last conv so the ReLU output is not all zero (min-max of a constant is NaN)."""
  # pylint: disable=g-import-not-at-top
  import torch
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if p.ndim > 1:
        p.copy_(noise / max(p[0].numel(), 1) ** 0.5)
      elif "lambda1" in name or ("norm" in name and name.endswith("weight")):
        p.copy_(1.0 + 0.1 * noise)
      else:
        p.copy_(0.1 * noise)
    model.head.conv3.bias.fill_(0.5)
  return model.eval()


def build_weights(workdir: str, small: bool) -> None:
  """Random reference weights saved as released (idm.pth, a save_pretrained depth folder) and
  converted with our converters into workdir/converted/{idm,depth}."""
  # pylint: disable=g-import-not-at-top
  import transformers
  from experiments import uniskill_torch_reference as reference
  from hilam_jax.lam.uniskill import convert as uniskill_convert
  from hilam_jax.lam.uniskill import depth_anything_convert
  idm_config, _ = configs(small)
  reference.save_state_dict(reference.make_reference(idm_config, SEED),
                            os.path.join(workdir, "idm.pth"))
  uniskill_convert.convert_idm(os.path.join(workdir, "idm.pth"),
                               os.path.join(workdir, "converted", "idm"), idm_config)
  depth = transformers.DepthAnythingForDepthEstimation(
      reference.depth_anything_hf_config(tiny=small))
  randomize_depth_(depth, SEED).save_pretrained(os.path.join(workdir, "depth_hf"))
  depth_anything_convert.convert(os.path.join(workdir, "depth_hf"),
                                 os.path.join(workdir, "converted", "depth"))


def make_inputs(config, batch: int, seed: int):
  """RGB [B, T, H, W, 3] in [0, 1] and depth [B, T, H, W] on an arbitrary scale, float32."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  rng = np.random.default_rng(seed)
  frames = (batch, config.num_frames, config.image_size, config.image_size)
  return (rng.uniform(size=(*frames, 3)).astype(np.float32),
          rng.uniform(0.3, 4.0, size=frames).astype(np.float32))


def torch_side(workdir: str, small: bool, row: str, threads: int, device: str = "cpu"):
  """(prepare(rgb, depth) -> args, call(args) -> skill numpy [B, Z]) of the PyTorch reference, its
  models on `device` ("cpu" or "cuda"; the DPT image processor runs on the host either way)."""
  # pylint: disable=g-import-not-at-top
  import torch
  from torch.nn import functional as F
  from experiments import uniskill_torch_reference as reference
  torch.set_num_threads(threads)
  idm_config, _ = configs(small)
  idm = reference.ReferenceIDM(idm_config)
  idm.load_state_dict(torch.load(os.path.join(workdir, "idm.pth"), weights_only=True,
                                 map_location="cpu"), strict=True)
  idm.eval().to(device)
  size = idm_config.image_size
  if row == "idm":
    def prepare(rgb, depth):
      return (torch.from_numpy(depth).to(device),
              torch.from_numpy(rgb).permute(0, 1, 4, 2, 3).contiguous().to(device))

    def call(args):
      with torch.inference_mode():
        return idm(*args, return_skill=True)[:, 0].cpu().numpy()
    return prepare, call

  # pylint: disable=g-import-not-at-top
  import numpy as np
  import transformers
  from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil
  from hilam_jax.lam.uniskill import depth_anything
  depth_model = transformers.DepthAnythingForDepthEstimation.from_pretrained(
      os.path.join(workdir, "depth_hf")).eval().to(device)
  processor = DPTImageProcessorPil(  # UniSkill's training-time settings (UNISKILL.md)
      do_resize=True, size={"height": depth_anything.DPT_SIZE, "width": depth_anything.DPT_SIZE},
      keep_aspect_ratio=True, ensure_multiple_of=14, do_rescale=False, do_normalize=True,
      image_mean=list(depth_anything.IMAGENET_MEAN), image_std=list(depth_anything.IMAGENET_STD),
      do_pad=False)

  def prepare(rgb, depth):
    del depth
    return list(rgb.reshape(-1, *rgb.shape[2:])), rgb.shape[0]

  def call(args):
    images, b = args
    with torch.inference_mode():
      pixels = processor(images=images, return_tensors="pt",
                         input_data_format="channels_last")["pixel_values"].to(device)
      depth = depth_model(pixel_values=pixels).predicted_depth  # [2B, H', W']
      low = depth.amin(dim=(1, 2), keepdim=True)
      depth = (depth - low) / (depth.amax(dim=(1, 2), keepdim=True) - low)
      depth = F.interpolate(depth[:, None], size=(size, size), mode="bilinear",
                            align_corners=False).reshape(b, -1, size, size)
      rgb = torch.from_numpy(np.stack(images)).reshape(b, -1, size, size, 3).to(device)
      return idm(depth, rgb.permute(0, 1, 4, 2, 3), return_skill=True)[:, 0].cpu().numpy()
  return prepare, call


def load_flax_params(workdir: str, row: str):
  """(idm_config, depth_config or None, params {"idm", "depth"?}) converted by `build_weights`."""
  # pylint: disable=g-import-not-at-top
  from hilam_jax.lam.uniskill import convert as uniskill_convert
  from hilam_jax.lam.uniskill import depth_anything_convert
  idm_config, variables = uniskill_convert.load_idm(os.path.join(workdir, "converted", "idm"))
  params, depth_config = {"idm": variables}, None
  if row != "idm":
    depth_config, params["depth"] = depth_anything_convert.load(
        os.path.join(workdir, "converted", "depth"))
  return idm_config, depth_config, params


def random_flax_params(small: bool, row: str, seed: int = SEED):
  """As `load_flax_params` from Flax's own initialisers, for a machine without PyTorch (the
  reference weights are made in torch): throughput does not depend on the values."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from hilam_jax.lam.uniskill import depth_anything
  from hilam_jax.lam.uniskill import idm as uniskill_idm
  idm_config, depth_config = configs(small)
  key_idm, key_depth = jax.random.split(jax.random.key(seed))
  params = {"idm": uniskill_idm.init_variables(idm_config, key_idm)}
  if row == "idm":
    return idm_config, None, params
  side = depth_config.position_grid * depth_config.patch_size
  params["depth"] = jax.jit(depth_anything.DepthAnything(depth_config).init)(
      key_depth, jnp.zeros((1, side, side, 3), jnp.float32))["params"]
  return idm_config, depth_config, params


def flax_runner(idm_config, depth_config, params, row: str, dtype_name: str):
  """(prepare, call) as `torch_side`'s for our jitted Flax path in float32 ("f32") or bfloat16
  ("bf16") compute, on the default device."""
  # pylint: disable=g-import-not-at-top
  import functools
  import jax
  import jax.numpy as jnp
  import numpy as np
  from hilam_jax.lam.uniskill import depth_anything
  from hilam_jax.lam.uniskill import idm as uniskill_idm
  dtype = {"f32": jnp.float32, "bf16": jnp.bfloat16}[dtype_name]
  params = jax.device_put(params)
  size = idm_config.image_size
  if row == "idm":
    skill = functools.partial(uniskill_idm.idm_skill, config=idm_config, dtype=dtype)
    prepare = lambda rgb, depth: (jnp.asarray(rgb), jnp.asarray(depth))
    return prepare, lambda args: np.asarray(skill(params["idm"], *args).block_until_ready())

  @jax.jit
  def encode(params, rgb):  # [B, T, S, S, 3] in [0, 1], as UniSkillDynamics.encode after /255
    b, t = rgb.shape[:2]
    depth = depth_anything.uniskill_depth(params["depth"], rgb.reshape(b * t, size, size, 3),
                                          config=depth_config, out_size=size)
    return uniskill_idm.idm_skill(params["idm"], rgb, depth.reshape(b, t, size, size),
                                  config=idm_config, dtype=dtype)
  return (lambda rgb, depth: jnp.asarray(rgb),
          lambda rgb: np.asarray(encode(params, rgb).block_until_ready()))


def flax_side(workdir: str, row: str, dtype_name: str):
  """As `torch_side` for our jitted Flax path on the weights `build_weights` converted."""
  return flax_runner(*load_flax_params(workdir, row), row, dtype_name)


def make_side(name: str, workdir: str, small: bool, row: str, threads: int, device: str = "cpu"):
  """(prepare, call) of side "torch" (on `device`), "flax_f32" or "flax_bf16"."""
  if name == "torch":
    return torch_side(workdir, small, row, threads, device)
  return flax_side(workdir, row, name.split("_")[1])


def use_compilation_cache(workdir: str) -> None:
  """XLA's persistent compilation cache in workdir/xla_cache, for every compilation."""
  # pylint: disable=g-import-not-at-top
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def relative_error(actual, expected) -> float:
  """max |actual - expected| / max |expected|."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.abs(actual - expected).max() / np.abs(expected).max())
