"""Meta-World v3 simulation (generator and evaluation): scripted experts, rendering, phase labels.

This module runs inside spawned worker processes and must never import TensorFlow, directly or
through project modules: TensorFlow and a MuJoCo GL context in one process segfault. MuJoCo and
Meta-World are imported lazily (`_import_sim`) after `MUJOCO_GL` is set, so the TF-side parent
(`data_pipeline/generators/metaworld.py`) can import this module for its function references.
The evaluation harness (`hilam_jax/evaluation/metaworld.py`) renders through the same `TaskSim`.

Episodes are numpy dicts in the raw RLDS layout written by the parent (T = episode length):

  steps/observation/image     uint8 [T, S, S, 3]  camera frame of state t (before action t)
  steps/observation/state     float32 [T, 39]     Meta-World observation (goal observable)
  steps/action                float32 [T, 4]      expert action clipped to the action space
  steps/reward, discount      float32 [T]
  steps/is_first, is_last, is_terminal  bool [T]
  steps/language_instruction  str [T]
  episode_metadata/{task, seed, source, phase_start_steps, phase_names}

Phases: each supported expert picks its target with if/elif branches. `PHASE_SPECS` re-implements
those branch conditions per task (returning the branch, and the target and gain the branch uses,
so tests can check the re-implementation against the shipped policy's actions). The per-step
branch ids are debounced (`debounce`) into phase start steps. A phase may recur (door-open's
expert sometimes loses the handle and re-approaches it: phases 0,1,2,0,2). Tasks not in
PHASE_SPECS are stored as one phase named UNMAPPED_PHASE.

Rendering: `mujoco.Renderer` at S x S from a fixed camera. The `corner2` camera's up axis points
down in the world, so frames are rotated 180 degrees (a vertical flip alone would mirror the
scene). Shadows, reflections and MSAA are turned off (`disable_expensive_rendering`): 85-125 ->
7-10 ms per 64x64 frame on llvmpipe, 12-14x (`render_ms_per_frame`).

An episode is a deterministic function of (task, seed, SimConfig): `reset` seeds the env's task
randomisation (object and goal positions) from the seed, and the expert is deterministic.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
import zlib
from typing import Any, Callable, Sequence

import numpy as np

# Branch function: 39-d observation -> (branch index, target xyz, proportional gain).
BranchFn = Callable[[np.ndarray], tuple[int, np.ndarray, float]]


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
  """The branches of one expert's target selection, in the policy's if/elif order."""
  names: tuple[str, ...]
  branch: BranchFn


def _xy_dist(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(a[:2] - b[:2]))


# Each function mirrors `_desired_pos` (or `get_action`) of
# metaworld/policies/sawyer_<task>_policy.py in metaworld 3.1.1 and returns (branch, target, gain);
# `expert_branch_check` (run by the tests) checks gain * (target - hand) == the expert's action.
def _reach(o):
  return 0, o[-3:], 5.0


def _push(o):
  hand, puck, goal = o[:3], o[4:7] + np.array([-0.005, 0.0, 0.0]), o[-3:]
  if _xy_dist(hand, puck) > 0.02:
    return 0, puck + np.array([0.0, 0.0, 0.2]), 10.0
  if abs(hand[2] - puck[2]) > 0.04:
    return 1, puck + np.array([0.0, 0.0, 0.03]), 10.0
  return 2, goal, 10.0


def _pick_place(o):
  hand, puck, goal = o[:3], o[4:7] + np.array([-0.005, 0.0, 0.0]), o[-3:]
  if _xy_dist(hand, puck) > 0.02:
    return 0, puck + np.array([0.0, 0.0, 0.1]), 10.0
  if abs(hand[2] - puck[2]) > 0.05 and puck[2] < 0.04:
    return 1, puck + np.array([0.0, 0.0, 0.03]), 10.0
  if o[3] > 0.73:  # gripper still open: wait for it to close
    return 2, hand, 10.0
  return 3, goal, 10.0


def _drawer_open(o):
  hand, drawer = o[:3], o[4:7] + np.array([0.0, 0.0, -0.02])
  if _xy_dist(hand, drawer) > 0.06:
    return 0, drawer + np.array([0.0, 0.0, 0.3]), 4.0
  if abs(hand[2] - drawer[2]) > 0.04:
    return 1, drawer, 4.0
  return 2, drawer + np.array([0.0, -0.06, 0.0]), 50.0


def _drawer_close(o):
  hand, drawer = o[:3], o[4:7] + np.array([0.0, 0.0, -0.02])
  if hand[1] > drawer[1]:
    if hand[2] < drawer[2] + 0.23:
      return 0, np.array([hand[0], hand[1], drawer[2] + 0.5]), 25.0
    return 1, drawer + np.array([0.0, -0.075, 0.23]), 25.0
  if abs(hand[2] - drawer[2]) > 0.04:
    return 2, drawer + np.array([0.0, -0.075, 0.0]), 25.0
  return 3, drawer, 25.0


def _button_press(o):
  hand, button = o[:3], o[4:7] + np.array([0.0, 0.0, -0.07])
  if not np.all(np.isclose(hand[[0, 2]], button[[0, 2]], atol=0.02)):
    button[1] = hand[1] - 0.1
    return 0, button, 25.0
  button[1] += 0.02
  return 1, button, 25.0


def _button_press_topdown(o):
  hand, button = o[:3], o[4:7]
  if _xy_dist(hand, button) > 0.04:
    return 0, button + np.array([0.0, 0.0, 0.1]), 25.0
  return 1, button, 25.0


def _door_open(o):
  hand, door = o[:3], o[4:7] - np.array([0.05, 0.0, 0.0])
  if _xy_dist(hand, door) > 0.12:
    return 0, door + np.array([0.06, 0.02, 0.2]), 25.0
  if abs(hand[2] - door[2]) > 0.04:
    return 1, door + np.array([0.06, 0.02, 0.0]), 25.0
  return 2, door, 25.0


def _window_open(o):
  hand, window = o[:3], o[4:7] + np.array([-0.03, -0.03, -0.08])
  if _xy_dist(hand, window) > 0.04:
    return 0, window + np.array([0.0, 0.0, 0.3]), 25.0
  if abs(hand[2] - window[2]) > 0.02:
    return 1, window, 25.0
  return 2, window + np.array([0.1, 0.0, 0.0]), 25.0


PHASE_SPECS: dict[str, PhaseSpec] = {
    "reach-v3": PhaseSpec(("reach the goal",), _reach),
    "push-v3": PhaseSpec(("move above the puck", "lower onto the puck",
                          "push the puck to the goal"), _push),
    "pick-place-v3": PhaseSpec(("move above the puck", "lower onto the puck", "grasp the puck",
                                "carry the puck to the goal"), _pick_place),
    "drawer-open-v3": PhaseSpec(("move above the handle", "lower to the handle",
                                 "pull the drawer open"), _drawer_open),
    "drawer-close-v3": PhaseSpec(("rise above the drawer", "move above the handle front",
                                  "lower to the handle front", "push the drawer closed"),
                                 _drawer_close),
    "button-press-v3": PhaseSpec(("align with the button", "press the button"), _button_press),
    "button-press-topdown-v3": PhaseSpec(("move above the button", "press the button down"),
                                         _button_press_topdown),
    "door-open-v3": PhaseSpec(("move above the handle", "lower to the handle",
                               "pull the door open"), _door_open),
    "window-open-v3": PhaseSpec(("move above the handle", "lower to the handle",
                                 "slide the window open"), _window_open),
}
UNMAPPED_PHASE = "unmapped (whole episode)"

INSTRUCTIONS = {
    "reach-v3": "reach the goal position",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-v3": "press the button",
    "button-press-topdown-v3": "press the button from the top",
    "door-open-v3": "open the door",
    "window-open-v3": "open the window",
}


def instruction(task: str) -> str:
  """Template instruction; other tasks get their name's words ("sweep-into-v3" -> "sweep into")."""
  if task in INSTRUCTIONS:
    return INSTRUCTIONS[task]
  return " ".join(task.removesuffix("-v3").split("-"))


