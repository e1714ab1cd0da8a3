"""LIBERO (OpenVLA's release): no generator, the data are existing RLDS datasets.

Data: `libero_{spatial,object,goal,10}_no_noops` as released (`data_pipeline/libero_schema.py`),
read through the standardize registry (`data_pipeline/registry.py`,
`data_pipeline/standardize/libero.py`). A data spec names the dataset folder:
{"dataset_dir": "<tfds dir>/libero_spatial_no_noops/1.0.0"}; `generate` only checks it. Cameras:
agent view (`image_primary`) and wrist (`image_wrist`); proprio: EEF position, axis-angle and
gripper qpos (8); actions: Δpos, Δaxis-angle, gripper (7) in [-1, 1]. Level: the suite
("libero_spatial", ...); its episode cap is the suite's (`SUITE_MAX_STEPS`).

Evaluation: `hilam_jax.evaluation.libero.evaluate_libero` (the standard protocol: fixed initial
states, settle steps), images at the policy's own size. eval.num_episodes is spread over the
suite's 10 tasks, or over eval.task_ids (rounded up per task); eval.render_size is the camera
resolution (default 256, the release's). Requires the `libero` extra (imported by the harness
only).
"""
from __future__ import annotations

import math
import os
from typing import Any

from hilam_jax.worlds import base

SUFFIX = "_no_noops"  # the release's dataset name = suite + SUFFIX


class LiberoWorld(base.World):
  """LIBERO suites, data from the OpenVLA RLDS release."""

  def generate(self, spec: Any, data_dir: str) -> dict[str, Any]:
    from data_pipeline import libero_schema  # pylint: disable=g-import-not-at-top
    del data_dir  # nothing is written
    dataset_dir = spec.get("dataset_dir") if hasattr(spec, "get") else None
    if not dataset_dir:
      raise ValueError("LIBERO has no generator: a data spec names its sources, e.g. "
                       "{'sources': {'libero_10': {'rlds': '<tfds dir>/libero_10_no_noops/1.0.0'}}}")
    name = os.path.basename(os.path.dirname(os.path.normpath(dataset_dir)))
    if name not in libero_schema.LIBERO_DATASETS:
      raise ValueError(f"{dataset_dir}: {name!r} is not a LIBERO dataset "
                       f"({', '.join(libero_schema.LIBERO_DATASETS)})")
    if not os.path.isdir(dataset_dir):
      raise FileNotFoundError(f"no LIBERO dataset at {dataset_dir}")
    return {"dataset_dir": dataset_dir, "episodes_per_second": 0.0}

  def check_settings(self, demos_dir: str, level: str) -> dict[str, Any]:
    from hilam_jax.evaluation import libero as libero_eval  # pylint: disable=g-import-not-at-top
    if level not in libero_eval.SUITE_MAX_STEPS:
      raise ValueError(f"LIBERO level {level!r}: expected a suite, one of "
                       f"{sorted(libero_eval.SUITE_MAX_STEPS)}")
    name = os.path.basename(os.path.dirname(os.path.normpath(demos_dir)))
    if name != level + SUFFIX:
      raise ValueError(f"evaluating suite {level!r} with a policy fine-tuned on {name!r}")
    return {"suite": level}

  def evaluate(self, policy: Any, *, level: str, settings: dict[str, Any],
               eval_config: dict[str, Any], video_dir: str) -> dict[str, Any]:
    from hilam_jax.evaluation import libero as libero_eval  # pylint: disable=g-import-not-at-top
    del level  # settings["suite"]
    e = eval_config
    size = base.policy_image_size(policy)
    if size is not None and size[0] != size[1]:
      raise ValueError(f"LIBERO renders square images; the policy was trained on {size}")
    num_workers = max(1, min(int(e.get("num_sim_workers", 2)), e["num_envs"]))
    task_ids = e.get("task_ids") or list(range(10))
    return libero_eval.evaluate_libero(
        policy, settings["suite"], image_size=size[0] if size else 256, task_ids=task_ids,
        render_size=int(e.get("render_size") or 256),
        num_trials_per_task=math.ceil(e["num_episodes"] / len(task_ids)),
        max_steps=e["max_steps"],
        num_workers=num_workers, envs_per_worker=math.ceil(e["num_envs"] / num_workers),
        video_dir=video_dir, num_videos=e["num_videos"]).to_dict()


WORLD = LiberoWorld(
    name="libero",
    action=base.ActionSpace("continuous", 7, low=-1.0, high=1.0),  # Δpos, Δaxis-angle, gripper
    proprio_dim=8,  # EEF position 3, axis-angle 3, gripper qpos 2 (libero_schema.STATE_DIM)
    cameras=("image_primary", "image_wrist"),  # agent view, wrist
    episode_cap=None,  # the suite's (evaluation.libero.SUITE_MAX_STEPS)
    has_generator=False,
    simulator_modules=("libero",),
    simulator_extra="libero",
)
