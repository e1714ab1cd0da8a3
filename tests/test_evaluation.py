"""Tests of the closed-loop evaluation harnesses (`hilam_jax/evaluation`).

BabyAI runs in this process. Meta-World runs in spawned workers (this process imports TensorFlow
for the JPEG comparison, which is exactly the situation the workers must survive).
"""
import json
import math
import multiprocessing
import os

import numpy as np
import psutil
import pytest

from data_pipeline.sim import babyai as babyai_sim
from data_pipeline.sim import metaworld as metaworld_sim
from hilam_jax.evaluation import babyai
from hilam_jax.evaluation import metaworld
from hilam_jax.evaluation import policy_api
from hilam_jax.evaluation import stats
from hilam_jax.evaluation import video

GOTO, PUTNEXT = "BabyAI-GoToLocal-v0", "BabyAI-PutNextLocal-v0"


class Recorder:
  """Wraps a policy; records every `act` call's observation specs, instructions and first flags."""

  def __init__(self, inner):
    self.inner, self.calls, self.obs = inner, [], []

  def reset(self, num_envs):
    self.num_envs = num_envs
    self.inner.reset(num_envs)

  def act(self, obs, instructions, first):
    self.calls.append(({k: (v.shape, v.dtype) for k, v in obs.items()}, list(instructions),
                       first.copy()))
    self.obs.append({k: v.copy() for k, v in obs.items()})
    return self.inner.act(obs, instructions, first)


# ----------------------------------------------------------------------------- stats


def test_wilson_interval_hand_computed():
  # z = 1.96: 0/10 -> [0, z^2/n / (1 + z^2/n)]; 5/10 -> 0.5 -+ z/(1+z^2/n) sqrt(.025 + z^2/400).
  np.testing.assert_allclose(stats.wilson_interval(0, 10), (0.0, 0.27753), atol=1e-5)
  np.testing.assert_allclose(stats.wilson_interval(5, 10), (0.23659, 0.76341), atol=1e-5)
  np.testing.assert_allclose(stats.wilson_interval(10, 10), (0.72247, 1.0), atol=1e-5)
  assert stats.wilson_interval(0, 0) == (0.0, 1.0)
  with pytest.raises(ValueError):
    stats.wilson_interval(3, 2)


def test_seed_interval_hand_computed():
  # [0.8, 0.86, 0.82]: mean 0.82667, sd 0.030551, t_0.975(2) = 4.30265 -> half 0.075892.
  out = stats.seed_interval([0.8, 0.86, 0.82])
  np.testing.assert_allclose([out["mean"], out["std"], out["ci_low"], out["ci_high"]],
                             [0.826667, 0.030551, 0.750774, 0.902559], atol=1e-5)
  assert out["num_seeds"] == 3 and out["values"] == [0.8, 0.86, 0.82]
  assert np.isnan(stats.seed_interval([0.5])["ci_low"])
  assert abs(stats.t_quantile_975(11) - 2.2010) < 1e-4
  assert abs(stats.t_quantile_975(30) - 2.0423) < 1e-4
  with pytest.raises(ValueError):
    stats.seed_interval([])


def _wilson_closed_form(k, n, z=1.959963984540054):
  p = k / n
  denominator = 1 + z * z / n
  center = (p + z * z / (2 * n)) / denominator
  half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return max(0.0, center - half), min(1.0, center + half)


