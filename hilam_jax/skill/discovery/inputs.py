"""What skill discovery reads: ground-truth subtasks and frames of an RLDS dataset, and a skill
folder (`hilam_jax.skill.extract` output) of one split.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np


# Ground truths: (boundary key under "subtask", name key under "extras"). "initial": the expert's
# initial subgoals (BabyAI) / phases (Meta-World); "leaf": the finest level of the BabyAI bot's
# plan, helper subgoals included (`data_pipeline/sim/babyai.py: leaf_runs`).
GROUND_TRUTHS = {"initial": ("boundary", "subtask_name"),
                 "leaf": ("leaf_boundary", "leaf_subtask_name")}


def decode_frames(traj: Mapping[str, Any], length: int | None = None) -> np.ndarray:
  """The primary camera's frames [T, H, W, 3] uint8 of one RLDS trajectory (the first `length`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return np.stack([tf.io.decode_image(x, channels=3).numpy()
                   for x in traj["observation"]["image_primary"].numpy()[:length]])


def read_ground_truth(dataset_dir: str, split: str, episode_ids: set[str] | None = None,
                      keep_frames: set[str] | None = None, ground_truth: str = "initial"
                      ) -> tuple[dict, dict, dict, dict]:
  """({episode_id: boundary [T]}, {id: decoded frames} for `keep_frames`, {id: text},
  {id: subtask name [T] (str)}) of the `ground_truth` (GROUND_TRUTHS); the last dict is empty
  when the dataset stores no subtask names."""
  if ground_truth not in GROUND_TRUTHS:
    raise ValueError(f"ground_truth {ground_truth!r} not in {sorted(GROUND_TRUTHS)}")
  boundary_key, name_key = GROUND_TRUTHS[ground_truth]
  from data_pipeline import reader  # pylint: disable=g-import-not-at-top

  truth, frames, texts, types = {}, {}, {}, {}
  for traj in reader.read_trajectories(dataset_dir, split=split):
    episode_id = traj["episode_id"][0].numpy().decode()
    if episode_ids is not None and episode_id not in episode_ids:
      continue
    if boundary_key not in traj.get("subtask", {}):
      raise ValueError(f"{dataset_dir} ({split}) has no subtask/{boundary_key} ground truth "
                       f"({ground_truth!r}; BabyAI datasets have leaf labels since episode "
                       "format 2: regenerate)")
    truth[episode_id] = traj["subtask"][boundary_key].numpy().astype(bool)
    texts[episode_id] = traj["language_instruction"][0].numpy().decode()
    if name_key in traj.get("extras", {}):
      types[episode_id] = np.array([x.decode() for x in traj["extras"][name_key].numpy()])
    if keep_frames and episode_id in keep_frames:
      frames[episode_id] = decode_frames(traj)
  return truth, frames, texts, types


def load_skill_folder(skills_dir: str, split: str, labels_dir: str | None):
  """(manifest, {"s1"/"s2": boundaries}, {"s1"/"s2": skills}, labels_dir) of one split."""
  import json  # pylint: disable=g-import-not-at-top
  from hilam_jax.skill import extract  # pylint: disable=g-import-not-at-top

  with open(os.path.join(skills_dir, extract.MANIFEST)) as f:
    manifest = json.load(f)
  rels = [r for r in manifest["shards"] if r.split(os.sep)[-2] == split]
  if not rels:
    raise ValueError(f"{skills_dir} has no shards of split {split!r}")
  boundaries, skills = {"s1": {}, "s2": {}}, {"s1": {}, "s2": {}}
  for rel in rels:
    shard = extract.read_skill_shard(os.path.join(skills_dir, rel))
    for stage in boundaries:
      boundaries[stage].update(shard[f"boundary/{stage}"])
      skills[stage].update(shard[f"skill/{stage}"])
  return manifest, boundaries, skills, labels_dir or manifest["labels_dir"], rels
