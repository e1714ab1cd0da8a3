"""BabyAI (minigrid) evaluation: N environments in this process, one batched `act` per step.

Observations are made exactly as the dataset generator (`data_pipeline/generators/babyai.py`)
records them (both render through `data_pipeline/sim/babyai.py`) and the standardize function
(`data_pipeline/standardize/babyai.py`) maps them:
`image_primary` = the view the dataset was generated with (`view` "egocentric": minigrid's
`RGBImgPartialObsWrapper`, 8-pixel tiles, 56x56; "room": the agent's room fully observed, 7-pixel
tiles, 56x56; `sim.render_settings(dataset_dir)` reads them back and `check_render_settings`
refuses a mismatch), after the tfds JPEG round trip (`jpeg=True`); `proprio` = one-hot facing
direction (4).

Held-out seeds. The generator draws env seeds `((seed * 10 + split) * 10^4 + shard) * 10^4 +
attempt` with split ids train 0 / val 1 (`sim.episode_seed`). Evaluation episode i uses the same
formula with split id `sim.TEST_SPLIT_ID` = 2 and (shard, attempt) = divmod(i, 10^4): the split
digit differs, so evaluation seeds never coincide with any train / val seed, for any base seeds.

The evaluated seed list is fixed by (seed, num_episodes); environments that finish take the next
unused seed, so which seeds are evaluated (and, for a policy whose actions depend only on its own
row, every result) does not depend on num_envs. Success: the env terminated with reward > 0.
"""
from __future__ import annotations

import contextlib
import io
import time
from typing import Any

from absl import logging
import numpy as np

from data_pipeline.sim import babyai as sim
from hilam_jax.evaluation import policy_api
from hilam_jax.evaluation import stats
from hilam_jax.evaluation import video

test_seed = sim.test_seed


def observation(raw_obs: dict[str, Any], jpeg: bool = True) -> dict[str, np.ndarray]:
  """One env's RGBImgPartialObsWrapper observation -> {image_primary, proprio} as in training."""
  return {"image_primary": policy_api.preprocess_image(raw_obs["image"], jpeg),
          "proprio": sim.proprio(raw_obs["direction"])}


def check_render_settings(dataset_dir: str, level: str, view: str, tile_size: int) -> None:
  """Raises if the evaluation would render differently from the dataset the policy learnt from."""
  recorded = sim.render_settings(dataset_dir)
  asked = {"level": level, "view": view, "tile_size": int(tile_size)}
  if recorded != asked:
    raise ValueError(f"evaluation renders {asked} but {dataset_dir} was generated with "
                     f"{recorded}: the policy would see frames unlike its training data")


class ExpertPolicy:
  """minigrid's BabyAIBot as a `Policy`; the harness hands it each env on episode start.

  If the bot gives up (the exceptions the generator also treats as expert failure) it answers
  `done` (a no-op in BabyAI) until the next episode, which then fails at the step limit. Rows
  whose environment has no episode left keep being asked; their answers are ignored.
  """

  def __init__(self):
    self._bots: list[Any] = []

  def reset(self, num_envs: int) -> None:
    self._bots = [None] * num_envs

  def on_episode_start(self, env_index: int, env: Any) -> None:
    self._bots[env_index] = sim.baby_ai_bot.BabyAIBot(env)

  def act(self, obs, instructions, first):
    actions = np.full(len(instructions), sim.DONE_ACTION, np.int64)
    for i, bot in enumerate(self._bots):
      if bot is None:
        continue
      try:
        actions[i] = int(bot.replan())
      except sim.BOT_FAILURES:
        self._bots[i] = None  # gave up: `done` until the next episode
    return actions