def test_wilson_interval_equals_the_closed_form():
  # The score interval without continuity correction, written out (z = the 97.5% normal
  # quantile), for every k of small n (k = 0, k = n, n = 1 included) and spread k of large n.
  cases = [(k, n) for n in range(1, 41) for k in range(n + 1)]
  cases += [(k, n) for n in (100, 999, 12345) for k in (0, 1, n // 7, n // 2, n - 1, n)]
  for k, n in cases:
    np.testing.assert_allclose(stats.wilson_interval(k, n), _wilson_closed_form(k, n),
                               rtol=0, atol=1e-12, err_msg=f"{k}/{n}")


def test_t_quantile_equals_closed_forms():
  # Student-t quantiles in closed form: df 1 (Cauchy), 2, 4; and the normal limit.
  p = 0.975
  assert abs(stats.t_quantile_975(1) - math.tan(math.pi * (p - 0.5))) < 1e-12
  assert abs(stats.t_quantile_975(2) - (2 * p - 1) / math.sqrt(2 * p * (1 - p))) < 1e-12
  alpha = 4 * p * (1 - p)
  q = math.cos(math.acos(math.sqrt(alpha)) / 3) / math.sqrt(alpha)
  assert abs(stats.t_quantile_975(4) - 2 * math.sqrt(q - 1)) < 1e-12
  assert abs(stats.t_quantile_975(10 ** 7) - 1.959963984540054) < 1e-6
  # The 4-decimal table the module used to carry, df 1..10.
  table = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281)
  for df, value in enumerate(table, 1):
    assert abs(stats.t_quantile_975(df) - value) < 5e-5
  with pytest.raises(ValueError):
    stats.t_quantile_975(0)


def test_eval_result_to_dict():
  records = [stats.EpisodeRecord(1, True, 10, "go", "a"), stats.EpisodeRecord(2, False, 20, "go", "b")]
  result = stats.EvalResult.from_records(records)
  d = result.to_dict()
  assert d["success_rate"] == 0.5 and d["num_episodes"] == 2 and d["mean_episode_length"] == 15
  assert d["episodes"][1] == {"seed": 2, "success": False, "length": 20, "instruction": "go",
                              "task": "b"}
  assert result.per_task()["a"].success_rate == 1.0


# ----------------------------------------------------------------------------- BabyAI


def test_test_seeds_disjoint_from_generator_seeds():
  train_val = {babyai_sim.episode_seed(s, split, shard, a) for s in (0, 1, 7)
               for split in ("train", "val") for shard in (0, 1) for a in range(200)}
  test = {babyai.test_seed(s, i) for s in (0, 1, 7) for i in list(range(200)) + [10_000, 10_001]}
  assert len(test) == 3 * 202 and not train_val & test


@pytest.mark.parametrize("level", [GOTO, PUTNEXT])
def test_babyai_expert_succeeds(level):
  result = babyai.evaluate_babyai(babyai.ExpertPolicy(), level, num_episodes=20, num_envs=4)
  assert result.num_episodes == 20 and result.success_rate >= 0.95, result.summary()
  assert result.ci_low < result.success_rate <= result.ci_high


def test_babyai_random_policy_fails_putnext():
  result = babyai.evaluate_babyai(policy_api.RandomPolicy(num_actions=7), PUTNEXT,
                                  num_episodes=10, num_envs=10)
  assert result.success_rate <= 0.2, result.summary()
  # Ran to the level's own limit (PutNextLocal: 128 steps) unless solved by chance.
  assert max(r.length for r in result.episodes) == 128


def test_babyai_results_do_not_depend_on_num_envs():
  one = babyai.evaluate_babyai(babyai.ExpertPolicy(), GOTO, num_episodes=7, num_envs=1, seed=3)
  three = babyai.evaluate_babyai(babyai.ExpertPolicy(), GOTO, num_episodes=7, num_envs=3, seed=3)
  assert one.episodes == three.episodes
  assert [r.seed for r in one.episodes] == [babyai.test_seed(3, i) for i in range(7)]
  assert len({r.instruction for r in one.episodes}) > 1  # distinct layouts


def test_babyai_one_batched_act_per_step_and_first_flags():
  # Turning left never ends an episode: every episode lasts exactly max_steps = 5 steps, so with
  # 3 envs and 7 episodes: episodes 0-2 start at call 0, 3-5 at call 5, 6 at call 10 (env 0).
  policy = Recorder(policy_api.ConstantPolicy(0))
  result = babyai.evaluate_babyai(policy, GOTO, num_episodes=7, num_envs=3, max_steps=5)
  assert [r.length for r in result.episodes] == [5] * 7
  assert policy.num_envs == 3 and len(policy.calls) == 15
  expected_first = np.zeros((15, 3), bool)
  expected_first[0] = expected_first[5] = True
  expected_first[10, 0] = True
  np.testing.assert_array_equal(np.stack([c[2] for c in policy.calls]), expected_first)
  for specs, instructions, _ in policy.calls:
    assert specs == {"image_primary": ((3, 56, 56, 3), np.uint8), "proprio": ((3, 4), np.float32)}
    assert len(instructions) == 3 and all(instructions)
  for obs in policy.obs:
    np.testing.assert_array_equal(obs["proprio"].sum(-1), 1.0)  # one-hot direction
  # Turning left cycles the facing direction: east 0 -> north 3 -> west 2 ...
  d0 = policy.obs[0]["proprio"][0].argmax()
  assert policy.obs[1]["proprio"][0].argmax() == (d0 - 1) % 4


def test_babyai_observations_match_training_data():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  seed = babyai.test_seed(0, 0)
  episode = babyai_sim.simulate_episode(GOTO, seed)
  assert episode is not None
  frame = episode["image"][0]
  raw = Recorder(policy_api.ConstantPolicy(0))
  babyai.evaluate_babyai(raw, GOTO, num_episodes=1, num_envs=1, max_steps=1, jpeg=False)
  np.testing.assert_array_equal(raw.obs[0]["image_primary"][0], frame)
  np.testing.assert_array_equal(raw.obs[0]["proprio"][0],
                                np.eye(4, dtype=np.float32)[episode["direction"][0]])
  assert raw.calls[0][1] == [episode["mission"]]
  # With the JPEG round trip (default): close to what tfds stored and decodes for training.
  jpeg = Recorder(policy_api.ConstantPolicy(0))
  babyai.evaluate_babyai(jpeg, GOTO, num_episodes=1, num_envs=1, max_steps=1)
  stored = tf.io.decode_jpeg(tf.image.encode_jpeg(frame)).numpy().astype(int)
  ours = jpeg.obs[0]["image_primary"][0].astype(int)
  assert np.abs(ours - stored).mean() < 0.5 and np.abs(ours - stored).max() <= 8
  assert np.abs(ours - frame).mean() > 0.1  # the round trip did happen


class ReplayPolicy:
  """Replays one recorded action sequence in env row 0 (a single-episode evaluation)."""

  def __init__(self, actions):
    self.actions, self.t = list(actions), 0

  def reset(self, num_envs):
    self.t = 0

  def act(self, obs, instructions, first):
    action = self.actions[min(self.t, len(self.actions) - 1)]
    self.t += 1
    return np.array([action], np.int64)


def test_babyai_room_view_observations_equal_the_generators_frames_at_every_step(tmp_path):
  """Evaluation and generator render the same room view: equal frames at each step of a seed."""
  level = "BabyAI-UnlockLocal-v0"
  seed = babyai.test_seed(0, 0)
  episode = babyai_sim.simulate_episode(level, seed, tile_size=7, view="room")
  assert episode is not None and episode["image"].shape[1:] == (56, 56, 3)
  num_actions = len(episode["action"]) - 1  # the last step is the terminal placeholder
  raw = Recorder(ReplayPolicy(episode["action"][:-1]))
  result = babyai.evaluate_babyai(raw, level, num_episodes=1, num_envs=1, jpeg=False,
                                  tile_size=7, view="room")
  assert result.episodes[0].success and result.episodes[0].length == num_actions
  assert len(raw.obs) == num_actions
  for t, obs in enumerate(raw.obs):
    np.testing.assert_array_equal(obs["image_primary"][0], episode["image"][t], err_msg=f"t={t}")
  # The views differ: the egocentric evaluation does not see these frames.
  ego = Recorder(policy_api.ConstantPolicy(0))
  babyai.evaluate_babyai(ego, level, num_episodes=1, num_envs=1, max_steps=1, jpeg=False)
  assert np.abs(ego.obs[0]["image_primary"][0].astype(int) - episode["image"][0]).mean() > 1
  # Render settings are read back from a generated dataset; a mismatch is refused.
  info = {"config": {"level": level, "view": "room", "tile_size": 7}}
  with open(os.path.join(tmp_path, "generation_info.json"), "w") as f:
    json.dump(info, f)
  babyai.check_render_settings(str(tmp_path), level, "room", 7)
  with pytest.raises(ValueError, match="generated with"):
    babyai.check_render_settings(str(tmp_path), level, "egocentric", 8)


def test_babyai_videos(tmp_path):
  babyai.evaluate_babyai(babyai.ExpertPolicy(), GOTO, num_episodes=3, num_envs=2,
                         video_dir=str(tmp_path), num_videos=2)
  names = sorted(os.listdir(tmp_path))
  assert len(names) == 2 and all("_success_go_to_" in n and n.endswith(".gif") for n in names)


def test_write_gif_readable(tmp_path):
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top

  frames = [np.full((8, 8, 3), 30 * i, np.uint8) for i in range(4)]
  path = video.write_video(video.video_path(str(tmp_path), "BabyAI-GoTo-v0", 0, 12, False,
                                            "go to the red ball"), frames, scale=2)
  assert os.path.basename(path) == "babyai_goto_v0_ep0000_seed12_failure_go_to_the_red_ball.gif"
  back = iio.imread(path, index=None)
  assert back.shape[:3] == (4, 16, 16)
  np.testing.assert_allclose(back[..., :3].reshape(4, -1).mean(-1), [0, 30, 60, 90], atol=2)


# ----------------------------------------------------------------------------- Meta-World


def test_metaworld_expert_succeeds():
  result = metaworld.evaluate_metaworld(metaworld.ExpertPolicy(), ["reach", "button-press-topdown"],
                                        episodes_per_task=3, num_workers=2, envs_per_worker=2,
                                        max_steps=150)
  assert result.num_episodes == 6 and result.success_rate >= 0.9, result.summary()
  assert [r.task for r in result.episodes[:2]] == ["reach-v3", "button-press-topdown-v3"]
  assert all(r.length < 150 for r in result.episodes if r.success)  # ended at success


def test_metaworld_zero_policy_fails_and_observations():
  # jpeg=False so that the first frame can be compared exactly with the generator's rendering.
  policy = Recorder(policy_api.ConstantPolicy(np.zeros(4, np.float32)))
  result = metaworld.evaluate_metaworld(policy, ["reach"], episodes_per_task=4, num_workers=2,
                                        envs_per_worker=2, max_steps=40, jpeg=False)
  assert result.success_rate == 0.0 and [r.length for r in result.episodes] == [40] * 4
  assert len(policy.calls) == 40
  specs, instructions, first = policy.calls[0]
  assert specs == {"image_primary": ((4, 64, 64, 3), np.uint8), "proprio": ((4, 4), np.float32)}
  assert instructions == ["reach the goal position"] * 4 and first.all()
  assert not np.any([c[2] for c in policy.calls[1:]])
  # Zero actions: the hand stays put (proprio = hand xyz + gripper).
  np.testing.assert_allclose(policy.obs[-1]["proprio"][:, :3], policy.obs[0]["proprio"][:, :3],
                             atol=0.02)
  # The generator's frame and state of the same seed (replayed in a spawned process: this
  # process has TensorFlow).
  seed = result.episodes[1].seed
  with multiprocessing.get_context("spawn").Pool(1) as pool:
    recorded = pool.apply(metaworld_sim.replay, ("reach-v3", seed, np.zeros((1, 4), np.float32)))
  np.testing.assert_array_equal(policy.obs[0]["image_primary"][1], recorded["image"][0])
  np.testing.assert_array_equal(policy.obs[0]["proprio"][1],
                                recorded["state"][0][:4].astype(np.float32))  # stored float32


def test_metaworld_worker_error_is_raised_and_workers_exit():
  me = psutil.Process()
  before = {p.pid for p in me.children(recursive=True)}
  with pytest.raises(RuntimeError, match="unknown Meta-World v3 task"):
    metaworld.evaluate_metaworld(metaworld.ExpertPolicy(), ["no-such-task"], episodes_per_task=1,
                                 num_workers=1, max_steps=5)
  assert not _new_live_children(me, before)


def _new_live_children(process, before):
  return [p for p in process.children(recursive=True) if p.pid not in before
          and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


class _Raises(policy_api.ConstantPolicy):
  def __init__(self):
    super().__init__(np.zeros(4, np.float32))
    self.num_calls = 0

  def act(self, obs, instructions, first):
    self.num_calls += 1
    if self.num_calls == 3:
      raise KeyError("policy bug")
    return super().act(obs, instructions, first)


def test_metaworld_workers_shut_down_when_policy_raises():
  me = psutil.Process()
  before = {p.pid for p in me.children(recursive=True)}
  with pytest.raises(KeyError, match="policy bug"):
    metaworld.evaluate_metaworld(_Raises(), ["reach"], episodes_per_task=2, num_workers=2,
                                 envs_per_worker=1, max_steps=20)
  assert not _new_live_children(me, before)
