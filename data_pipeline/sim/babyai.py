"""BabyAI simulation shared by the dataset generator and the evaluation: envs, views, seeds, bot.

The generator (`data_pipeline/generators/babyai.py`) records what `make_env` renders and the
evaluation (`hilam_jax/evaluation/babyai.py`) renders through the same `make_env`, so a policy
sees at test time exactly the frames it was trained on.

Views (`make_env(level, tile_size, view)`; the dataset records both in its generation_info):
  "egocentric"  minigrid's `RGBImgPartialObsWrapper`: the agent's 7x7-cell partial view, the agent
                at the bottom centre facing up (8-px tiles -> 56x56). What BabyAI's agents see.
  "room"        `RoomObsWrapper`: the whole room the agent stands in (walls and doors included,
                8x8 cells in BabyAI's default rooms), fully observed, agent drawn as a triangle
                pointing its way (7-px tiles -> 56x56). A carried object is not drawn (as in
                minigrid); it has left the room's floor. One room of a multi-room level is what
                the local levels (GoToLocal, PickupLoc, UnlockLocal, PutNextLocal) need.

Expert and labels: `TracingBot` is minigrid's `BabyAIBot` recording when its initial subgoals and
leaf instructions are done (the generator's docstring explains the labelling rule);
`simulate_episode` runs it from a seed and returns a numpy episode.

Seeds: env seed = ((seed * 10 + split) * 10^4 + shard) * 10^4 + attempt, split ids train 0,
val 1 (`episode_seed`), test 2 (`test_seed`, used by the evaluation): disjoint across splits and
shards for any base seeds.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any

import gymnasium as gym
import minigrid  # noqa: F401  (registers the BabyAI environments with gymnasium)
from minigrid.envs.babyai.core import verifier
from minigrid.utils import baby_ai_bot
from minigrid.wrappers import RGBImgPartialObsWrapper
import numpy as np

VIEWS = ("egocentric", "room")

IMAGE_SIZE = 56  # 7x7 egocentric view x 8-pixel tiles.
NUM_DIRECTIONS = 4
ACTION_NAMES = ("left", "right", "forward", "pickup", "drop", "toggle", "done")
DONE_ACTION = ACTION_NAMES.index("done")
SPLIT_IDS = {"train": 0, "val": 1}
TEST_SPLIT_ID = 2
# Environment seed = ((seed * 10 + split) * 10^4 + shard) * 10^4 + attempt: disjoint across
# splits and shards (train and val never share a layout), readable in `episode_metadata/source`.
MAX_SHARDS = 10_000
MAX_ATTEMPTS = 10_000
# The expert's failures (the level may still be solvable, but not by this bot).
BOT_FAILURES = (baby_ai_bot.DisappearedBoxError, AssertionError, IndexError)


# ----------------------------------------------------------------------------- simulation


def _desc_text(desc: Any) -> str:
  """'red ball', 'door (left)': an ObjDesc as text, without `surface()`, which re-scans the grid."""
  text = " ".join(x for x in (desc.color, desc.type or "object") if x)
  return f"{text} ({desc.loc})" if desc.loc else text


def _instr_text(instr: Any) -> str:
  if isinstance(instr, verifier.GoToInstr):
    return f"go to {_desc_text(instr.desc)}"
  if isinstance(instr, verifier.OpenInstr):
    return f"open {_desc_text(instr.desc)}"
  if isinstance(instr, verifier.PickupInstr):
    return f"pick up {_desc_text(instr.desc)}"
  if isinstance(instr, verifier.PutNextInstr):
    return f"put {_desc_text(instr.desc_move)} next to {_desc_text(instr.desc_fixed)}"
  return type(instr).__name__


def _subgoal_text(subgoal: baby_ai_bot.Subgoal) -> str:
  """'GoNextTo(red ball, PutNext)', 'Pickup': a short name for an initial subgoal."""
  args = []
  if isinstance(subgoal.datum, verifier.ObjDesc):
    args.append(_desc_text(subgoal.datum))
  elif subgoal.datum is not None:
    args.append(str(subgoal.datum))
  if subgoal.reason:
    args.append(subgoal.reason)
  name = type(subgoal).__name__.removesuffix("Subgoal")
  return f"{name}({', '.join(args)})" if args else name


class TracingBot(baby_ai_bot.BabyAIBot):
  """BabyAIBot that records when its initial subgoals and leaf instructions are done.

  Attributes (valid after the episode; positions count from the stack bottom):
    leaf_spans: per leaf instruction, (instr, first, end) stack positions of its subgoals.
    initial_names: text of the initial subgoal at each position.
    done_frame: per position, the frame at which that subgoal was done (-1: not yet).
    acting: per replan (= per frame with an action), (kind, name) of the subgoal on top of the
      stack that returned the action, initial or helper (go to the key, pick it up, move a
      blocker, explore, ...): kind "navigation" (GoNextTo, Explore; name: the target object, or
      None for a grid position) or "interaction" (Pickup, Drop, Open, Close; name: the
      subgoal), ("done", None) once the stack is empty. See `leaf_runs`.
  """

  def __init__(self, env: gym.Env):
    self.leaf_spans: list[tuple[Any, int, int]] = []
    self._num_replans = 0
    super().__init__(env)  # Calls _process_instr, which fills leaf_spans.
    self.initial_names = [_subgoal_text(s) for s in self.stack]
    self.done_frame = [-1] * len(self.stack)
    self.acting: list[str] = []

  def _process_instr(self, instr):
    if isinstance(instr, (verifier.BeforeInstr, verifier.AfterInstr, verifier.AndInstr)):
      return super()._process_instr(instr)  # Recurses into this method for each clause.
    first = len(self.stack)
    super()._process_instr(instr)
    self.leaf_spans.append((instr, first, len(self.stack)))

  def _note_depth(self) -> None:
    """Marks initial subgoals at positions >= the stack height as done at this frame."""
    for position in range(len(self.stack), len(self.done_frame)):
      if self.done_frame[position] < 0:
        self.done_frame[position] = self._num_replans

  def replan(self, action_taken=None):
    """`BabyAIBot.replan` of minigrid 3.2, checking the stack height after each subgoal method.

    Checking after every method (not once per frame) tells a finished subgoal, after which the
    subgoal below may push helpers back to the same height within the same frame, from a subgoal
    that replaced itself (pop + push inside one method), which is not finished.
    """
    self._process_obs()
    self._check_erroneous_box_opening(action_taken)
    for subgoal in self.stack:
      subgoal.update_agent_attributes()
    if self.stack:
      self.stack[-1].replan_after_action(action_taken)
      self._note_depth()
    while self.stack and self.stack[-1].is_exploratory():
      self.stack.pop()
      self._note_depth()
    suggested_action = None
    while self.stack:
      suggested_action = self.stack[-1].replan_before_action()
      self._note_depth()
      if suggested_action is not None:
        break
    if not self.stack:
      suggested_action = self.mission.unwrapped.actions.done
    self.acting.append(_acting(self.stack[-1]) if self.stack else ("done", None))
    self._remember_current_state()
    self._num_replans += 1
    return suggested_action

  def subtask_labels(self, last_frame: int) -> dict[str, Any]:
    """Done frames in execution order; subgoals never done count as done at `last_frame`."""
    done = [d if d >= 0 else last_frame for d in self.done_frame]
    order = list(range(len(done)))[::-1]  # The top of the stack is executed first.
    leaves = sorted(self.leaf_spans, key=lambda span: -span[1])
    leaf_of_position = {}
    for leaf_index, (_, first, end) in enumerate(leaves):
      for position in range(first, end):
        leaf_of_position[position] = leaf_index
    leaf_names, leaf_done = leaf_runs(self.acting, last_frame,
                                      frozenset(d for d in done if 0 < d < last_frame))
    return {
        "leaf_done_steps": np.array(leaf_done, np.int32),
        "leaf_names": leaf_names,
        "subgoal_done_steps": np.array([done[p] for p in order], np.int32),
        "subgoal_names": [self.initial_names[p] for p in order],
        "subgoal_instruction_index": np.array([leaf_of_position[p] for p in order], np.int32),
        "instruction_done_steps": np.array([done[first] for _, first, _ in leaves], np.int32),
        "instruction_names": [_instr_text(instr) for instr, _, _ in leaves],
    }


INTERACTIONS = ("Pickup", "Drop", "Open", "Close")


def _acting(subgoal: baby_ai_bot.Subgoal) -> tuple[str, str | None]:
  """(kind, name) of the subgoal that returns an action (`TracingBot.acting`)."""
  name = type(subgoal).__name__.removesuffix("Subgoal")
  if name in INTERACTIONS:
    return "interaction", name
  datum = subgoal.datum
  if isinstance(datum, verifier.ObjDesc):
    return "navigation", _desc_text(datum)
  if hasattr(datum, "type") and hasattr(datum, "color"):  # a WorldObj (e.g. the door to open)
    return "navigation", f"{datum.color} {datum.type}"
  return "navigation", None  # a grid position: exploration, a drop spot, a blocker's way out


def leaf_runs(acting: list[tuple[str, str | None]], last_frame: int,
              split_at: frozenset[int] = frozenset()) -> tuple[list[str], list[int]]:
  """Leaf subtasks from per-frame acting subgoals: (names, done steps) in the layout of the
  initial subgoals' labels (run i covers the frames from done[i - 1] up to done[i]; the last
  run ends at `last_frame`, the terminal observation).

  Consecutive navigation frames (going to objects, exploring, going to a position) form one run
  named after the last object it went to ("GoNextTo(red key)"; "GoNextTo(position)" if none);
  each interaction (Pickup, Drop, Open, Close) is a run of its own. UnlockLocal thus reads: go
  to the key, Pickup, go to the door, Open. A run also ends at every frame of `split_at` (the
  initial subgoals' starts), so leaf subtasks refine the initial ones.
  """
  runs: list[list] = []  # [kind, name, start, target]
  for frame, (kind, name) in enumerate(acting):
    if frame in split_at:
      pass  # always a new run
    elif runs and kind == "navigation" == runs[-1][0]:
      runs[-1][3] = name or runs[-1][3]
      continue
    elif runs and kind == runs[-1][0] and name == runs[-1][1]:
      continue
    runs.append([kind, name, frame, name])
  names = []
  for kind, name, _, target in runs:
    if kind == "navigation":
      names.append(f"GoNextTo({target or 'position'})")
    else:
      names.append(name or kind)
  done = [start for _, _, start, _ in runs[1:]] + ([last_frame] if runs else [])
  return names, done


class RoomObsWrapper(gym.ObservationWrapper):
  """obs["image"] = RGB render of the agent's room, [room_h * tile, room_w * tile, 3] uint8.

  Levels without rooms (plain minigrid envs) render the whole grid.
  """

  def __init__(self, env: gym.Env, tile_size: int = 7):
    super().__init__(env)
    self.tile_size = tile_size
    base = env.unwrapped
    if hasattr(base, "room_size"):
      height = width = base.room_size
    else:
      width, height = base.width, base.height
    image = gym.spaces.Box(0, 255, (height * tile_size, width * tile_size, 3), np.uint8)
    self.observation_space = gym.spaces.Dict({**self.observation_space.spaces, "image": image})

  def room_box(self) -> tuple[int, int, int, int]:
    """(x, y, width, height) in cells of the room the agent stands in."""
    base = self.env.unwrapped
    if hasattr(base, "room_from_pos"):
      room = base.room_from_pos(*base.agent_pos)
      return (*room.top, *room.size)
    return 0, 0, base.width, base.height

  def observation(self, obs):
    base = self.env.unwrapped
    x, y, width, height = self.room_box()
    agent_x, agent_y = base.agent_pos
    image = base.grid.slice(x, y, width, height).render(
        self.tile_size, agent_pos=(agent_x - x, agent_y - y), agent_dir=base.agent_dir)
    return {**obs, "image": image}


def make_env(level: str, tile_size: int = 8, view: str = "egocentric") -> gym.Env:
  """The level's env with obs["image"] rendered as `view` (module docstring) at `tile_size` px."""
  if view == "egocentric":
    return RGBImgPartialObsWrapper(gym.make(level), tile_size=tile_size)
  if view == "room":
    return RoomObsWrapper(gym.make(level), tile_size=tile_size)
  raise ValueError(f"unknown BabyAI view {view!r}; views: {VIEWS}")


def render_settings(dataset_dir: str) -> dict[str, Any]:
  """{level, view, tile_size} a generated BabyAI dataset was rendered with (generation_info.json).

  Datasets generated before the view knob existed are egocentric.
  """
  with open(os.path.join(dataset_dir, "generation_info.json")) as f:
    config = json.load(f)["config"]
  return {"level": config["level"], "view": config.get("view", "egocentric"),
          "tile_size": int(config["tile_size"])}


def image_size(level: str, tile_size: int, view: str) -> int:
  """Side in pixels of `view`'s square frames on `level` (egocentric: 7 cells)."""
  if view == "egocentric":
    return 7 * tile_size
  env = make_env(level, tile_size, view)
  size = env.observation_space["image"].shape
  env.close()
  if size[0] != size[1]:
    raise ValueError(f"{level}: the room view is not square ({size})")
  return size[0]


def reset(env: gym.Env, seed: int) -> dict:
  # BabyAI prints every rejected level sample ("Sampling rejected: ..."); keep the console clean.
  with contextlib.redirect_stdout(io.StringIO()):
    obs, _ = env.reset(seed=int(seed))
  return obs


def simulate_episode(level: str, seed: int, tile_size: int = 8, env: gym.Env | None = None,
                     view: str = "egocentric") -> dict[str, Any] | None:
  """Runs the bot on `level` from `seed`; returns a numpy episode, or None if the bot failed.

  Returns:
    dict with `image` uint8 [T, H, W, 3], `direction`, `action` int64 [T], `reward`, `discount`
    float32 [T], `mission` str, `level`, `seed` and the `TracingBot.subtask_labels`.
  """
  env = env or make_env(level, tile_size, view)
  obs = reset(env, seed)
  images, directions, actions, rewards = [obs["image"]], [obs["direction"]], [], []
  reward, terminated = 0.0, False
  try:
    bot = TracingBot(env)
    while True:
      action = int(bot.replan())
      obs, reward, terminated, truncated, _ = env.step(action)
      actions.append(action)
      rewards.append(reward)
      images.append(obs["image"])
      directions.append(obs["direction"])
      if terminated or truncated:
        break
  except BOT_FAILURES:
    return None  # The bot gave up; the level may still be solvable, but not by this expert.
  except Exception as e:
    raise RuntimeError(f"BabyAI bot crashed on {level} seed {seed}: {e!r}") from e
  if not (terminated and reward > 0):
    return None
  num_steps = len(images)
  return {
      "image": np.stack(images).astype(np.uint8),
      "direction": np.asarray(directions, np.int64),
      "action": np.asarray(actions + [DONE_ACTION], np.int64),
      "reward": np.asarray(rewards + [0.0], np.float32),
      # The final action ends the episode: no future after it.
      "discount": (np.arange(num_steps) < num_steps - 2).astype(np.float32),
      "mission": str(obs["mission"]),
      "level": level,
      "seed": int(seed),
      **bot.subtask_labels(last_frame=num_steps - 1),
  }


def replay_episode(level: str, seed: int, actions: Any, tile_size: int = 8,
                   view: str = "egocentric") -> np.ndarray:
  """Replays recorded per-step `actions` [T] from `seed`; returns the frames uint8 [T, H, W, 3].

  Frame t is the observation before action t (the layout of the dataset), so the last action,
  the terminal step's placeholder, is not executed.
  """
  env = make_env(level, tile_size, view)
  frames = [reset(env, seed)["image"]]
  for action in np.asarray(actions)[:-1]:
    obs, _, _, _, _ = env.step(int(action))
    frames.append(obs["image"])
  return np.stack(frames).astype(np.uint8)


def episode_seed(base_seed: int, split: str, shard_index: int, attempt: int) -> int:
  """Environment seed of `attempt` in shard `shard_index` of `split` (disjoint across all)."""
  if split not in SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_IDS)}")
  if not 0 <= shard_index < MAX_SHARDS or not 0 <= attempt < MAX_ATTEMPTS:
    raise ValueError(f"shard {shard_index} / attempt {attempt} out of range")
  return ((base_seed * 10 + SPLIT_IDS[split]) * MAX_SHARDS + shard_index) * MAX_ATTEMPTS + attempt


def test_seed(base_seed: int, episode_index: int) -> int:
  """Env seed of evaluation episode `episode_index`: split id TEST_SPLIT_ID, never a train/val seed.

  (shard, attempt) = divmod(episode_index, MAX_ATTEMPTS).
  """
  shard, attempt = divmod(int(episode_index), MAX_ATTEMPTS)
  if base_seed < 0 or shard >= MAX_SHARDS:
    raise ValueError(f"base seed {base_seed} / episode {episode_index} out of range")
  return ((base_seed * 10 + TEST_SPLIT_ID) * MAX_SHARDS + shard) * MAX_ATTEMPTS + attempt


def proprio(direction: int) -> np.ndarray:
  """One-hot facing direction float32 [NUM_DIRECTIONS]: the policies' proprio (as standardized)."""
  out = np.zeros(NUM_DIRECTIONS, np.float32)
  out[int(direction)] = 1.0
  return out