def evaluate_babyai(policy: policy_api.Policy, level: str, *, num_episodes: int,
                    num_envs: int = 16, seed: int = 0, max_steps: int | None = None,
                    video_dir: str | None = None, num_videos: int = 2, jpeg: bool = True,
                    tile_size: int = 8, view: str = "egocentric",
                    log_every_seconds: float = 60.0) -> stats.EvalResult:
  """Evaluates `policy` on `num_episodes` held-out seeds of `level`.

  Args:
    policy: a `Policy`; if it has `on_episode_start` (`EpisodeStartHook`) it is called with each
      env right after its reset (BabyAI's expert needs the env).
    level: a registered BabyAI level, e.g. "BabyAI-GoToLocal-v0".
    num_episodes: episodes to evaluate, seeds `test_seed(seed, 0..num_episodes-1)`.
    num_envs: environments stepped together (rows of each `act` call; capped at num_episodes).
    seed: base seed of the evaluation seeds.
    max_steps: step limit per episode; None: the level's own limit (env.unwrapped.max_steps).
    video_dir: if set, GIFs of episodes 0..num_videos-1 are written there.
    num_videos: how many episodes to record.
    jpeg: apply the tfds JPEG round trip to the images (as in the training data).
    tile_size: pixels per grid cell, as the training data was rendered.
    view: "egocentric" or "room", as the training data was rendered (`check_render_settings`).
    log_every_seconds: progress logging period.

  Returns:
    EvalResult with one record per seed, in seed order.
  """
  if num_episodes <= 0:
    raise ValueError(f"num_episodes={num_episodes}")
  num_envs = max(1, min(num_envs, num_episodes))
  envs = [sim.make_env(level, tile_size, view) for _ in range(num_envs)]
  hook = policy.on_episode_start if isinstance(policy, policy_api.EpisodeStartHook) else None
  policy.reset(num_envs)

  episode_of = [-1] * num_envs          # episode index each env is running (-1: none left)
  length = [0] * num_envs
  rows: list[dict[str, np.ndarray]] = [{}] * num_envs   # last preprocessed observation
  instructions = [""] * num_envs
  first = np.zeros(num_envs, bool)
  records: list[stats.EpisodeRecord | None] = [None] * num_episodes
  frames: dict[int, list[np.ndarray]] = {}
  next_episode = 0

  def start(i: int) -> None:
    nonlocal next_episode
    if next_episode >= num_episodes:
      episode_of[i] = -1
      return
    episode_of[i], length[i] = next_episode, 0
    with contextlib.redirect_stdout(io.StringIO()):  # BabyAI prints rejected level samples
      raw, _ = envs[i].reset(seed=test_seed(seed, next_episode))
    rows[i], instructions[i] = observation(raw, jpeg), str(raw["mission"])
    first[i] = True
    if video_dir and next_episode < num_videos:
      frames[next_episode] = [raw["image"]]
    next_episode += 1
    if hook is not None:
      hook(i, envs[i])

  for i in range(num_envs):
    start(i)
  start_time = last_log = time.perf_counter()
  env_steps = done = 0
  while any(e >= 0 for e in episode_of):
    actions = np.asarray(policy.act(policy_api.stack_observations(rows), list(instructions),
                                    first.copy()))
    if actions.shape[:1] != (num_envs,):
      raise ValueError(f"policy returned actions of shape {actions.shape}; expected "
                       f"({num_envs},)")
    first[:] = False
    for i, env in enumerate(envs):
      episode = episode_of[i]
      if episode < 0:
        continue
      raw, reward, terminated, truncated, _ = env.step(int(actions[i]))
      length[i] += 1
      env_steps += 1
      if episode in frames:
        frames[episode].append(raw["image"])
      limit = max_steps or env.unwrapped.max_steps
      if terminated or truncated or length[i] >= limit:
        records[episode] = stats.EpisodeRecord(
            seed=test_seed(seed, episode), success=bool(terminated and reward > 0),
            length=length[i], instruction=instructions[i], task=level)
        done += 1
        if episode in frames:
          video.write_video(video.video_path(video_dir, level, episode, records[episode].seed,
                                             records[episode].success, instructions[i]),
                            frames.pop(episode), scale=4)
        start(i)
      else:
        rows[i] = observation(raw, jpeg)
    now = time.perf_counter()
    if now - last_log > log_every_seconds:
      last_log = now
      successes = sum(r.success for r in records if r is not None)
      logging.info("%s: %d/%d episodes, %d successes, %.0f env-steps/s", level, done,
                   num_episodes, successes, env_steps / (now - start_time))
  for env in envs:
    env.close()
  result = stats.EvalResult.from_records(records)
  logging.info("%s: %s (%.0f env-steps/s)", level, result.summary(),
               env_steps / max(time.perf_counter() - start_time, 1e-9))
  return result
