"""Skill-discovery measurement: held-out split, change-point baselines, budgets, probe, seeds."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline.standardize import babyai as babyai_std
from data_pipeline import episode_split
from data_pipeline import registry
from hilam_jax.skill import trainer
from hilam_jax.skill.discovery import baselines
from hilam_jax.skill.discovery import boundaries
from hilam_jax.skill.discovery import ceilings
from hilam_jax.skill.discovery import stages
from hilam_jax.skill.discovery import subtask_probe
from hilam_jax.skill.discovery import summary


def _b(length, frames):
  b = np.zeros(length, bool)
  b[list(frames)] = True
  return b


def _piecewise(rng, starts, length, dim=4, noise=0.05, scale=2.0):
  """Piecewise-constant [length, dim] signal, a new random level at each start, plus noise."""
  z = np.zeros((length, dim))
  edges = list(starts) + [length]
  for a, b in zip([0] + list(starts), edges):
    z[a:b] = rng.normal(scale=scale, size=dim)
  return z + rng.normal(scale=noise, size=z.shape)


# ---------------------------------------------------------------- held-out split


def test_chunk_lengths_by_hand():
  marked = {"a": np.array([1, 0, 0, 1, 0, 1], bool),   # starts 0, 3, 5 -> 3, 2, 1
            "b": np.array([0, 0, 0, 0], bool),         # frame 0 starts a chunk anyway
            "c": np.zeros(0, bool)}
  lengths = boundaries.chunk_lengths(marked)
  np.testing.assert_array_equal(lengths, [3, 2, 1, 4])
  assert lengths.sum() == 10  # every frame in exactly one chunk
  assert lengths.mean() == boundaries.mean_chunk_length(marked)
  assert boundaries.chunk_lengths({}).shape == (0,)


def test_heldout_split_is_a_stable_balanced_partition():
  ids = [f"ep{i}" for i in range(1000)]
  val, test = episode_split.heldout_split(ids)
  assert set(val) | set(test) == set(ids) and not set(val) & set(test)
  assert 430 < len(val) < 570  # parity of a hash: about half
  val2, test2 = episode_split.heldout_split(ids[::-1] + [f"new{i}" for i in range(50)])
  assert set(val) <= set(val2) and set(test) <= set(test2)  # adding episodes moves none
  # Tiny sets still get both halves.
  for n in (2, 3):
    v, t = episode_split.heldout_split([f"x{i}" for i in range(n)])
    assert v and t and len(v) + len(t) == n


# ---------------------------------------------------------------- change points


@pytest.mark.parametrize("method", ["binseg", "pelt"])
def test_change_points_recover_planted_changes(method):
  rng = np.random.default_rng(0)
  planted = {f"e{i}": sorted(rng.choice(np.arange(5, 55), size=3, replace=False))
             for i in range(6)}
  # At least 4 frames apart, so every planted segment is distinguishable.
  planted = {e: s for e, s in planted.items() if np.min(np.diff([0] + s + [60])) >= 4}
  latents = {e: _piecewise(rng, s, 60) for e, s in planted.items()}
  truth = {e: _b(60, [0] + s) for e, s in planted.items()}
  baseline = baselines.ChangePointBaseline(latents, method)
  target = sum(len(s) for s in planted.values())
  penalty = baselines.calibrate_penalty(baseline.boundaries, target)
  found = baseline.boundaries(penalty)
  assert boundaries.count_boundaries(found) == target
  assert boundaries.precision_recall_f1(found, truth, tolerance=0)["f1"] == 1.0
  # A larger penalty finds fewer change points; a tiny one cuts nearly everywhere.
  assert boundaries.count_boundaries(baseline.boundaries(penalty * 1e3)) < target
  assert boundaries.count_boundaries(baseline.boundaries(1e-6)) > 10 * target


def test_calibrate_penalty_hits_a_monotone_count():
  def make(penalty):  # 100 frames, boundaries at every t >= 1 with 100/t > penalty
    return {"a": np.array([True] + [100.0 / t > penalty for t in range(1, 100)])}
  for target in (0, 7, 50):
    assert boundaries.count_boundaries(make(baselines.calibrate_penalty(make, target))) == target


# ---------------------------------------------------------------- budgets on val, scores on test


def test_baselines_take_their_parameters_from_validation_only():
  rng = np.random.default_rng(1)
  val_ids, test_ids = ["v0", "v1"], ["t0", "t1"]
  latents = {e: rng.normal(size=(40, 3)) for e in val_ids}
  # Test latents move 10x more per frame: a threshold set on test would still give rate 0.25,
  # the validation threshold puts a boundary almost everywhere.
  latents.update({e: 10 * rng.normal(size=(40, 3)) for e in test_ids})
  truth = {e: _b(40, [0, 10, 20, 30]) for e in val_ids + test_ids}
  out = stages.baselines_at_budget(latents, truth, val_ids, test_ids, chunk_length=10.0,
                                      rate=0.25, tolerance=0, change_point_methods=("binseg",))
  assert out["latent_delta"]["val_rate"] == pytest.approx(0.25, abs=0.02)
  assert out["latent_delta"]["test_rate"] > 0.9
  assert out["ruptures_binseg"]["test_rate"] > 2 * out["ruptures_binseg"]["val_rate"]
  # Fixed length 10 hits every true boundary exactly, on both halves.
  assert out["fixed_length"]["f1"] == 1.0 and out["fixed_length"]["val_f1"] == 1.0


def test_evaluate_stage_heldout_budgets_by_hand():
  val_ids, test_ids = ["v"], ["t"]
  rng = np.random.default_rng(2)
  latents = {e: rng.normal(size=(60, 2)) for e in val_ids + test_ids}
  truth = {e: _b(60, [0, 20, 40]) for e in val_ids + test_ids}  # GT chunk length 20
  predicted = {"v": _b(60, [0, 10, 20, 30, 40, 50]),  # model chunk length 10 on val
               "t": _b(60, [0, 19, 45])}              # test: 1 of 2 within ±2
  r = stages.evaluate_stage_heldout(predicted, latents, truth, val_ids, test_ids,
                                       tolerance=2, change_point_methods=())
  assert r["mean_chunk_length"] == 10.0 and r["gt_mean_chunk_length"] == 20.0
  assert r["model"]["precision"] == 0.5 and r["model"]["recall"] == 0.5
  assert r["val"]["model"]["recall"] == 1.0 and r["val"]["model"]["precision"] == 0.4
  # Fixed length at the model rate (every 10): 5 predictions, 2 hits on test.
  assert r["fixed_length"]["predicted"] == 5 and r["fixed_length"]["true_positives"] == 2
  # ... at the GT rate (every 20): exactly the truth.
  assert r["gt_rate"]["fixed_length"]["f1"] == 1.0
  assert r["gt_rate"]["rate"] == pytest.approx(2 / 59)


# ---------------------------------------------------------------- probe


def test_probe_separable_labels_and_shuffled_labels():
  rng = np.random.default_rng(3)
  centers = rng.normal(scale=3.0, size=(4, 8))

  def episodes(n, shuffle=False):
    feats, labels = {}, {}
    for i in range(n):
      y = rng.integers(0, 4, size=50)
      feats[f"e{i}"] = centers[y] + rng.normal(size=(50, 8))
      labels[f"e{i}"] = np.array([f"c{k}" for k in (rng.permutation(y) if shuffle else y)])
    return feats, labels

  feats, labels = episodes(20)
  ids = sorted(feats)
  r = subtask_probe.probe_report({"x": feats}, labels, ids[:10], ids[10:])
  assert r["x"]["accuracy"] > 0.97 and r["x"]["balanced_accuracy"] > 0.97
  feats, labels = episodes(20, shuffle=True)
  r = subtask_probe.probe_report({"x": feats}, labels, ids[:10], ids[10:])
  assert r["x"]["accuracy"] < 0.35  # chance is 0.25
  assert r["majority"]["accuracy"] < 0.35


def test_balanced_probe_does_not_ignore_a_rare_class():
  rng = np.random.default_rng(5)
  # 2% of the frames are class "rare", shifted by one std in one feature only.
  y = np.where(rng.random(4000) < 0.02, "rare", "common")
  x = rng.normal(size=(4000, 3))
  x[y == "rare", 0] += 2.5
  ids = {"a": slice(0, 2000), "b": slice(2000, 4000)}
  feats, labels = {e: x[s] for e, s in ids.items()}, {e: y[s] for e, s in ids.items()}
  r = subtask_probe.probe_report({"x": feats}, labels, ["a"], ["b"])
  assert r["x"]["balanced_accuracy"] > 0.8  # unweighted, it predicts "common" everywhere (0.5)
  probe = subtask_probe.fit_linear_probe(x[:2000], y[:2000], balanced=False)
  pred = subtask_probe.probe_predict(probe, x[2000:])
  assert subtask_probe.probe_scores(pred, y[2000:])["balanced_accuracy"] < 0.75


def test_trailing_mean_by_hand_and_subtask_type():
  z = np.arange(5, dtype=np.float32)[:, None]
  np.testing.assert_allclose(subtask_probe.trailing_mean(z, 2)[:, 0], [0, 0.5, 1.5, 2.5, 3.5])
  np.testing.assert_allclose(subtask_probe.trailing_mean(z, 1), z)
  assert subtask_probe.subtask_type("GoNextTo(red ball, PutNext)") == "GoNextTo"
  assert subtask_probe.subtask_type("Pickup") == "Pickup"
  assert subtask_probe.subtask_target("GoNextTo(red ball, PutNext)") == "GoNextTo(ball, PutNext)"
  assert subtask_probe.subtask_target("GoNextTo(purple door (behind))") == "GoNextTo(door)"
  assert subtask_probe.subtask_target("Open(Unlock)") == "Open(Unlock)"
  assert subtask_probe.subtask_target("grasp") == "grasp"


def test_current_subtask_name_from_done_steps():
  names = babyai_std.current_subtask_name(tf.constant([3, 3, 5]), tf.constant([b"A", b"B", b"C"]),
                                          tf.constant(7))
  # A until done at 3; B is done at 3 too (owns no frame); C from 3 to its done frame 5, then
  # frames after every subgoal keep the last name.
  assert [x.decode() for x in names.numpy()] == ["A", "A", "A", "C", "C", "C", "C"]
  episode = {
      "steps": {
          "observation": {"image": tf.constant([b"jpeg"] * 4),
                          "direction": tf.constant([0, 1, 2, 3], tf.int64)},
          "language_instruction": tf.constant([b"pick up the key"] * 4),
          "is_first": tf.constant([True, False, False, False]),
          "is_last": tf.constant([False, False, False, True]),
      },
      "episode_metadata": {"subgoal_done_steps": tf.constant([2, 3], tf.int32),
                           "subgoal_names": tf.constant([b"GoNextTo(key)", b"Pickup"]),
                           "instruction_done_steps": tf.constant([3], tf.int32),
                           "source": tf.constant("BabyAI-GoTo-v0/seed=1")},
  }
  traj = registry.get_standardize_fn("babyai_bosslevel")(episode)
  assert [x.decode() for x in traj["extras"]["subtask_name"].numpy()] == [
      "GoNextTo(key)", "GoNextTo(key)", "Pickup", "Pickup"]


# ---------------------------------------------------------------- seeds, normalisation


def test_summarize_seeds_mean_and_std():
  def seed(f1):
    stage = {"boundary_rate": 0.1, "mean_chunk_length": 10.0, "val": {"model": {"f1": f1}},
             "model": {"precision": f1, "recall": f1, "f1": f1}, "gt_rate": {}}
    return {"results": {"stage1": stage}, "probe": {"z2": {"accuracy": f1,
                                                           "balanced_accuracy": f1}},
            "probe_type": None}
  s = summary.summarize_seeds([seed(0.2), seed(0.4), seed(0.6)])
  assert s["seeds"] == 3
  assert s["stage1"]["model"]["f1"] == pytest.approx((0.4, 0.2))
  assert s["probe"]["z2"]["accuracy"] == pytest.approx((0.4, 0.2))
  assert "± 0.200" in summary.format_table(s)


def test_zscore_normalization_is_stored_and_reapplied(tmp_path):
  rng = np.random.default_rng(4)
  latents = {"a": rng.normal(3.0, 5.0, size=(200, 3)), "b": rng.normal(3.0, 5.0, size=(300, 3))}
  config = {"data": {"normalize": "zscore"}}
  stats = trainer.resolve_normalization(config, str(tmp_path), latents)
  normed = trainer.normalize_latents(latents, stats)
  frames = np.concatenate(list(normed.values()))
  np.testing.assert_allclose(frames.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(frames.std(0), 1.0, atol=1e-4)
  # A second call (extraction) reads the stored statistics, whatever latents it is given.
  assert trainer.resolve_normalization(config, str(tmp_path)) == stats
  assert json.load(open(os.path.join(tmp_path, trainer.NORMALIZATION_FILE))) == stats
  assert trainer.resolve_normalization({"data": {"normalize": "none"}}, str(tmp_path)) is None
  with pytest.raises(ValueError, match="zscore"):
    trainer.resolve_normalization({"data": {"normalize": "minmax"}}, str(tmp_path))
  with pytest.raises(ValueError, match="at least one episode"):
    trainer.latent_statistics({})


# ---------------------------------------------------------------- oracle-count ceilings


def test_segment_costs_by_brute_force():
  x = np.random.default_rng(5).normal(size=(7, 3))
  cost = ceilings.segment_costs(x)
  for a in range(8):
    for b in range(8):
      if b <= a:
        assert cost[a, b] == np.inf
      else:
        np.testing.assert_allclose(cost[a, b], np.sum((x[a:b] - x[a:b].mean(0)) ** 2),
                                   rtol=1e-9, atol=1e-12)
  boundary = _b(7, [0, 2, 5])
  np.testing.assert_allclose(ceilings.segmentation_cost(x, boundary),
                             cost[0, 2] + cost[2, 5] + cost[5, 7], rtol=1e-12)


@pytest.mark.parametrize("length,count,dim", [(12, 0, 2), (12, 1, 2), (15, 3, 4), (9, 8, 1),
                                              (30, 5, 3), (1, 2, 2), (4, 10, 2)])
def test_optimal_segmentation_equals_ruptures_dynp(length, count, dim):
  import ruptures
  x = np.random.default_rng(length * 10 + count).normal(size=(length, dim))
  ours = ceilings.optimal_segmentation(x if dim > 1 else x[:, 0], count)
  assert ours.shape == (length,) and ours[0]
  k = min(count, length - 1)
  assert int(np.sum(ours[1:])) == k
  if k == 0:
    return
  reference = ruptures.Dynp(model="l2", min_size=1, jump=1).fit(x).predict(n_bkps=k)
  ref = _b(length, [0] + [b for b in reference if b < length])
  # Continuous random data: the optimum is unique, so the starts agree, not only the cost.
  np.testing.assert_array_equal(ours, ref)
  np.testing.assert_allclose(ceilings.segmentation_cost(x, ours),
                             ceilings.segmentation_cost(x, ref), rtol=1e-12)


def test_ceilings_find_planted_segments_and_their_optimality():
  rng = np.random.default_rng(6)
  planted = {"a": [9, 20], "b": [6, 13, 30], "c": [25]}
  signal = {e: _piecewise(rng, s, 40) for e, s in planted.items()}
  truth = {e: _b(40, [0] + s) for e, s in planted.items()}
  noise = {e: rng.normal(size=(40, 4)) for e in planted}
  out = ceilings.oracle_count_ceilings({"planted": signal, "noise": noise}, truth, tolerance=0)
  assert out["planted"]["boundaries"] == 6 and out["planted"]["episodes"] == 3
  exact = out["planted"]["exact_l2"]
  assert exact["f1"] == 1.0 and exact["gt_optimal_share"] == 1.0
  np.testing.assert_allclose(exact["gt_cost_ratio"], 1.0, rtol=1e-9)
  assert out["planted"]["binseg_l2"]["f1"] == 1.0
  assert out["planted"]["evenly_spaced"]["predicted"] == 6
  assert out["planted"]["evenly_spaced"]["f1"] < 1.0
  # On noise the true segmentation is not the optimum, and its cost is above it.
  assert out["noise"]["exact_l2"]["gt_optimal_share"] < 1.0
  assert out["noise"]["exact_l2"]["gt_cost_ratio"] > 1.0


def test_count_segmenters_clip_and_place():
  np.testing.assert_array_equal(ceilings.evenly_spaced_boundaries(10, 1), _b(10, [0, 5]))
  np.testing.assert_array_equal(ceilings.evenly_spaced_boundaries(3, 9), _b(3, [0, 1, 2]))
  assert ceilings.evenly_spaced_boundaries(0, 2).shape == (0,)
  x = np.zeros((8, 2))
  x[3:] += 1.0
  x[6:] += 5.0
  np.testing.assert_array_equal(ceilings.top_change_boundaries(x, 1), _b(8, [0, 6]))
  np.testing.assert_array_equal(ceilings.top_change_boundaries(x, 2), _b(8, [0, 3, 6]))
  np.testing.assert_array_equal(ceilings.binseg_count_boundaries(x, 2), _b(8, [0, 3, 6]))
  assert ceilings.optimal_segmentation(np.zeros((0, 2)), 3).shape == (0,)
