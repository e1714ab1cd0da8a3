"""Converts UniSkill's released PyTorch weights to Flax. Logic: `hilam_jax.lam.uniskill.convert`.

  python -m experiments.convert_uniskill --idm=UniSkill_final_weight/idm.pth \
      --depth=Depth-Anything-V2-Small-hf --unet=UniSkill_final_weight/unet \
      --vae=instruct-pix2pix/vae --out_dir=runs/uniskill

writes <out_dir>/idm/{idm_variables.msgpack,manifest.json} (`--idm`),
<out_dir>/depth/{depth_params.msgpack,manifest.json} (`--depth`: a transformers folder with
config.json + model.safetensors, read without torch), <out_dir>/unet/{unet_params.msgpack,
manifest.json} (`--unet`) and <out_dir>/vae/{vae_params.msgpack,manifest.json} (`--vae`: the
encoder; the decoder's keys are checked, not converted): diffusers save_pretrained folders with
config.json + diffusion_pytorch_model.safetensors (read without torch) or, without it,
diffusion_pytorch_model.bin (torch.load weights_only=True); the script says which it read. Each
part converts on its own (the IDM alone is enough for labeling with given depth maps;
`uniskill:<out_dir>` needs all four). `--idm_config` overrides IDMConfig fields as JSON (tests convert
small random models with it; the release needs none).
"""
import json
import os

from absl import app
from absl import flags

from hilam_jax import preemption

_IDM = flags.DEFINE_string("idm", None, "UniSkill's idm.pth (a torch state_dict).")
_DEPTH = flags.DEFINE_string("depth", None, "Depth-Anything-V2-Small-hf folder.")
_UNET = flags.DEFINE_string("unet", None, "The FDM's diffusers unet/ folder.")
_VAE = flags.DEFINE_string("vae", None, "The FDM's diffusers vae/ folder (AutoencoderKL).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_IDM_CONFIG = flags.DEFINE_string("idm_config", "{}", "JSON dict of IDMConfig overrides.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not (_IDM.value or _DEPTH.value or _UNET.value or _VAE.value):
    raise app.UsageError("nothing to convert: give --idm, --depth, --unet and/or --vae")
  from hilam_jax.lam.uniskill import depth_anything_convert  # pylint: disable=g-import-not-at-top
  from hilam_jax.lam.uniskill import dynamics as uniskill_dynamics  # pylint: disable=g-import-not-at-top
  manifests = uniskill_dynamics.convert_release(
      _OUT_DIR.value, idm=_IDM.value, depth=_DEPTH.value, unet=_UNET.value, vae=_VAE.value,
      idm_config=json.loads(_IDM_CONFIG.value))
  if "idm" in manifests:
    manifest = manifests["idm"]
    print(f"IDM: {len(manifest['state_dict'])} keys, {manifest['num_parameters']:,} parameters "
          f"(source sha256 {manifest['source']['sha256'][:12]}) -> "
          f"{os.path.join(_OUT_DIR.value, 'idm')}")
  if "depth" in manifests:
    manifest = manifests["depth"]
    sha = manifest["source"][depth_anything_convert.WEIGHTS_FILE]["sha256"]
    print(f"depth: {len(manifest['tensors'])} keys, {manifest['num_parameters']:,} parameters "
          f"(source sha256 {sha[:12]}) -> {os.path.join(_OUT_DIR.value, 'depth')}")
  for name in ("unet", "vae"):
    if name in manifests:
      manifest = manifests[name]
      source = manifest["source"]
      print(f"{name}: read {source['weights_file']} ({source['weights_format']}), "
            f"{len(manifest['tensors'])} keys, {manifest['num_parameters']:,} parameters "
            f"converted, {len(manifest['validated_not_converted'])} keys checked and not "
            f"converted -> {os.path.join(_OUT_DIR.value, name)}")

if __name__ == "__main__":
  app.run(preemption.exit_on_preemption(main))
