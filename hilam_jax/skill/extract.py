"""Reads skills off a trained skill model for whole episodes (METHOD.md section 3, last part).

For every labelled episode (z^0 [T-k, Dz] from the label folder), the model is run over windows of
its training length L, hop H (default L / 2), all in one compiled shape [batch, L]. Frame t takes
its outputs from the window in which it has the most causal context: the first window for t < L,
else window w = (t - L) // H + 1, where it sits at offset >= L - H. So no frame beyond the first L
sees a window's forced start boundary, and both stages' values of a frame come from one window
(a stage-2 boundary stays a stage-1 boundary).

Output, one shard per input label shard, under `<out_dir>`:

  <out_dir>/manifest.json                       skill checkpoint (params sha256), labels folder
                                                and its manifest, window/hop, keys, shard list
  <out_dir>/<dataset>/<split>/<file>.npz        episode_ids [E], lengths [E], and per key
                                                values [sum(lengths), ...]:
      skill/s1    float32 [., D_0]  z̄^1_t, the stage-1 chunk vector of frame t's segment
      skill/s2    float32 [., D_1]  z̄^2_t (the paper's skill)
      boundary/s1 bool [.]          b̄^1_t, frame t starts a stage-1 chunk
      boundary/s2 bool [.]          b̄^2_t

Memory: shards are processed one at a time (a label shard's latents, its skills, and one batch of
windows cut as it is needed), so extraction does not grow with the corpus; a shard holds the
episodes of one RLDS shard file.

Arrays are aligned with the latents (frame t of the episode, t < T-k). `load_skills(out_dir, key)`
returns one key as `EpisodeLabels`, joinable by episode id like the latent actions.
"""
from __future__ import annotations

import itertools
import json
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline import traj_transforms as tt
from data_pipeline import run_info
from hilam_jax import training
from hilam_jax.lam import labeling
from hilam_jax.skill import model as skill_model

MANIFEST = "manifest.json"
KEYS = ("skill/s1", "skill/s2", "boundary/s1", "boundary/s2")


def checkpoint_fingerprint(workdir: str, step: int | None = None) -> dict[str, Any]:
  """Identifies a skill checkpoint: directory, step, sha256 over (path, bytes) of every param."""
  directory = os.path.join(workdir, "checkpoints")
  params = training.restore_params(directory, step=step)
  return {"checkpoint_dir": os.path.abspath(directory), "step": step,
          "params_sha256": training.params_sha256(params)}


def load_skill_model(workdir: str, step: int | None = None):
  """(SkillModel, params, stored config dict) of a training workdir's checkpoint."""
  directory = os.path.join(workdir, "checkpoints")
  config = training.load_checkpoint_config(directory, step)
  params = training.restore_params(directory, step=step)
  module = skill_model.SkillModel(skill_model.SkillModelConfig.from_dict(dict(config["model"])))
  return module, params, config


