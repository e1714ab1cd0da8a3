"""Choosing the frozen dynamics model: a spec ('lam:<train_lam workdir>', 'uniskill:<converted
dir>' or a bare LAM workdir) -> a `FrozenDynamicsModel` (`load_frozen_model`) and the identity of
that model for label manifests (`frozen_model_fingerprint`).

The one place that knows every implementation: `frozen_lam.FrozenLAM` (restored by
`trainer.load_frozen_lam`) and `uniskill.dynamics.UniSkillDynamics`.
"""
import json
import os
from typing import Any, Optional

from hilam_jax.lam import trainer
from hilam_jax.lam.interface import FrozenDynamicsModel
from hilam_jax.lam.uniskill import dynamics as uniskill_dynamics


LAM_SCHEME = "lam"
UNISKILL_SCHEME = "uniskill"
FROZEN_MODEL_FORMS = ("'lam:<train_lam workdir>'", "'uniskill:<converted dir>'",
                      "'<train_lam workdir>' (a bare path: lam, as before the schemes)")
# The files of a converted UniSkill directory (`python -m experiments.convert_uniskill
# --out_dir=<dir>`), per part, relative to the directory: the IDM (`--idm`, <dir>/idm),
# Depth-Anything-V2-Small (`--depth`, <dir>/depth) and the FDM's UNet (`--unet`, <dir>/unet) and
# VAE (`--vae`, <dir>/vae). `uniskill_dynamics.UniSkillDynamics` needs all four.
UNISKILL_PARTS = {"idm": "idm/manifest.json", "depth": "depth/manifest.json",
                  "fdm_unet": "unet/manifest.json", "fdm_vae": "vae/manifest.json"}


def parse_frozen_model(spec: str) -> tuple[str, str]:
  """'lam:<dir>' / 'uniskill:<dir>' / '<dir>' -> (scheme, path).

  A bare path (no 'word:' prefix, or a URL such as 'gs://bucket/run') is a LAM workdir, the
  meaning every config had before the schemes existed.

  Raises:
    ValueError: an empty spec or path, or an unknown 'word:' scheme (the message lists the
      accepted forms).
  """
  if not isinstance(spec, str) or not spec:
    raise ValueError(f"frozen model spec must be a non-empty string, got {spec!r}; accepted: "
                     + ", ".join(FROZEN_MODEL_FORMS))
  scheme, sep, path = spec.partition(":")
  if not sep or path.startswith("//") or not scheme.isidentifier():
    return LAM_SCHEME, spec  # a bare path (or URL)
  if scheme not in (LAM_SCHEME, UNISKILL_SCHEME):
    raise ValueError(f"frozen model spec {spec!r}: unknown scheme {scheme!r}; accepted: "
                     + ", ".join(FROZEN_MODEL_FORMS))
  if not path:
    raise ValueError(f"frozen model spec {spec!r}: no path after '{scheme}:'")
  return scheme, path


def missing_uniskill_parts(converted_dir: str) -> dict[str, str]:
  """The parts of `UNISKILL_PARTS` whose file is absent from `converted_dir`: {part: file}."""
  return {part: rel for part, rel in UNISKILL_PARTS.items()
          if not os.path.exists(os.path.join(converted_dir, rel))}


def require_uniskill_parts(spec: str, path: str, step: Optional[int]) -> None:
  """Raises ValueError for a step (lam: only) and FileNotFoundError naming every missing part."""
  if step is not None:
    raise ValueError(f"frozen model {spec!r}: a checkpoint step ({step}) applies to lam: only")
  missing = missing_uniskill_parts(path)
  if missing:
    raise FileNotFoundError(
        f"frozen model {spec!r}: missing part(s) " + ", ".join(
            f"{part} ({os.path.join(path, rel)})" for part, rel in missing.items())
        + ". UniSkillDynamics needs the IDM + depth (Depth-Anything-V2-Small) + FDM (UNet and "
        "VAE); an IDM alone can label frames with depth given, not serve as a frozen model.")


def load_frozen_model(spec: str, step: Optional[int] = None) -> FrozenDynamicsModel:
  """The one place that chooses the frozen dynamics model of labeling, L_rec and the main job.

  Args:
    spec: see `parse_frozen_model`: 'lam:<workdir>' (or a bare workdir) is this package's LAM as
      `trainer.load_frozen_lam` restores it; 'uniskill:<converted dir>' is UniSkill's IDM + depth
      + diffusion FDM (`uniskill_dynamics.UniSkillDynamics.from_converted`).
    step: the LAM checkpoint step (None: latest); must be None for uniskill.

  Raises:
    ValueError: an unknown scheme, or a step given for uniskill.
    FileNotFoundError: a uniskill directory without every part (names the missing ones).
  """
  scheme, path = parse_frozen_model(spec)
  if scheme == LAM_SCHEME:
    return trainer.load_frozen_lam(path, step)
  require_uniskill_parts(spec, path, step)
  return uniskill_dynamics.UniSkillDynamics.from_converted(path)


def frozen_model_fingerprint(spec: str, step: Optional[int] = None) -> dict[str, Any]:
  """Identifies the model of `spec` for label manifests (lam: `trainer.checkpoint_fingerprint`,
  unchanged, so existing label folders keep their identity; uniskill: per part, its manifest's
  format, source sha256(s) and converted params' sha256, plus the DynamicsConfig in effect).

  Raises:
    ValueError / FileNotFoundError: as `load_frozen_model` (without loading any weights).
  """
  scheme, path = parse_frozen_model(spec)
  if scheme == LAM_SCHEME:
    return trainer.checkpoint_fingerprint(path, step)
  require_uniskill_parts(spec, path, step)
  parts = {}
  for part, rel in UNISKILL_PARTS.items():
    with open(os.path.join(path, rel)) as f:
      manifest = json.load(f)
    parts[part] = {"format": manifest["format"],
                   "source_sha256": _source_sha256(manifest["source"]),
                   "params_sha256": manifest.get("params_sha256",
                                                 manifest.get("variables_sha256"))}
  return {"uniskill_dir": os.path.abspath(path), "parts": parts,
          "dynamics": uniskill_dynamics.load_dynamics_config(path).to_dict()}


def _source_sha256(source: dict[str, Any]) -> Any:
  """A converter manifest's source sha256(s): the IDM's and the FDM's converters write
  {"sha256": ...}, the depth converter {file name: {"sha256": ...}}."""
  if "sha256" in source:
    return source["sha256"]
  return {name: entry["sha256"] for name, entry in source.items()}