def debounce(branch_ids: Sequence[int], min_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-step branch ids -> (phase start steps, phase ids), ignoring runs shorter than min_steps.

  A run of one branch shorter than `min_steps` is jitter and stays in the phase it interrupted; a
  phase that resumes after such jitter does not start anew. The first phase starts at step 0.

  Returns:
    int32 [K] strictly increasing start steps (first 0) and int32 [K] branch ids, K >= 1.
  """
  ids = np.asarray(branch_ids, dtype=np.int32)
  if ids.size == 0:
    raise ValueError("debounce needs at least one step")
  changes = np.flatnonzero(ids[1:] != ids[:-1]) + 1
  run_starts = np.concatenate([[0], changes])
  run_ends = np.concatenate([changes, [ids.size]])
  starts, phases = [], []
  for start, end in zip(run_starts, run_ends):
    if end - start < max(1, min_steps) or (phases and phases[-1] == ids[start]):
      continue
    starts.append(start)
    phases.append(ids[start])
  if not phases:  # every run is jitter: one phase, the most frequent branch
    starts, phases = [0], [np.bincount(ids).argmax()]
  starts[0] = 0
  return np.asarray(starts, np.int32), np.asarray(phases, np.int32)


def episode_seed(base_seed: int, split: str, task: str, index: int, attempt: int) -> int:
  """The env seed of attempt `attempt` at episode slot `index` of (split, task): a pure function."""
  key = (zlib.crc32(split.encode()), zlib.crc32(task.encode()), index, attempt)
  return int(np.random.SeedSequence(base_seed, spawn_key=key).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class SimConfig:
  """What an episode depends on besides (task, seed). Picklable, sent to the workers."""
  image_size: int = 64
  camera: str = "corner2"
  fast_render: bool = True          # no shadows, reflections, MSAA (~10x faster on llvmpipe)
  max_steps: int = 500
  steps_after_success: int = 5
  min_phase_steps: int = 3
  max_attempts: int = 20            # seeds tried per episode slot before giving up


def _import_sim():
  """Imports MuJoCo and Meta-World, refusing to do so in a process that has TensorFlow."""
  if "tensorflow" in sys.modules:
    raise RuntimeError(
        "data_pipeline.sim.metaworld: TensorFlow is imported in this process and a MuJoCo GL "
        "context would segfault beside it. Simulate in a spawned process that never imports TF "
        "(if this is a spawned worker, the launching __main__ module imports TF at top level: "
        "import it lazily).")
  os.environ.setdefault("MUJOCO_GL", "egl")
  warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
  import metaworld.env_dict  # pylint: disable=g-import-not-at-top
  import metaworld.policies  # pylint: disable=g-import-not-at-top
  import mujoco  # pylint: disable=g-import-not-at-top
  return mujoco, metaworld.env_dict, metaworld.policies


def disable_expensive_rendering(model: Any) -> None:
  """Turns off shadows, reflections and multisampling (visual-only fields; physics unchanged).

  Must run before the renderer is created: the shadow map and MSAA buffers are sized then.
  """
  model.vis.quality.shadowsize = 0
  model.vis.quality.offsamples = 0
  model.light_castshadow[:] = 0
  model.mat_reflectance[:] = 0


class TaskSim:
  """One task's environment, expert and renderer, reused across that task's episodes."""

  def __init__(self, task: str, config: SimConfig):
    mujoco, env_dict, policies = _import_sim()
    key = f"{task}-goal-observable"
    if key not in env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE:
      raise ValueError(f"unknown Meta-World v3 task {task!r}")
    if task not in policies.ENV_POLICY_MAP:
      raise ValueError(f"Meta-World ships no scripted expert for {task!r}")
    self.task, self.config = task, config
    self.env = env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[key]()
    self.env.max_path_length = config.max_steps
    self.policy = policies.ENV_POLICY_MAP[task]()
    if config.fast_render:
      disable_expensive_rendering(self.env.model)
    self._renderer = mujoco.Renderer(self.env.model, config.image_size, config.image_size)

  def reset(self, seed: int) -> np.ndarray:
    """Resets to the initial state drawn from `seed` (object and goal positions)."""
    env = self.env
    env._freeze_rand_vec = False  # pylint: disable=protected-access
    env.seeded_rand_vec = True    # draw the task randomisation from env.np_random ...
    env.seed(seed)                # ... seeded here; reset() also clears all MjData.
    obs, _ = env.reset()
    env._freeze_rand_vec = True   # pylint: disable=protected-access
    return obs

  def render(self) -> np.ndarray:
    """uint8 [S, S, 3] upright frame of the current state."""
    self._renderer.update_scene(self.env.data, camera=self.config.camera)
    # corner2's up axis points down in the world: rotate 180 degrees (a flip would mirror it).
    return np.ascontiguousarray(np.rot90(self._renderer.render(), 2))

  def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
    obs, reward, _, _, info = self.env.step(action)
    return obs, float(reward), bool(info["success"])

  def run_expert(self, seed: int) -> dict[str, Any]:
    """Runs the expert from `seed`; stops `steps_after_success` steps after success or at max_steps.

    Returns numpy arrays: image [T,S,S,3], state [T,39], action [T,4], reward [T], branch [T]
    and success_step (None if the episode failed).
    """
    spec = PHASE_SPECS.get(self.task)
    cfg = self.config
    obs = self.reset(seed)
    out = {k: [] for k in ("image", "state", "action", "reward", "branch")}
    success_step = None
    for t in range(cfg.max_steps):
      out["image"].append(self.render())
      out["state"].append(obs)
      # Copies: some experts (door-open) write into the observation they are given.
      out["branch"].append(spec.branch(obs.copy())[0] if spec else 0)
      action = np.clip(self.policy.get_action(obs.copy()), -1.0, 1.0).astype(np.float32)
      out["action"].append(action)
      obs, reward, success = self.step(action)
      out["reward"].append(reward)
      if success and success_step is None:
        success_step = t
      if success_step is not None and t >= success_step + cfg.steps_after_success:
        break
    episode = {k: np.asarray(v) for k, v in out.items()}
    episode["success_step"] = success_step
    return episode

  def replay(self, seed: int, actions: np.ndarray) -> dict[str, np.ndarray]:
    """Replays `actions` from `seed`: image [T,S,S,3] and state [T,39] before each action."""
    obs = self.reset(seed)
    images, states = [], []
    for action in np.asarray(actions, np.float32):
      images.append(self.render())
      states.append(obs)
      obs, _, _ = self.step(action)
    return {"image": np.asarray(images), "state": np.asarray(states)}

  def close(self) -> None:
    self._renderer.close()
    self.env.close()


def to_rlds_episode(task: str, seed: int, rollout: dict[str, Any], min_phase_steps: int) -> dict:
  """A successful expert rollout -> the raw RLDS episode (see the module docstring)."""
  num_steps = len(rollout["action"])
  starts, phase_ids = debounce(rollout["branch"], min_phase_steps)
  spec = PHASE_SPECS.get(task)
  names = [spec.names[i] for i in phase_ids] if spec else [UNMAPPED_PHASE]
  is_last = np.arange(num_steps) == num_steps - 1
  return {
      "steps": {
          "observation": {
              "image": rollout["image"].astype(np.uint8),
              "state": rollout["state"].astype(np.float32),
          },
          "action": rollout["action"].astype(np.float32),
          "reward": rollout["reward"].astype(np.float32),
          "discount": np.ones(num_steps, np.float32),
          "is_first": np.arange(num_steps) == 0,
          "is_last": is_last,
          # Meta-World never terminates (terminated is always False); stopping after success
          # is a truncation.
          "is_terminal": np.zeros(num_steps, bool),
          "language_instruction": [instruction(task)] * num_steps,
      },
      "episode_metadata": {
          "task": task,
          "seed": np.int64(seed),
          "source": f"{task}/seed={seed}",
          "phase_start_steps": starts,
          "phase_names": names,
      },
  }


@dataclasses.dataclass(frozen=True)
class ShardSpec:
  """One shard's work: its episode slots (task, index within the split's task) and seeds."""
  split: str
  index: int
  num_shards: int
  slots: tuple[tuple[str, int], ...]
  base_seed: int
  sim: SimConfig


# Per-process cache of TaskSims: building an env and GL context costs ~0.2 s, an episode ~0.5 s.
_SIMS: dict[tuple[str, SimConfig], TaskSim] = {}


def _task_sim(task: str, config: SimConfig) -> TaskSim:
  if (task, config) not in _SIMS:
    _SIMS[(task, config)] = TaskSim(task, config)
  return _SIMS[(task, config)]


def simulate_shard(spec: ShardSpec) -> dict[str, Any]:
  """Worker entry: the shard's successful episodes, a function of the spec only.

  Each slot tries seeds `episode_seed(base_seed, split, task, index, attempt)` for attempt =
  0, 1, ... until the expert succeeds within max_steps.

  Returns:
    {"spec", "episodes", "failed_attempts", "num_steps", "seconds"}.
  """
  start = time.perf_counter()
  episodes, failed = [], 0
  for task, slot in spec.slots:
    sim = _task_sim(task, spec.sim)
    for attempt in range(spec.sim.max_attempts):
      seed = episode_seed(spec.base_seed, spec.split, task, slot, attempt)
      rollout = sim.run_expert(seed)
      if rollout["success_step"] is not None:
        episodes.append(to_rlds_episode(task, seed, rollout, spec.sim.min_phase_steps))
        break
      failed += 1
    else:
      raise RuntimeError(
          f"{task}: the expert failed {spec.sim.max_attempts} times in a row at slot {slot} of "
          f"split {spec.split!r} (max_steps={spec.sim.max_steps})")
  return {
      "spec": spec,
      "episodes": episodes,
      "failed_attempts": failed,
      "num_steps": sum(len(e["steps"]["action"]) for e in episodes),
      "seconds": time.perf_counter() - start,
  }


def replay(task: str, seed: int, actions: np.ndarray, config: SimConfig = SimConfig()) -> dict:
  """Replays `actions` from `seed` in a fresh env (run it in a spawned process, not beside TF)."""
  sim = TaskSim(task, config)
  try:
    return sim.replay(seed, actions)
  finally:
    sim.close()


def render_ms_per_frame(task: str = "pick-place-v3", config: SimConfig = SimConfig(),
                        num_frames: int = 100) -> float:
  """Wall milliseconds per rendered frame (after one warm-up frame) of `task`'s initial state."""
  sim = TaskSim(task, config)
  try:
    sim.reset(0)
    sim.render()
    start = time.perf_counter()
    for _ in range(num_frames):
      sim.render()
    return (time.perf_counter() - start) / num_frames * 1e3
  finally:
    sim.close()


def expert_branch_check(task: str, seed: int, num_steps: int = 60) -> float:
  """Max |gain * (target - hand) - expert delta| over a rollout without rendering.

  Verifies that PHASE_SPECS[task] mirrors the shipped expert's branches (0 up to float error).
  Uses only the env and policy, so it runs in-process (no GL context).
  """
  _, env_dict, policies = _import_sim()
  env = env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-goal-observable"]()
  env._freeze_rand_vec = False  # pylint: disable=protected-access
  env.seeded_rand_vec = True
  env.seed(seed)
  obs, _ = env.reset()
  policy, spec = policies.ENV_POLICY_MAP[task](), PHASE_SPECS[task]
  worst = 0.0
  for _ in range(num_steps):
    _, target, gain = spec.branch(obs.copy())
    action = policy.get_action(obs.copy())
    worst = max(worst, float(np.abs(gain * (target - obs[:3]) - action[:3]).max()))
    obs, _, _, _, _ = env.step(np.clip(action, -1.0, 1.0))
  env.close()
  return worst
