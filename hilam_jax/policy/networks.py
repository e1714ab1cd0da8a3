"""What the trainer and the test-time policies share: a run's network, its inputs, its checkpoint,
and the one definition of the skill that conditions HiLAM's low level.

  model_config(config)        run config -> BakuConfig (heads from config.heads, with their
                              target statistics; the low level reads no language unless
                              config.lang_for_low)
  cameras(config)             the observation cameras a run's network sees (config.data.cameras)
  model_inputs(...)           observations (+ embeddings, condition) -> the BakuPolicy batch dict
  load_policy(workdir)        (module, params, run config) of a trained policy's checkpoint
  high_level_skill(...)       the skill pi^l is conditioned on: pi^h's offset-0 prediction

`policy/trainer.py` (training) and `policy/policies.py` (evaluation) both import this module;
neither imports the other.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from hilam_jax import training
from hilam_jax.policy import baku
from hilam_jax.policy import heads as heads_lib

CAMERA = "image_primary"  # the default (and, before config.data.cameras, the only) camera


def cameras(config: Any) -> tuple[str, ...]:
  """The observation image keys a run's network sees: `config.data.cameras` (a run config or its
  dict from a checkpoint; runs from before the knob saw CAMERA only). Checked: a non-empty list
  of distinct `image_*` names."""
  data = config["data"] if isinstance(config, dict) else config.data
  names = tuple(data.get("cameras", (CAMERA,)) or ())
  if not names or len(set(names)) != len(names) or not all(
      isinstance(n, str) and n.startswith("image_") for n in names):
    raise ValueError(f"data.cameras {names!r}: expected distinct observation image keys "
                     "('image_primary', 'image_wrist', ...)")
  return names


def uses_language(config: Any) -> bool:
  """Whether a run's network reads the instruction: always, except the low level (pi^l(o, skill)
  in the paper) unless `config.lang_for_low`."""
  return config.role != "low" or bool(config.get("lang_for_low", False))


def model_config(config: Any, target_stats: Mapping[str, tuple[Sequence[float],
                                                                 Sequence[float]]] | None = None
                 ) -> baku.BakuConfig:
  """The BakuConfig of a run: `config.model` fields + one head per `config.heads` entry, and
  `use_lang` from the role (`uses_language`). `target_stats`: {head: (mean, std)} of the heads
  that regress normalised targets (`trainer.target_statistics`)."""
  target_stats = target_stats or {}
  heads = tuple(
      heads_lib.HeadConfig(name, h["kind"], dim=int(h["dim"]), chunk=int(config.chunk),
                           hidden=tuple(config.head_hidden), loss=h.get("loss"),
                           loss_weight=float(h.get("loss_weight", 1.0)),
                           target_mean=tuple(target_stats.get(name, ((), ()))[0]),
                           target_std=tuple(target_stats.get(name, ((), ()))[1]))
      for name, h in config.heads.items())
  use_lang = uses_language(config)
  fields = dict(config.model)
  if "use_lang" in fields and bool(fields["use_lang"]) != use_lang:
    raise ValueError(f"model.use_lang={fields['use_lang']} contradicts role {config.role!r} / "
                     f"lang_for_low={config.get('lang_for_low', False)}; set lang_for_low instead")
  return baku.BakuConfig.from_dict({**fields, "heads": heads, "use_lang": use_lang})


def model_inputs(cfg: baku.BakuConfig, images: np.ndarray | Mapping[str, np.ndarray],
                 lang: np.ndarray | None = None, proprio: np.ndarray | None = None,
                 condition: np.ndarray | None = None) -> dict[str, Any]:
  """The BakuPolicy batch of N single-step observations (history H = 1).

  Args:
    cfg: the network's config (decides which inputs it takes).
    images: {camera: uint8 [N, h, w, 3]}, or one array for camera CAMERA alone.
    lang: float32 [N, L] instruction embeddings; kept if given (a frozen pi^h reading the same
      batch may need them even when `cfg.use_lang` is False), required if `cfg.use_lang`.
    proprio: [N, P]; required iff cfg.proprio_dim.
    condition: [N, Cz]; required iff cfg.condition_dim (unless a caller adds it later, as the
      fine-tuning loss does with pi^h's skill).
  """
  if not isinstance(images, Mapping):
    images = {CAMERA: images}
  inputs: dict[str, Any] = {"images": {c: np.asarray(v)[:, None] for c, v in images.items()}}
  if lang is not None:
    inputs["lang"] = np.asarray(lang, np.float32)
  elif cfg.use_lang:
    raise ValueError("this policy reads the instruction: pass `lang`")
  if cfg.proprio_dim:
    if proprio is None:
      raise ValueError(f"this policy reads {cfg.proprio_dim}-d proprio: pass `proprio`")
    inputs["proprio"] = np.asarray(proprio, np.float32)[:, None]
  if condition is not None:
    inputs["condition"] = np.asarray(condition, np.float32)[:, None]
  return inputs


def example_inputs(cfg: baku.BakuConfig, image_size: tuple[int, int],
                   camera_names: Sequence[str] = (CAMERA,)) -> dict[str, Any]:
  """Zero inputs of batch 1 with every input `cfg` takes (for `init`): the cameras' names fix
  the camera-embedding parameters."""
  return model_inputs(
      cfg, {c: np.zeros((1, *image_size, 3), np.uint8) for c in camera_names},
      lang=np.zeros((1, cfg.lang_dim), np.float32) if cfg.use_lang else None,
      proprio=np.zeros((1, cfg.proprio_dim), np.float32) if cfg.proprio_dim else None,
      condition=np.zeros((1, cfg.condition_dim), np.float32) if cfg.condition_dim else None)


def load_policy(workdir: str, step: int | None = None) -> tuple[baku.BakuPolicy, Any, dict]:
  """(module, params, run config dict) of a trained policy's checkpoint."""
  directory = os.path.join(workdir, "checkpoints")
  config = training.load_checkpoint_config(directory, step)
  module = baku.BakuPolicy(baku.BakuConfig.from_dict(config["model_config"]))
  return module, training.restore_params(directory, step=step), config


def high_level_skill(module: baku.BakuPolicy, params: Any, inputs: dict[str, Any],
                     head: str) -> jax.Array:
  """The skill HiLAM's low level is conditioned on: pi^h's prediction of `head` for the current
  step (offset 0 of its chunk), [B, H, Cz].

  The one definition used by the fine-tuning loss (`trainer.policy_loss`, condition.source
  "high_policy") and at test time (`policies.HierarchicalPolicy`, which refreshes it every
  `high_every` steps). The later offsets of pi^h's chunk are not used: skills are not temporally
  aggregated (only actions are).
  """
  out = module.apply({"params": params}, inputs, train=False, heads=(head,))
  return out.predictions[head][:, :, 0]
