"""Meta-World evaluation in spawned simulator workers stepped in lockstep with one batched policy.

Also the generic lockstep machinery that `libero.py` reuses:

  parent (may have TensorFlow / JAX)            workers ("spawn"; never import TensorFlow)
  ----------------------------------            ------------------------------------------
  assign the next episodes to free env slots -> reset those slots' sims, send observations
  stack N observations, ONE `policy.act`     -> step every active slot, send (observation, success)
  end episodes (success / max steps), record

Env slot s lives in worker s % num_workers. Observations are preprocessed inside the workers
(`image_primary` 64x64 from the `corner2` camera rotated 180 degrees, fast rendering, as
`data_pipeline/sim/metaworld.py` records them; tfds JPEG round trip; `proprio` = the
first 4 state values as in `data_pipeline/standardize/metaworld.py`).

Episodes: for each task, `episodes_per_task` seeds `metaworld_sim.episode_seed(seed, "test", task,
i, 0)` (the generator uses splits "train" / "val": the split is hashed into the seed, so these are
held out up to a 2^-32 chance per pair). Success = `info["success"]` at any step (Meta-World's
convention); an episode ends `steps_after_success` steps after its first success or at max_steps.

Scripted experts (`ExpertPolicy`) need the full 39-d state, which stays in the workers: a policy
with `privileged_expert = True` makes the workers compute the scripted action for every
observation; the parent hands them to `policy.set_expert_actions` before `act`.

Shutdown: workers exit on a "close" message, on EOF (parent gone) or on error (traceback sent to
the parent, which raises). The parent closes, joins and if needed terminates every worker in a
`finally`, so an exception in the policy leaves no process behind.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import time
import traceback
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np

from data_pipeline.sim import metaworld as metaworld_sim
from hilam_jax.evaluation import policy_api
from hilam_jax.evaluation import stats
from hilam_jax.evaluation import video

_OBS_KEYS = ("image_primary", "image_wrist", "proprio")
# Hand xyz + gripper opening: PROPRIO_DIM of data_pipeline/standardize/metaworld.py, not imported
# from there because that module imports TensorFlow, which the workers must not.
PROPRIO_DIM = 4
_REPLY_TIMEOUT_SECONDS = 600.0


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
  """One evaluation episode: which sim (`task`), its seed / initial-state index and step limit."""
  task: str
  key: int
  instruction: str
  max_steps: int


# ----------------------------------------------------------------------------- workers


def _worker_main(conn: Any, factory: Callable[[str], Any], expert: bool) -> None:
  """Worker loop. `factory(task)` builds a sim with reset(key) and step(action) -> payloads.

  A payload is {image_primary, [image_wrist], proprio, frame (raw, for videos), [instruction],
  [expert_action]}; `step` returns (payload, success).
  """
  sims: dict[tuple[int, str], Any] = {}
  current: dict[int, Any] = {}
  recording: dict[int, bool] = {}

  def reply(slot, payload, success):
    out = {k: payload[k] for k in _OBS_KEYS + ("instruction",) if k in payload}
    if expert:
      out["expert_action"] = payload["expert_action"]
    if recording[slot]:
      out["frame"] = payload["frame"]
    return out, bool(success)

  try:
    while True:
      try:
        command, arg = conn.recv()
      except EOFError:
        return  # the parent is gone
      if command == "close":
        return
      out = {}
      if command == "reset":
        for slot, (task, key, record) in arg.items():
          if (slot, task) not in sims:
            sims[(slot, task)] = factory(task)
          current[slot], recording[slot] = sims[(slot, task)], record
          out[slot] = reply(slot, current[slot].reset(key), False)
      elif command == "step":
        for slot, action in arg.items():
          out[slot] = reply(slot, *current[slot].step(action))
      else:
        raise ValueError(f"unknown command {command!r}")
      conn.send(("ok", out))
  except BaseException:  # pylint: disable=broad-except
    try:
      conn.send(("error", traceback.format_exc()))
    except (OSError, ValueError):
      pass
  finally:
    for sim in sims.values():
      try:
        sim.close()
      except Exception:  # pylint: disable=broad-except
        pass


class WorkerPool:
  """`num_workers` spawned sim workers; `request` sends one command per worker and gathers."""

  def __init__(self, factory: Callable[[str], Any], num_workers: int, expert: bool = False):
    context = multiprocessing.get_context("spawn")
    self._conns, self.processes = [], []
    try:
      for _ in range(num_workers):
        parent_conn, child_conn = context.Pipe()
        process = context.Process(target=_worker_main, args=(child_conn, factory, expert),
                                  daemon=True)
        process.start()
        child_conn.close()
        self._conns.append(parent_conn)
        self.processes.append(process)
    except BaseException:
      self.close()
      raise

  def request(self, command: str, per_worker: dict[int, dict[int, Any]]) -> dict[int, Any]:
    """Sends (command, arg) to each worker in `per_worker`, then merges their replies by slot."""
    for worker, arg in per_worker.items():
      self._conns[worker].send((command, arg))
    merged = {}
    for worker in per_worker:
      conn = self._conns[worker]
      if not conn.poll(_REPLY_TIMEOUT_SECONDS):
        raise RuntimeError(f"sim worker {worker} sent nothing for {_REPLY_TIMEOUT_SECONDS} s")
      try:
        status, payload = conn.recv()
      except EOFError as e:
        raise RuntimeError(f"sim worker {worker} died (exit code "
                           f"{self.processes[worker].exitcode})") from e
      if status != "ok":
        raise RuntimeError(f"sim worker {worker} failed:\n{payload}")
      merged.update(payload)
    return merged

  def close(self) -> None:
    for conn in self._conns:
      try:
        conn.send(("close", None))
      except (OSError, ValueError):
        pass
    for process in self.processes:
      process.join(timeout=10)
      if process.is_alive():
        process.terminate()
        process.join(timeout=5)
      if process.is_alive():
        process.kill()
        process.join()
    for conn in self._conns:
      conn.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def run_lockstep(policy: policy_api.Policy, episodes: Sequence[EpisodeSpec],
                 factory: Callable[[str], Any], *, num_workers: int, envs_per_worker: int,
                 steps_after_success: int = 0, video_dir: str | None = None,
                 num_videos: int = 0, name: str = "eval",
                 log_every_seconds: float = 60.0) -> stats.EvalResult:
  """Runs `episodes` (in this order over free env slots) through spawned workers.

  Returns:
    EvalResult with records in `episodes` order (seed = the episode's key).
  """
  if not episodes:
    raise ValueError("no episodes to evaluate")
  num_slots = max(1, min(num_workers * envs_per_worker, len(episodes)))
  num_workers = max(1, min(num_workers, num_slots))
  expert = bool(getattr(policy, "privileged_expert", False))
  policy.reset(num_slots)

  episode_of = [-1] * num_slots
  length = [0] * num_slots
  success_at: list[int | None] = [None] * num_slots
  rows: list[dict[str, np.ndarray]] = [{}] * num_slots
  expert_actions: list[Any] = [None] * num_slots
  instructions = [""] * num_slots
  first = np.zeros(num_slots, bool)
  records: list[stats.EpisodeRecord | None] = [None] * len(episodes)
  frames: dict[int, list[np.ndarray]] = {}
  next_episode, done, env_steps = 0, 0, 0

  def take(slot, reply):
    payload, _ = reply
    rows[slot] = {k: payload[k] for k in _OBS_KEYS if k in payload}
    expert_actions[slot] = payload.get("expert_action")
    if "instruction" in payload:
      instructions[slot] = payload["instruction"]
    if episode_of[slot] in frames:
      frames[episode_of[slot]].append(payload["frame"])

  start_time = last_log = time.perf_counter()
  with WorkerPool(factory, num_workers, expert) as pool:
    free = list(range(num_slots))
    while True:
      resets: dict[int, dict[int, Any]] = {}
      for slot in free:
        if next_episode >= len(episodes):
          episode_of[slot] = -1
          continue
        spec = episodes[next_episode]
        episode_of[slot], length[slot], success_at[slot] = next_episode, 0, None
        instructions[slot], first[slot] = spec.instruction, True
        record = bool(video_dir) and next_episode < num_videos
        if record:
          frames[next_episode] = []
        resets.setdefault(slot % num_workers, {})[slot] = (spec.task, spec.key, record)
        next_episode += 1
      free = []
      if resets:
        for slot, reply in pool.request("reset", resets).items():
          take(slot, reply)
      active = [s for s in range(num_slots) if episode_of[s] >= 0]
      if not active:
        break
      if expert:
        policy.set_expert_actions(np.stack([
            expert_actions[s] if expert_actions[s] is not None else expert_actions[active[0]]
            for s in range(num_slots)]))
      actions = np.asarray(policy.act(policy_api.stack_observations(rows), list(instructions),
                                      first.copy()), np.float32)
      if actions.ndim != 2 or actions.shape[0] != num_slots:
        raise ValueError(f"policy returned actions of shape {actions.shape}; expected "
                         f"({num_slots}, action_dim)")
      first[:] = False
      steps: dict[int, dict[int, Any]] = {}
      for slot in active:
        steps.setdefault(slot % num_workers, {})[slot] = actions[slot]
      for slot, reply in pool.request("step", steps).items():
        take(slot, reply)
        length[slot] += 1
        env_steps += 1
        if reply[1] and success_at[slot] is None:
          success_at[slot] = length[slot]
        spec = episodes[episode_of[slot]]
        if ((success_at[slot] is not None
             and length[slot] - success_at[slot] >= steps_after_success)
            or length[slot] >= spec.max_steps):
          episode = episode_of[slot]
          records[episode] = stats.EpisodeRecord(
              seed=spec.key, success=success_at[slot] is not None, length=length[slot],
              instruction=instructions[slot], task=spec.task)
          done += 1
          if episode in frames:
            video.write_video(video.video_path(video_dir, spec.task, episode, spec.key,
                                               records[episode].success, instructions[slot]),
                              frames.pop(episode), scale=2)
          free.append(slot)
      now = time.perf_counter()
      if now - last_log > log_every_seconds:
        last_log = now
        logging.info("%s: %d/%d episodes, %d successes, %.1f env-steps/s", name, done,
                     len(episodes), sum(r.success for r in records if r is not None),
                     env_steps / (now - start_time))
  result = stats.EvalResult.from_records(records)
  seconds = time.perf_counter() - start_time
  logging.info("%s: %s; %d env-steps in %.1f s (%.1f/s)", name, result.summary(), env_steps,
               seconds, env_steps / max(seconds, 1e-9))
  return result


# ----------------------------------------------------------------------------- Meta-World


class _MetaWorldSim:
  """Worker side: one task's `metaworld_sim.TaskSim` with the training observation layout."""

  def __init__(self, task: str, config: metaworld_sim.SimConfig, jpeg: bool, expert: bool):
    self._sim = metaworld_sim.TaskSim(task, config)
    self._jpeg, self._expert = jpeg, expert
    self._obs = None

  def _payload(self) -> dict[str, Any]:
    frame = self._sim.render()
    out = {"image_primary": policy_api.preprocess_image(frame, self._jpeg),
           "proprio": np.asarray(self._obs[:PROPRIO_DIM], np.float32),
           "frame": frame}
    if self._expert:
      # A copy: some experts (door-open) write into the observation they are given.
      out["expert_action"] = np.clip(self._sim.policy.get_action(self._obs.copy()), -1.0,
                                     1.0).astype(np.float32)
    return out

  def reset(self, seed: int) -> dict[str, Any]:
    self._obs = self._sim.reset(seed)
    return self._payload()

  def step(self, action: np.ndarray) -> tuple[dict[str, Any], bool]:
    self._obs, _, success = self._sim.step(np.clip(np.asarray(action, np.float32), -1.0, 1.0))
    return self._payload(), success

  def close(self) -> None:
    self._sim.close()


@dataclasses.dataclass(frozen=True)
class MetaWorldSimFactory:
  """Picklable sim builder sent to the workers."""
  config: metaworld_sim.SimConfig
  jpeg: bool = True
  expert: bool = False

  def __call__(self, task: str) -> _MetaWorldSim:
    return _MetaWorldSim(task, self.config, self.jpeg, self.expert)


class ExpertPolicy:
  """Meta-World's scripted expert (`metaworld.policies`), run inside the workers.

  The workers compute its actions from the full state (`privileged_expert`); this object only
  passes them through `act`, so the expert is evaluated by the same episode code as any policy.
  """
  privileged_expert = True

  def __init__(self):
    self._actions = None

  def reset(self, num_envs: int) -> None:
    del num_envs

  def set_expert_actions(self, actions: np.ndarray) -> None:
    self._actions = np.asarray(actions, np.float32)

  def act(self, obs, instructions, first):
    del obs, instructions, first
    return self._actions


def task_name(task: str) -> str:
  """'reach' -> 'reach-v3' (names already ending in -vN pass unchanged)."""
  return task if task.rsplit("-", 1)[-1].startswith("v") and task[-1].isdigit() else task + "-v3"


def evaluate_metaworld(policy: policy_api.Policy, tasks: Sequence[str], *,
                       episodes_per_task: int, num_workers: int = 2, envs_per_worker: int = 4,
                       max_steps: int = 500, steps_after_success: int = 0, seed: int = 0,
                       video_dir: str | None = None, num_videos: int = 2, jpeg: bool = True,
                       image_size: int = 64, camera: str = "corner2",
                       log_every_seconds: float = 60.0) -> stats.EvalResult:
  """Evaluates `policy` on `episodes_per_task` held-out seeds of each Meta-World v3 task.

  Args:
    policy: a `Policy` returning float32 [N, 4] actions in [-1, 1] (clipped), or `ExpertPolicy()`.
    tasks: task names, "reach" or "reach-v3".
    episodes_per_task: episodes per task (seeds in the module docstring).
    num_workers: spawned simulator processes.
    envs_per_worker: environments per worker; N = num_workers * envs_per_worker rows per `act`
      (fewer if there are fewer episodes).
    max_steps: step limit per episode (Meta-World's own: 500).
    steps_after_success: steps still taken after the first success before the episode ends.
    seed: base seed of the evaluation seeds.
    video_dir: if set, GIFs of the first `num_videos` episodes (episodes interleave the tasks:
      episode k is task k % len(tasks)).
    jpeg: tfds JPEG round trip on the images (as in the training data).
    image_size, camera: must match the training data (the generator's defaults).

  Returns:
    EvalResult over all episodes (`per_task()` splits it), records in episode order.
  """
  tasks = [task_name(t) for t in tasks]
  episodes = [EpisodeSpec(task, metaworld_sim.episode_seed(seed, "test", task, i, 0),
                          metaworld_sim.instruction(task), max_steps)
              for i in range(episodes_per_task) for task in tasks]
  config = metaworld_sim.SimConfig(image_size=image_size, camera=camera, fast_render=True,
                                   max_steps=max_steps)
  factory = MetaWorldSimFactory(config, jpeg, bool(getattr(policy, "privileged_expert", False)))
  return run_lockstep(policy, episodes, factory, num_workers=num_workers,
                      envs_per_worker=envs_per_worker, steps_after_success=steps_after_success,
                      video_dir=video_dir, num_videos=num_videos,
                      name=f"metaworld[{','.join(tasks)}]", log_every_seconds=log_every_seconds)