class SkillExtractor:
  """Runs a skill model over whole episodes in fixed windows [batch, window] (compiled once)."""

  def __init__(self, module: skill_model.SkillModel, params: Any, window: int,
               hop: int | None = None, batch_size: int = 64):
    self.module, self.params = module, params
    self.window = int(window)
    # Default hop L / 2, at least 1 (a one-frame window would otherwise get hop 0).
    self.hop = int(hop or max(1, self.window // 2))
    if not 0 < self.hop <= self.window:
      raise ValueError(f"hop {self.hop} must be in (0, window={self.window}]")
    self.batch_size = batch_size

    def run(params, latents, mask):
      out = module.apply({"params": params}, latents, mask)
      return {f"{kind}/s{i + 1}": getattr(stage, attr) for i, stage in enumerate(out.stages)
              for kind, attr in (("skill", "skill"), ("boundary", "frame_boundary"))}

    self._run = jax.jit(run)

  def _windows(self, length: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(window start, frames t taken from it, their offsets in it) for an episode."""
    t = np.arange(length)
    owner = np.where(t < self.window, 0, (t - self.window) // self.hop + 1)
    return [(w * self.hop, t[owner == w], t[owner == w] - w * self.hop)
            for w in range(int(owner[-1]) + 1)]

  def _jobs(self, latents: dict[str, np.ndarray]
            ) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(episode id, frames, offsets, window latents, window mask) of every window, lazily."""
    for episode_id, z in latents.items():
      z = np.asarray(z, np.float32)
      for start, frames, offsets in self._windows(len(z)):
        piece = z[start:start + self.window]
        yield (episode_id, frames, offsets,
               np.pad(piece, ((0, self.window - len(piece)), (0, 0))),
               np.arange(self.window) < len(piece))

  def extract(self, latents: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """{episode_id: {key: per-frame array [T-k, ...]}} for every episode (input order).

    Windows are cut as the batches need them: memory holds the inputs, the outputs and one
    batch of windows (extract_skills passes one label shard at a time)."""
    results = {e: {} for e in latents}
    jobs = self._jobs(latents)
    while chunk := list(itertools.islice(jobs, self.batch_size)):
      pad = self.batch_size - len(chunk)
      batch_z = np.stack([j[3] for j in chunk] + [np.zeros_like(chunk[0][3])] * pad)
      batch_m = np.stack([j[4] for j in chunk] + [np.zeros_like(chunk[0][4])] * pad)
      out = jax.device_get(self._run(self.params, jnp.asarray(batch_z), jnp.asarray(batch_m)))
      for row, (episode_id, frames, offsets, _, _) in enumerate(chunk):
        for key, values in out.items():
          dest = results[episode_id].get(key)
          if dest is None:
            dest = np.zeros((len(latents[episode_id]),) + values.shape[2:], values.dtype)
            results[episode_id][key] = dest
          dest[frames] = values[row, offsets]
    return results


def write_skill_shard(path: str, skills: dict[str, dict[str, np.ndarray]]) -> None:
  """Atomic .npz of {episode_id: {key: array}} (values concatenated over episodes per key)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ids = list(skills)
  arrays = {"episode_ids": np.array(ids, dtype=str),
            "lengths": np.array([len(skills[e]["boundary/s1"]) for e in ids], np.int64)}
  for key in skills[ids[0]] if ids else ():
    arrays[key] = np.concatenate([skills[e][key] for e in ids])
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def read_skill_shard(path: str) -> dict[str, dict[str, np.ndarray]]:
  """{key: {episode_id: array}} of one skill shard."""
  with np.load(path) as data:
    ids, lengths = data["episode_ids"], data["lengths"]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return {key: {str(e): data[key][offsets[i]:offsets[i + 1]] for i, e in enumerate(ids)}
            for key in data.files if key not in ("episode_ids", "lengths")}


def extract_skills(workdir: str, labels_dir: str, out_dir: str, *, step: int | None = None,
                   hop: int | None = None, batch_size: int = 64,
                   splits: tuple[str, ...] | None = None) -> dict[str, Any]:
  """Extracts skills for every label shard (optionally only `splits`); returns statistics."""
  from hilam_jax.skill import trainer  # pylint: disable=g-import-not-at-top
  module, params, config = load_skill_model(workdir, step)
  window = int(config["data"]["window"])
  # The model reads latents normalised as in training (data.normalize; the stats of the run).
  normalization = trainer.resolve_normalization(config, workdir)
  extractor = SkillExtractor(module, params, window, hop, batch_size)
  with open(os.path.join(labels_dir, labeling.MANIFEST)) as f:
    label_manifest = json.load(f)
  rels = [r for r in label_manifest["shards"]
          if splits is None or r.split(os.sep)[-2] in splits]
  episodes = frames = 0
  for rel in rels:
    latents = labeling.read_shard(os.path.join(labels_dir, rel))
    skills = extractor.extract(trainer.normalize_latents(latents, normalization))
    write_skill_shard(os.path.join(out_dir, rel), skills)
    episodes += len(skills)
    frames += sum(len(z) for z in latents.values())
  manifest = {"skill_model": checkpoint_fingerprint(workdir, step),
              "labels_dir": os.path.abspath(labels_dir),
              "labels_lam": label_manifest.get("lam"), "frame_gap": label_manifest.get("frame_gap"),
              "window": window, "hop": extractor.hop, "normalization": normalization, "keys": list(KEYS), "shards": rels,
              "versions": run_info.package_versions()}
  run_info.write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)
  return {"shards": len(rels), "episodes": episodes, "frames": frames}


def load_skills_dict(out_dir: str, key: str, *, joinable: bool = False
                     ) -> dict[str, np.ndarray]:
  """{episode_id: array} of one key over all shards of a skill folder (`joinable`: booleans as
  float32 0/1, the form `EpisodeLabels` joins and a policy head regresses)."""
  with open(os.path.join(out_dir, MANIFEST)) as f:
    manifest = json.load(f)
  values: dict[str, np.ndarray] = {}
  for rel in manifest["shards"]:
    values.update(read_skill_shard(os.path.join(out_dir, rel))[key])
  if joinable and key.startswith("boundary/"):
    values = {e: v.astype(np.float32) for e, v in values.items()}
  return values


def load_skills(out_dir: str, key: str = "skill/s2") -> tt.EpisodeLabels:
  """One key of a skill folder as `EpisodeLabels` (booleans as float32 0/1 for the join)."""
  return tt.EpisodeLabels(load_skills_dict(out_dir, key, joinable=True))
