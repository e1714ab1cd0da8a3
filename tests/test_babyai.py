"""Tests of the BabyAI generator (`data_pipeline/generators/babyai.py`) and its standardize fn.

One tiny BossLevel dataset (4 train episodes in 2 shards, 2 val) is generated per session and
checked through tfds, through the reader, and by replaying its actions in the simulator.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipeline import reader
from data_pipeline import registry
from data_pipeline import schema
from data_pipeline.generators import babyai
from data_pipeline.sim import babyai as babyai_sim
from experiments.configs import generate_babyai as generate_config

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LEVEL = "BabyAI-BossLevel-v0"


def tiny_config(**overrides):
  config = generate_config.get_config("tiny")
  config.update(overrides)
  return config


def shard_files(dataset_dir):
  return sorted(f for f in os.listdir(dataset_dir) if ".tfrecord-" in f)


def read_bytes(dataset_dir):
  contents = {}
  for f in shard_files(dataset_dir):
    with open(os.path.join(dataset_dir, f), "rb") as fobj:
      contents[f] = fobj.read()
  return contents


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("babyai"))
  stats = babyai.generate(tiny_config(), data_dir)
  return data_dir, stats


def dense_episodes(dataset_dir, split="train"):
  """Raw episodes as numpy: steps batched densely, images decoded."""
  builder = tfds.builder_from_directory(dataset_dir)
  ds = builder.as_dataset(split=split).map(
      lambda e: {**e, "steps": e["steps"].batch(100_000).get_single_element()})
  return list(tfds.as_numpy(ds))


# ----------------------------------------------------------------------------- simulation


def test_dataset_name():
  assert babyai.dataset_name("BabyAI-BossLevel-v0") == "babyai_bosslevel"
  assert babyai.dataset_name("BabyAI-BossLevel-v0", action_free=True) == "babyai_bosslevel_video"
  assert babyai.dataset_name("BabyAI-GoToSeq-v0") == "babyai_gotoseq"
  assert babyai.dataset_name("BabyAI-GoToSeq-v0", name="babyai_mine") == "babyai_mine"


def test_episode_seeds_are_disjoint_across_splits_and_shards():
  seeds = {babyai_sim.episode_seed(7, split, shard, attempt)
           for split in ("train", "val") for shard in range(20) for attempt in range(30)}
  assert len(seeds) == 2 * 20 * 30
  with pytest.raises(ValueError, match="split"):
    babyai_sim.episode_seed(7, "test", 0, 0)


@pytest.mark.parametrize("level", ["BabyAI-GoToSeq-v0", "BabyAI-SynthSeq-v0"])
def test_other_levels_and_determinism(level):
  first = babyai_sim.simulate_episode(level, seed=3)
  again = babyai_sim.simulate_episode(level, seed=3)
  assert first is not None and first["level"] == level
  np.testing.assert_array_equal(first["image"], again["image"])
  np.testing.assert_array_equal(first["subgoal_done_steps"], again["subgoal_done_steps"])
  num_steps = len(first["image"])
  assert first["image"].shape == (num_steps, 56, 56, 3)
  assert first["action"].shape == (num_steps,) and first["action"][-1] == babyai_sim.DONE_ACTION


def test_room_view_is_the_agents_room_of_the_full_render():
  """The room view equals the fully observable render cropped to the agent's room, follows the
  agent's direction, and shows what the egocentric view cannot (the whole room)."""
  level = "BabyAI-UnlockLocal-v0"
  env = babyai_sim.make_env(level, tile_size=7, view="room")
  assert env.observation_space["image"].shape == (56, 56, 3)
  assert babyai_sim.image_size(level, 7, "room") == 56
  assert babyai_sim.image_size(level, 8, "egocentric") == 56
  for seed in range(3):
    obs = babyai_sim.reset(env, seed)
    base = env.unwrapped
    x, y, width, height = env.room_box()
    assert (width, height) == (8, 8) and x <= base.agent_pos[0] < x + 8
    full = base.get_frame(highlight=False, tile_size=7, agent_pov=False)
    np.testing.assert_array_equal(obs["image"], full[7 * y:7 * (y + 8), 7 * x:7 * (x + 8)])
    turned, *_ = env.step(0)  # turning left changes only the agent's cell
    changed = np.argwhere(np.any(turned["image"] != obs["image"], axis=-1))
    cell = (np.asarray(base.agent_pos) - (x, y))[::-1]
    assert changed.size and (changed // 7 == cell).all()
  with pytest.raises(ValueError, match="view"):
    babyai_sim.make_env(level, view="topdown")


def test_room_view_dataset_records_its_render_settings(tmp_path):
  config = tiny_config()
  config.level, config.view, config.tile_size = "BabyAI-UnlockLocal-v0", "room", 7
  stats = babyai.generate(config, str(tmp_path))
  assert babyai_sim.render_settings(stats["dataset_dir"]) == {
      "level": "BabyAI-UnlockLocal-v0", "view": "room", "tile_size": 7}
  episode = dense_episodes(stats["dataset_dir"])[0]
  frames = episode["steps"]["observation"]["image"]
  expected = babyai_sim.simulate_episode(config.level, int(episode["episode_metadata"]["seed"]),
                                         tile_size=7, view="room")["image"]
  assert frames.shape == expected.shape and frames.shape[1:] == (56, 56, 3)
  assert np.abs(frames.astype(int) - expected).mean() < 3  # JPEG


def test_tracing_bot_acts_like_the_shipped_bot():
  """TracingBot re-implements BabyAIBot.replan; it must choose exactly the same actions."""
  from minigrid.utils.baby_ai_bot import BabyAIBot
  for seed in range(4):
    ep = babyai_sim.simulate_episode(LEVEL, seed)
    env = babyai_sim.make_env(LEVEL)
    env.reset(seed=seed)
    bot, actions = BabyAIBot(env), []
    for _ in range(len(ep["action"]) - 1):
      actions.append(int(bot.replan()))
      env.step(actions[-1])
    np.testing.assert_array_equal(actions, ep["action"][:-1])


def test_subtask_labels_follow_the_bots_actions():
  """Pickup/Drop/Open subgoals end right after the matching action; labels are consistent."""
  expected_action = {"Pickup": "pickup", "Drop": "drop"}
  checked = 0
  for seed in range(8):
    ep = babyai_sim.simulate_episode(LEVEL, seed)
    if ep is None:
      continue
    last = len(ep["image"]) - 1
    done, instr_done = ep["subgoal_done_steps"], ep["instruction_done_steps"]
    assert len(done) == len(ep["subgoal_names"]) == len(ep["subgoal_instruction_index"])
    assert len(instr_done) == len(ep["instruction_names"])
    assert np.all(np.diff(done) >= 0) and done.min() >= 0 and done[-1] == last
    assert np.all(np.diff(ep["subgoal_instruction_index"]) >= 0)
    # A leaf instruction is done when its last subgoal is.
    last_of_leaf = [done[np.nonzero(ep["subgoal_instruction_index"] == i)[0][-1]]
                    for i in range(len(instr_done))]
    np.testing.assert_array_equal(instr_done, last_of_leaf)
    for name, step in zip(ep["subgoal_names"], done):
      if name in expected_action and 0 < step < last:
        action_name = babyai_sim.ACTION_NAMES[ep["action"][step - 1]]
        assert action_name == expected_action[name], (seed, name)
        checked += 1
  assert checked > 0


# ----------------------------------------------------------------------------- the dataset


@pytest.mark.parametrize("seed", range(6))
def test_unlocklocal_leaf_subtasks_are_key_pickup_door_open(seed):
  """UnlockLocal's initial subgoals are only 'go to the door' and 'open' (the key is a helper);
  its leaf subtasks are the four real skills, and each interaction starts at its action."""
  ep = babyai_sim.simulate_episode("BabyAI-UnlockLocal-v0", seed, 7, view="room")
  names, done = ep["leaf_names"], [int(d) for d in ep["leaf_done_steps"]]
  assert [babyai_sim.INTERACTIONS.count(n) for n in names] == [0, 1, 0, 1], names
  assert names[0].endswith("key)") and names[2].endswith("door)")
  assert names[0].split("(")[1].split()[0] == names[2].split("(")[1].split()[0]  # same colour
  actions = [babyai_sim.ACTION_NAMES[a] for a in ep["action"]]
  assert actions[done[0]] == "pickup" and actions[done[2]] == "toggle"
  assert done[1] == done[0] + 1 and done[3] == len(actions) - 1 == done[2] + 1
  assert ep["subgoal_names"] == ["GoNextTo(door, Open)", "Open"]


def test_leaf_runs_merge_navigation_and_name_it_by_its_target():
  acting = [("navigation", None), ("navigation", "red key"), ("interaction", "Pickup"),
            ("navigation", None), ("navigation", None), ("interaction", "Drop"),
            ("interaction", "Open"), ("done", None)]
  names, done = babyai_sim.leaf_runs(acting, last_frame=8)
  assert names == ["GoNextTo(red key)", "Pickup", "GoNextTo(position)", "Drop", "Open", "done"]
  assert done == [2, 3, 5, 6, 7, 8]
  # An initial subgoal starting at frame 4 splits the navigation run 3-4.
  names, done = babyai_sim.leaf_runs(acting, last_frame=8, split_at=frozenset({4}))
  assert names[2:4] == ["GoNextTo(position)", "GoNextTo(position)"] and done[:4] == [2, 3, 4, 5]


def test_dataset_reads_with_tfds(tiny):
  data_dir, stats = tiny
  dataset_dir = os.path.join(data_dir, "babyai_bosslevel", "1.0.0")
  assert stats["dataset_dir"] == dataset_dir and stats["episodes"] == 6
  # A fresh run: every shard simulated, none skipped; at least one attempt per episode (failed
  # seeds are retried); the rate is the episodes over the run's wall time.
  assert (stats["shards_written"], stats["shards_skipped"]) == (3, 0)
  assert stats["attempts"] >= stats["episodes"]
  assert stats["seconds"] > 0
  assert stats["episodes_per_second"] == pytest.approx(6 / stats["seconds"], rel=1e-12)
  builder = tfds.builder_from_directory(dataset_dir)
  assert builder.info.splits["train"].num_examples == 4
  assert builder.info.splits["val"].num_examples == 2
  assert len(shard_files(dataset_dir)) == 3
  steps = builder.info.features["steps"]
  assert steps["observation"]["image"].shape == (56, 56, 3)
  assert "action" in steps and "reward" in steps


def test_replay_reproduces_the_recorded_frames(tiny):
  data_dir, _ = tiny
  episodes = dense_episodes(os.path.join(data_dir, "babyai_bosslevel", "1.0.0"))
  for ep in episodes:
    meta, steps = ep["episode_metadata"], ep["steps"]
    recorded = steps["observation"]["image"].astype(np.float32)  # JPEG-decoded
    replayed = babyai_sim.replay_episode(meta["level"].decode(), meta["seed"], steps["action"])
    replayed = replayed.astype(np.float32)
    assert recorded.shape == replayed.shape
    err = np.abs(recorded - replayed).mean(axis=(1, 2, 3))
    assert err.max() < 6.0, err.max()  # JPEG error only (about 1-3 measured).
    # Off-by-one check: where neighbouring frames differ, frame t matches t better than t+-1.
    for shift in (1, -1):
      t = np.arange(len(recorded))
      t = t[(t + shift >= 0) & (t + shift < len(recorded))]
      differs = np.abs(replayed[t] - replayed[t + shift]).mean(axis=(1, 2, 3)) > 2 * err.max() + 1
      assert differs.any()
      err_same = np.abs(recorded[t] - replayed[t]).mean(axis=(1, 2, 3))
      err_other = np.abs(recorded[t] - replayed[t + shift]).mean(axis=(1, 2, 3))
      assert np.all(err_same[differs] < err_other[differs])


def test_raw_episode_layout_and_boundaries(tiny):
  data_dir, _ = tiny
  for split in ("train", "val"):
    for ep in dense_episodes(os.path.join(data_dir, "babyai_bosslevel", "1.0.0"), split):
      steps, meta = ep["steps"], ep["episode_metadata"]
      num_steps = len(steps["action"])
      assert steps["is_first"].tolist() == [True] + [False] * (num_steps - 1)
      assert steps["is_last"].tolist() == [False] * (num_steps - 1) + [True]
      assert steps["is_terminal"].tolist() == steps["is_last"].tolist()
      assert steps["reward"][-2] > 0 and steps["reward"][-1] == 0  # The final action succeeds.
      assert len(set(steps["language_instruction"].tolist())) == 1
      assert meta["source"].decode() == f"{LEVEL}/seed={meta['seed']}"
      for done in (meta["subgoal_done_steps"], meta["instruction_done_steps"]):
        assert len(done) >= 1 and np.all(np.diff(done) >= 0)
        assert done.min() >= 0 and done.max() == num_steps - 1
      assert len(meta["subgoal_names"]) == len(meta["subgoal_done_steps"])


def test_standardized_through_the_reader(tiny):
  data_dir, _ = tiny
  dataset_dir = os.path.join(data_dir, "babyai_bosslevel", "1.0.0")
  raw = dense_episodes(dataset_dir)
  trajs = list(tfds.as_numpy(reader.read_trajectories(dataset_dir)))  # validates the schema
  assert len(trajs) == len(raw) == 4
  by_source = {ep["episode_metadata"]["source"]: ep for ep in raw}
  for traj in trajs:
    ep = by_source[traj["episode_id"][0].split(b"|")[1]]
    num_steps = len(ep["steps"]["action"])
    assert traj["observation"]["proprio"].shape == (num_steps, 4)
    assert traj["observation"]["proprio"].dtype == np.float32
    np.testing.assert_array_equal(traj["observation"]["proprio"].argmax(-1),
                                  ep["steps"]["observation"]["direction"])
    assert traj["action"].dtype == np.int32
    np.testing.assert_array_equal(traj["action"], ep["steps"]["action"])
    starts = [s for s in ep["episode_metadata"]["subgoal_done_steps"] if s < num_steps - 1]
    np.testing.assert_array_equal(np.nonzero(traj["subtask"]["boundary"])[0],
                                  sorted({0, *starts}))
    assert traj["subtask"]["instruction_boundary"][0]
    assert traj["subtask"]["instruction_boundary"].sum() <= traj["subtask"]["boundary"].sum()
    # Leaf subtasks: the same layout; every initial-subgoal boundary is a leaf one (a finer plan).
    leaf_starts = [s for s in ep["episode_metadata"]["leaf_done_steps"] if s < num_steps - 1]
    leaf = traj["subtask"]["leaf_boundary"]
    np.testing.assert_array_equal(np.nonzero(leaf)[0], sorted({0, *leaf_starts}))
    assert np.all(leaf[traj["subtask"]["boundary"]])
    names = traj["extras"]["leaf_subtask_name"]
    assert len(names) == num_steps and all(n for n in names)
    changes = np.flatnonzero(names[1:] != names[:-1]) + 1
    assert set(changes) <= set(np.flatnonzero(leaf))


def test_standardize_eager_and_missing_key():
  num_steps = 5
  episode = {
      "steps": {
          "observation": {"image": tf.constant([b"jpeg"] * num_steps),
                          "direction": tf.constant([0, 1, 2, 3, 3], tf.int64)},
          "language_instruction": tf.constant([b"go to the red ball"] * num_steps),
          "is_first": tf.constant([True] + [False] * 4),
          "is_last": tf.constant([False] * 4 + [True]),
      },
      "episode_metadata": {"subgoal_done_steps": tf.constant([2, 4], tf.int32),
                           "instruction_done_steps": tf.constant([4], tf.int32),
                           "source": tf.constant("BabyAI-GoTo-v0/seed=1")},
  }
  fn = registry.get_standardize_fn("babyai_gotoseq_video")
  eager = fn(episode)
  schema.validate_trajectory(eager, "babyai")
  assert "action" not in eager and "reward" not in eager
  assert eager["subtask"]["boundary"].numpy().tolist() == [True, False, True, False, False]
  assert eager["subtask"]["instruction_boundary"].numpy().tolist() == [True] + [False] * 4
  traced = next(iter(tf.data.Dataset.from_tensors(episode).map(fn)))
  for key, value in schema.flatten_keys(eager).items():
    np.testing.assert_array_equal(value.numpy(), schema.flatten_keys(traced)[key].numpy())
  del episode["episode_metadata"]["subgoal_done_steps"]
  with pytest.raises(schema.MissingKeyError, match=r"'babyai'.*subgoal_done_steps"):
    fn(episode)


# ----------------------------------------------------------------------------- determinism, resume


def test_launch_script_output_does_not_depend_on_process_or_num_workers(tiny, tmp_path):
  """The script, in another process with 2 spawn workers, writes the fixture's exact bytes."""
  data_dir, _ = tiny
  result = subprocess.run(
      [sys.executable, "-m", "experiments.generate_babyai",
       "--config=experiments/configs/generate_babyai.py:tiny", "--config.num_workers=2",
       f"--data_dir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "episodes/s" in result.stdout
  expected = read_bytes(os.path.join(data_dir, "babyai_bosslevel", "1.0.0"))
  assert read_bytes(str(tmp_path / "babyai_bosslevel" / "1.0.0")) == expected


def test_rerun_regenerates_only_the_deleted_shard(tiny):
  data_dir, _ = tiny
  dataset_dir = os.path.join(data_dir, "babyai_bosslevel", "1.0.0")
  before = read_bytes(dataset_dir)
  mtimes = {f: os.stat(os.path.join(dataset_dir, f)).st_mtime_ns for f in before}
  victim = shard_files(dataset_dir)[1]
  os.remove(os.path.join(dataset_dir, victim))
  # Another worker count may resume: it does not change the output.
  stats = babyai.generate(tiny_config(num_workers=2), data_dir)
  assert stats["shards_written"] == 1 and stats["shards_skipped"] == 2
  assert read_bytes(dataset_dir) == before
  for f, mtime in mtimes.items():
    if f != victim:
      assert os.stat(os.path.join(dataset_dir, f)).st_mtime_ns == mtime


def test_action_free_mode(tmp_path):
  config = tiny_config(action_free=True, num_train_episodes=2, num_val_episodes=1)
  stats = babyai.generate(config, str(tmp_path))
  assert stats["name"] == "babyai_bosslevel_video"
  builder = tfds.builder_from_directory(stats["dataset_dir"])
  steps = builder.info.features["steps"]
  assert "action" not in steps and "reward" not in steps and "discount" not in steps
  trajs = list(tfds.as_numpy(reader.read_trajectories(stats["dataset_dir"])))
  assert len(trajs) == 2 and all("action" not in t for t in trajs)
  assert all(t["subtask"]["boundary"][0] for t in trajs)
