"""Skill stage end to end on tiny data: metrics by hand, train, checkpoint, extract, join, evaluate.

Latent-action labels here are random vectors keyed by the real episode ids of a tiny generated
BabyAI dataset (the pipeline, not the LAM, is under test), written in the label-folder layout of
`hilam_jax.lam.labeling`.
"""
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import episode_split
from data_pipeline import reader
from data_pipeline import traj_transforms as tt
from data_pipeline.generators import babyai
from experiments.configs import generate_babyai
from experiments.configs import train_skill_model as skill_config
from hilam_jax import training
from hilam_jax.lam import labeling
from hilam_jax.skill import extract
from hilam_jax.skill import trainer
from hilam_jax.skill import window_stream
from hilam_jax.skill.discovery import baselines
from hilam_jax.skill.discovery import boundaries
from hilam_jax.skill.discovery import evaluate
from hilam_jax.skill.discovery import inputs
from hilam_jax.skill.discovery import stages

LATENT_DIM = 4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- metrics by hand


def _b(length, frames):
  b = np.zeros(length, bool)
  b[list(frames)] = True
  return b


def test_match_is_one_to_one_and_greedy_by_distance():
  # Two predictions near one true boundary: one match.
  assert boundaries.match_boundaries([9, 11], [10], 2) == 1
  # Greedy closest first: 5 pairs with 6 (d=1) before 5 could take 3 (d=2); then 3 - 2 pairs.
  assert boundaries.match_boundaries([3, 5], [2, 6], 2) == 2
  assert boundaries.match_boundaries([5], [2, 8], 2) == 0  # both 3 frames away
  assert boundaries.match_boundaries([5], [7], 2) == 1      # exactly at the tolerance


def test_precision_recall_f1_by_hand():
  true = {"a": _b(20, [0, 5, 12]), "b": _b(10, [0, 4])}
  pred = {"a": _b(20, [0, 6, 7, 18]), "b": _b(10, [0])}
  r = boundaries.precision_recall_f1(pred, true, tolerance=2)
  # frame 0 ignored: pred a {6, 7, 18}, true a {5, 12}, true b {4}: one match (6 or 7 with 5).
  assert (r["true_positives"], r["predicted"], r["ground_truth"]) == (1, 3, 3)
  assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
  assert r["f1"] == pytest.approx(1 / 3)
  r0 = boundaries.precision_recall_f1(pred, true, tolerance=0)
  assert r0["true_positives"] == 0 and r0["f1"] == 0.0
  r3 = boundaries.precision_recall_f1({"a": _b(20, [0, 9])}, {"a": _b(20, [0, 12])}, tolerance=3)
  assert r3["f1"] == 1.0


def test_fixed_length_baseline_by_hand():
  np.testing.assert_array_equal(np.flatnonzero(baselines.fixed_length_boundaries(10, 3.0)),
                                [0, 3, 6, 9])
  np.testing.assert_array_equal(np.flatnonzero(baselines.fixed_length_boundaries(10, 2.5)),
                                [0, 2, 5, 8])  # round(2.5) = 2 (banker's), 5, round(7.5) = 8
  b = {"a": _b(12, [0, 4, 8])}
  assert boundaries.mean_chunk_length(b) == 4.0
  assert boundaries.boundary_rate(b) == pytest.approx(2 / 11)


def test_delta_baseline_matches_rate_by_hand():
  z = np.array([[0.], [0.], [5.], [5.], [6.], [10.]], np.float32)  # changes 0, 5, 0, 1, 4
  b, threshold = baselines.delta_threshold_boundaries({"a": z}, rate=0.4)
  np.testing.assert_array_equal(np.flatnonzero(b["a"]), [0, 2, 5])  # the 2 largest of 5
  assert 1.0 <= threshold < 4.0
  assert boundaries.boundary_rate(b) == pytest.approx(0.4)


def test_evaluate_stage_gives_baselines_the_same_budget():
  true = {"a": _b(30, [0, 10, 20])}
  pred = {"a": _b(30, [0, 10, 20])}
  z = np.zeros((30, 2), np.float32)
  z[10:] += 3.0
  z[20:] += 3.0
  r = stages.evaluate_stage(pred, {"a": z}, true, tolerance=1)
  assert r["model"]["f1"] == 1.0
  assert r["mean_chunk_length"] == 10.0
  assert r["fixed_length"]["f1"] == 1.0          # boundaries 0, 10, 20
  assert r["latent_delta"]["f1"] == 1.0          # the two jumps
  assert r["latent_delta"]["predicted"] == 2


# ---------------------------------------------------------------- tiny data


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  """(dataset_dir, labels_dir): tiny BabyAI set + random latent labels keyed by its episode ids."""
  root = tmp_path_factory.mktemp("skill_data")
  config = generate_babyai.get_config("tiny")
  dataset_dir = babyai.generate(config, str(root / "babyai"))["dataset_dir"]
  labels_dir = str(root / "labels")
  rng = np.random.default_rng(0)
  datasets = []
  for split in ("train", "val"):
    datasets.append({"dataset_dir": dataset_dir, "split": split})
    for job in labeling.plan_shards([datasets[-1]], labels_dir):
      labels = {}
      for traj in reader.read_trajectories(dataset_dir, source=job.source):
        episode_id = traj["episode_id"][0].numpy().decode()
        labels[episode_id] = rng.normal(size=(len(traj["is_first"]) - 1, LATENT_DIM)).astype(
            np.float32)
      labeling.write_shard(job.out_path, labels, LATENT_DIM)
  shards = [os.path.relpath(j.out_path, labels_dir)
            for j in labeling.plan_shards(datasets, labels_dir)]
  with open(os.path.join(labels_dir, labeling.MANIFEST), "w") as f:
    json.dump({"lam": {}, "frame_gap": 1, "latent_dim": LATENT_DIM, "datasets": datasets,
               "shards": shards}, f)
  return dataset_dir, labels_dir


def _config(labels_dir, num_steps=4):
  config = skill_config.get_config("tiny")
  config.data.labels_dir = labels_dir
  config.num_steps = num_steps
  return config


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
  _, labels_dir = tiny_data
  workdir = str(tmp_path_factory.mktemp("skill"))
  final = trainer.train_and_evaluate(_config(labels_dir), workdir)
  return workdir, final


def test_windows_cover_every_frame_once_masked():
  z = {"e": np.arange(21, dtype=np.float32)[:, None]}
  latents, mask = trainer.make_windows(z, window=8, hop=4)
  assert trainer.window_starts(21, 8, 4) == [0, 4, 8, 12, 16]
  assert latents.shape == (5, 8, 1) and mask.sum(1).tolist() == [8, 8, 8, 8, 5]
  np.testing.assert_array_equal(latents[4, :5, 0], np.arange(16, 21))


def test_training_runs_and_checkpoints(trained, tiny_data):
  workdir, final = trained
  assert np.isfinite(final["loss"]) and np.isfinite(final["latent_l1"])
  assert "boundary_rate/s2" in final
  directory = os.path.join(workdir, "checkpoints")
  assert training.load_checkpoint_config(directory)["model"]["latent_dim"] == LATENT_DIM
  mismatched = _config(tiny_data[1])
  mismatched.lambda_ratio = 0.5
  with pytest.raises(training.ConfigMismatchError):
    trainer.train_and_evaluate(mismatched, workdir)


def test_training_in_bfloat16(trained, tiny_data, tmp_path):
  """config.compute_dtype = "bfloat16" reaches the real trainer: it trains, checkpoints float32
  parameters, and ends within a few percent of the float32 run (`trained`, same seed)."""
  import jax  # pylint: disable=g-import-not-at-top
  config = _config(tiny_data[1])
  config.compute_dtype = "bfloat16"
  final = trainer.train_and_evaluate(config, str(tmp_path / "bfloat16"))
  assert np.isfinite(final["loss"])
  np.testing.assert_allclose(final["latent_l1"], trained[1]["latent_l1"], rtol=0.05)
  params = training.restore_params(os.path.join(str(tmp_path / "bfloat16"), "checkpoints"))
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype("float32")}
  with pytest.raises(ValueError, match="compute_dtype"):
    config = _config(tiny_data[1])
    config.compute_dtype = "half"
    trainer.train_and_evaluate(config, str(tmp_path / "refused"))
  assert not os.path.exists(tmp_path / "refused" / "run_info.json")


def _micro_frozen_lam():
  """An untrained micro LAM at 16x16 with the labels' k = 1 and Dz (L_rec's plumbing under test)."""
  import jax  # pylint: disable=g-import-not-at-top
  from hilam_jax import lam  # pylint: disable=g-import-not-at-top
  lam_config = lam.LAMConfig.tiny(stem_stride=2, idm_widths=(8, 16), fdm_widths=(8, 16),
                                  idm_mlp_width=16, fdm_cond_width=16, norm_groups=4,
                                  latent_dim=LATENT_DIM)
  return lam.FrozenLAM(lam.LatentActionModel(lam_config),
                       lam.init_params(lam_config, jax.random.key(0), (16, 16)), frame_gap=1,
                       image_size=(16, 16))


def test_window_frames_are_the_pairs_of_each_position(tiny_data):
  dataset_dir, labels_dir = tiny_data
  latents = trainer.load_split_latents(labels_dir, "val")
  frames = trainer.load_split_frames(labels_dir, "val", (16, 16), set(latents))
  window_frames = trainer.make_window_frames(latents, frames, window=8, hop=4, frame_gap=1)
  windows = trainer.make_windows(latents, 8, 4)
  assert window_frames.frame_index.shape == windows[1].shape
  np.testing.assert_array_equal(window_frames.pair_valid, windows[1])  # t + k < T for every z_t
  traj = next(iter(reader.read_trajectories(dataset_dir, split="val")))
  episode_id = traj["episode_id"][0].numpy().decode()
  from data_pipeline import frame_transforms as ft  # pylint: disable=g-import-not-at-top
  decoded = ft.decode_images(traj["observation"]["image_primary"], (16, 16)).numpy()
  np.testing.assert_array_equal(frames.frames[frames.offsets[episode_id]:][:len(decoded)],
                                decoded)
  rng = np.random.default_rng(0)
  index = np.arange(len(windows[0]))
  pairs = trainer.sample_frame_pairs(window_frames, index, windows[1][index], 3, rng)
  positions, valid = pairs["frame_positions"], pairs["frame_mask"]
  assert positions.shape == valid.shape == (len(index), 3) and np.all(positions[valid] >= 1)
  assert np.all(np.take_along_axis(windows[1], positions, 1)[valid])
  flat = np.take_along_axis(window_frames.frame_index, positions, 1)
  np.testing.assert_array_equal(pairs["frame_t"][valid], frames.frames[flat[valid]])
  np.testing.assert_array_equal(pairs["frame_tk"][valid], frames.frames[flat[valid] + 1])


def test_training_with_lambda_rec(tiny_data, tmp_path):
  """lambda_rec > 0 trains: finite loss, rec reported, and its gradient reaches the skill model."""
  import jax  # pylint: disable=g-import-not-at-top
  from hilam_jax.skill import losses  # pylint: disable=g-import-not-at-top
  config = _config(tiny_data[1], num_steps=2)
  config.lambda_rec = 1.0
  config.data.rec_positions = 4
  frozen = _micro_frozen_lam()
  workdir = str(tmp_path / "skill_rec")
  final = trainer.train_and_evaluate(config, workdir, frozen_lam=frozen)
  assert np.isfinite(final["loss"]) and np.isfinite(final["rec"]) and final["rec"] > 0
  # The rec term's gradient w.r.t. the trained skill model on a real training batch.
  module, params, _ = extract.load_skill_model(workdir)
  batch = next(window_stream.batches(
      window_stream.split_units(tiny_data[1], "train", with_frames=True), batch_size=4, seed=0,
      buffer_size=16, window=config.data.window, hop=config.data.window_hop,
      latent_dim=LATENT_DIM, frames=window_stream.FrameSpec((16, 16), frame_gap=1,
                                                            rec_positions=4)))
  assert batch["frame_mask"].any()

  def rec_only(p):
    _, metrics = losses.skill_loss(p, module, batch, jax.random.key(0), frozen_lam=frozen,
                                   lambda_rec=1.0, lambda_ratio=0.0)
    return metrics["rec"]
  # Jitted (fast compile): eager op-by-op dispatch of the skill model and the LAM took ~90 s.
  grads = jax.jit(jax.grad(rec_only), compiler_options=(
      {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None))(params)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  # It reaches every parameter: the head, both stages' encoders, decoders and main networks, and
  # the routers (through the boundaries' confidence and the EMA), not only the output layer.
  assert all(float(np.abs(g).max()) > 0 for g in leaves), [float(np.abs(g).max()) for g in leaves]
  # A LAM whose k or Dz differs from the labels' is refused.
  with pytest.raises(ValueError, match="does not match the labels"):
    bad = _micro_frozen_lam()
    bad.frame_gap = 2
    trainer.train_and_evaluate(config, str(tmp_path / "bad"), frozen_lam=bad)


@pytest.fixture(scope="module")
def extracted(trained, tiny_data, tmp_path_factory):
  workdir, _ = trained
  out_dir = str(tmp_path_factory.mktemp("skills"))
  stats = extract.extract_skills(workdir, tiny_data[1], out_dir, batch_size=8)
  return out_dir, stats


def test_extraction_round_trips_and_joins(extracted, trained, tiny_data):
  out_dir, stats = extracted
  dataset_dir, labels_dir = tiny_data
  latents = labeling.load_labels(labels_dir)
  raw = {}
  for split in ("train", "val"):
    raw.update(trainer.load_split_latents(labels_dir, split))
  assert stats["episodes"] == len(raw)
  manifest = json.load(open(os.path.join(out_dir, extract.MANIFEST)))
  assert len(manifest["skill_model"]["params_sha256"]) == 64
  b1 = extract.load_skills_dict(out_dir, "boundary/s1")
  b2 = extract.load_skills_dict(out_dir, "boundary/s2")
  s2 = extract.load_skills_dict(out_dir, "skill/s2")
  for episode_id, z in raw.items():
    assert len(b1[episode_id]) == len(z) == len(s2[episode_id])
    assert b1[episode_id][0] and b2[episode_id][0]           # every episode starts a chunk
    assert not np.any(b2[episode_id] & ~b1[episode_id])      # stage 2 => stage 1
  # The first window's frames equal a direct run of the model on the episode's first L latents.
  module, params, config = extract.load_skill_model(trained[0])
  window = config["data"]["window"]
  episode_id = sorted(raw)[0]
  head = raw[episode_id][:window]
  out = module.apply({"params": params}, head[None], np.ones((1, len(head)), bool))
  # Boundaries are p_t > 0.5 on floats computed at another batch shape (last bits may differ):
  # equal wherever p_t is not within float noise of the threshold.
  p = np.asarray(out.stages[0].routing.boundary_prob[0])
  decided = np.abs(p - 0.5) > 1e-4
  np.testing.assert_array_equal(np.asarray(out.stages[0].frame_boundary[0])[decided],
                                b1[episode_id][:window][decided])
  assert decided.mean() > 0.9
  np.testing.assert_allclose(np.asarray(out.stages[1].skill[0]), s2[episode_id][:window],
                             atol=1e-5)
  # Joinable onto trajectories by episode id, like the latent actions.
  joined_key = extract.load_skills(out_dir, "skill/s2")
  assert isinstance(joined_key, tt.EpisodeLabels)
  traj = next(iter(reader.read_trajectories(dataset_dir, split="val")))
  episode_id = traj["episode_id"][0].numpy().decode()
  joined = joined_key.join(dict(traj), "skill/s2")
  np.testing.assert_allclose(joined["skill/s2"].numpy()[:len(s2[episode_id])], s2[episode_id],
                             atol=1e-6)
  assert joined["skill/s2_mask"].numpy().sum() == len(s2[episode_id])
  joined = extract.load_skills(out_dir, "boundary/s1").join(dict(traj), "b1")
  np.testing.assert_array_equal(joined["b1"].numpy()[:len(b1[episode_id])] > 0.5, b1[episode_id])
  assert isinstance(latents, tt.EpisodeLabels)


def test_long_episodes_use_overlapping_windows():
  ex = extract.SkillExtractor.__new__(extract.SkillExtractor)
  ex.window, ex.hop = 8, 4
  windows = ex._windows(21)  # pylint: disable=protected-access
  owners = np.concatenate([f for _, f, _ in windows])
  np.testing.assert_array_equal(np.sort(owners), np.arange(21))
  assert [s for s, _, _ in windows] == [0, 4, 8, 12, 16]
  for start, frames, offsets in windows[1:]:
    assert offsets.min() >= 4 and offsets.max() < 8  # always >= window - hop frames of context
    np.testing.assert_array_equal(frames - start, offsets)


def _run_experiment(module, *flag_args, timeout=600):
  """Runs `python -m experiments.<module> <flags>` from the repository; asserts exit 0."""
  result = subprocess.run([sys.executable, "-m", f"experiments.{module}", *flag_args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_evaluate_script_end_to_end(extracted, tiny_data, tmp_path):
  out_dir, _ = extracted
  dataset_dir, _ = tiny_data
  report_dir = str(tmp_path / "eval")
  result = _run_experiment("evaluate_skills", f"--skills_dir={out_dir}",
                           f"--dataset_dir={dataset_dir}", f"--out_dir={report_dir}",
                           "--num_filmstrips=1")
  assert "latent_delta" in result.stdout and "ruptures_binseg" in result.stdout
  report = json.load(open(os.path.join(report_dir, "skill_discovery.json")))
  assert report["heldout"]["validation_episodes"] >= 1 and report["heldout"]["test_episodes"] >= 1
  # The script reports what the metric computes on the extracted boundaries and the ground truth
  # of the test half (recomputed here independently of run_evaluation's plumbing).
  truth = inputs.read_ground_truth(dataset_dir, "val")[0]
  for stage in ("s1", "s2"):
    predicted = extract.load_skills_dict(out_dir, f"boundary/{stage}")
    _, test_ids = episode_split.heldout_split(sorted(set(predicted) & set(truth)))
    assert test_ids and report["results"][f"stage{stage[1]}"]["test_episodes"] == len(test_ids)
    want = boundaries.precision_recall_f1(
        {e: predicted[e] for e in test_ids},
        {e: truth[e][:len(predicted[e])] for e in test_ids}, 2)
    got = report["results"][f"stage{stage[1]}"]["model"]
    for key in ("precision", "recall", "f1"):
      assert abs(got[key] - want[key]) < 1e-9, (stage, key, got, want)
    for method in ("fixed_length", "latent_delta", "ruptures_binseg", "ruptures_pelt"):
      assert "f1" in report["results"][f"stage{stage[1]}"][method]
      assert "f1" in report["results"][f"stage{stage[1]}"]["gt_rate"][method]
  # The tiny generator stores subtask names: the probe ran on every feature set.
  assert set(report["summary"]["probe"]) >= {"z1", "z2", "z0", "z0_mean", "majority"}
  assert os.path.getsize(report["filmstrips"][0]) > 1000


def test_ceiling_script_end_to_end(tiny_data, tmp_path):
  """The oracle-count ceilings on the real tiny BabyAI set: the test half, its true boundary
  count, and an exact optimum no segmentation (the true one included) undercuts."""
  dataset_dir, labels_dir = tiny_data
  out_dir = str(tmp_path / "ceiling")
  result = _run_experiment("skill_ceiling", f"--labels_dir={labels_dir}",
                           f"--dataset_dir={dataset_dir}", f"--out_dir={out_dir}",
                           "--ground_truth=leaf")
  assert "exact_l2" in result.stdout
  report = json.load(open(os.path.join(out_dir, "ceiling.json")))
  latents = labeling.read_labels(labels_dir)
  truth = inputs.read_ground_truth(dataset_dir, "val", ground_truth="leaf")[0]
  _, test_ids = episode_split.heldout_split(sorted(set(truth) & set(latents)))
  want = sum(int(np.sum(truth[e][:len(latents[e])][1:])) for e in test_ids)
  assert report["test_episodes"] == len(test_ids) and want > 0
  for signal in ("z0", "z0_zscore", "action"):
    rows = report["results"][signal]
    assert rows["episodes"] == len(test_ids) and rows["boundaries"] == want
    assert rows["exact_l2"]["gt_cost_ratio"] >= 1.0 - 1e-9
    assert rows["evenly_spaced"]["predicted"] == want
  # The exact fit places exactly the true count on every signal, actions included.
  assert report["results"]["action"]["exact_l2"]["predicted"] == want
  with pytest.raises(ValueError, match="ground_truth"):
    evaluate.run_ceilings(labels_dir, dataset_dir, str(tmp_path / "x"), ground_truth="all")


def test_skill_study_script_end_to_end(tiny_data, tmp_path):
  """Two settings (the paper's objective and the bottleneck heads), one seed each, trained in two
  worker processes and scored against the leaf subtasks: one study line per setting."""
  dataset_dir, labels_dir = tiny_data
  out_dir = str(tmp_path / "study")
  result = subprocess.run(
      [sys.executable, "-m", "experiments.skill_study", f"--labels_dir={labels_dir}",
       f"--dataset_dir={dataset_dir}", f"--out_dir={out_dir}", "--variant=tiny",
       "--settings=default,bottleneck", "--seeds=0", "--num_steps=4", "--num_workers=2",
       "--ground_truth=leaf", "--eval_name=eval_leaf", "--set=data.window_hop=4"],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  study = json.load(open(os.path.join(out_dir, "study_eval_leaf.json")))
  assert set(study) == {"default", "bottleneck"}
  assert study["bottleneck"]["overrides"]["model.bottleneck_heads"] is True
  assert study["default"]["common_overrides"] == {"data.window_hop": 4}
  report = json.load(open(os.path.join(out_dir, "bottleneck", "eval_leaf",
                                       "skill_discovery.json")))
  assert report["ground_truth"] == "leaf"
  # Scored against the leaf boundaries, which refine the initial ones.
  leaf = inputs.read_ground_truth(dataset_dir, "val", ground_truth="leaf")[0]
  initial = inputs.read_ground_truth(dataset_dir, "val")[0]
  assert sum(b[1:].sum() for b in leaf.values()) > sum(b[1:].sum() for b in initial.values())
  assert report["results"]["stage1"]["model"]["ground_truth"] > 0
  lines = open(os.path.join(out_dir, "study_eval_leaf.md")).read().splitlines()
  assert sum(line.startswith("| default |") or line.startswith("| bottleneck |")
             for line in lines) == 2
  # The model trained with the bottleneck heads has their parameters.
  from hilam_jax.training import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  config = checkpoint_lib.load_checkpoint_config(
      os.path.join(out_dir, "bottleneck", "seed0", "train", "checkpoints"))
  assert config["model"]["bottleneck_heads"] is True and config["lambda_aux"] == 1.0
  assert config["data"]["window_hop"] == 4  # --set reaches every setting (tiny's own: 8)


# ---------------------------------------------------------------- the streamed input


def _stream_rows(labels_dir, split, frames=None, seed=0):
  from hilam_jax.skill import window_stream  # pylint: disable=g-import-not-at-top
  units = window_stream.split_units(labels_dir, split, with_frames=frames is not None)
  return list(window_stream.window_stream(units, window=8, hop=4, latent_dim=LATENT_DIM,
                                          seed=seed, repeat=False, frames=frames))


def test_stream_yields_every_window_once_per_epoch(tiny_data):
  """One epoch of the stream holds exactly the windows of `make_windows` on the whole split (in
  another order), and `count_windows` counts them from the shards' lengths alone."""
  from hilam_jax.skill import window_stream  # pylint: disable=g-import-not-at-top
  _, labels_dir = tiny_data
  latents, mask = trainer.make_windows(trainer.load_split_latents(labels_dir, "train"), 8, 4)
  rows = _stream_rows(labels_dir, "train")
  key = lambda z, m: (z.tobytes(), m.tobytes())
  assert sorted(key(r["latents"], r["mask"]) for r in rows) == sorted(
      key(z, m) for z, m in zip(latents, mask))
  units = window_stream.split_units(labels_dir, "train")
  assert window_stream.count_windows(units, 8, 4)[1] == len(latents)
  assert [r["latents"].tobytes() for r in _stream_rows(labels_dir, "train", seed=1)] != [
      r["latents"].tobytes() for r in rows]  # another seed, another order


def test_stream_batches_are_seeded_and_seek(tiny_data):
  from hilam_jax.skill import window_stream  # pylint: disable=g-import-not-at-top
  _, labels_dir = tiny_data
  units = window_stream.split_units(labels_dir, "train")
  make = lambda start=0, seed=0: window_stream.batches(
      units, batch_size=4, seed=seed, buffer_size=16, window=8, hop=4, latent_dim=LATENT_DIM,
      start=start)
  first = list(itertools.islice(make(), 12))
  assert all(b["latents"].shape == (4, 8, LATENT_DIM) and b["mask"].shape == (4, 8)
             for b in first)
  again = list(itertools.islice(make(start=7), 5))
  for a, b in zip(first[7:], again, strict=True):
    np.testing.assert_array_equal(a["latents"], b["latents"])
  other = next(make(seed=1))
  assert not np.array_equal(other["latents"], first[0]["latents"])


def test_shuffle_buffer_permutes_its_input():
  from hilam_jax.skill import window_stream  # pylint: disable=g-import-not-at-top
  out = list(window_stream.shuffled(range(100), 10, np.random.default_rng(0)))
  assert sorted(out) == list(range(100)) and out != list(range(100))
  # An element leaves the buffer at most ~buffer positions before it entered it.
  assert all(position >= value - 10 for position, value in enumerate(out))
  assert out == list(window_stream.shuffled(range(100), 10, np.random.default_rng(0)))


def test_streamed_frame_pairs_are_the_windows_frames(tiny_data):
  """With frames, every streamed window carries the pairs (I_t, I_{t+k}) of its own episode at
  the positions it drew: checked against the in-memory frames of the split."""
  from hilam_jax.skill import window_stream  # pylint: disable=g-import-not-at-top
  _, labels_dir = tiny_data
  spec = window_stream.FrameSpec((16, 16), frame_gap=1, rec_positions=3)
  rows = _stream_rows(labels_dir, "val", frames=spec)
  latents = trainer.load_split_latents(labels_dir, "val")
  frames = trainer.load_split_frames(labels_dir, "val", (16, 16), set(latents))
  window_frames = trainer.make_window_frames(latents, frames, 8, 4, 1)
  windows = trainer.make_windows(latents, 8, 4)
  assert len(rows) == len(windows[0])
  index = {(z.tobytes(), m.tobytes()): i for i, (z, m) in enumerate(zip(*windows))}
  for row in rows:
    i = index[(row["latents"].tobytes(), row["mask"].tobytes())]
    valid, positions = row["frame_mask"], row["frame_positions"]
    assert positions.shape == (3,) and valid.any() and np.all(positions[valid] >= 1)
    flat = window_frames.frame_index[i][positions[valid]]
    np.testing.assert_array_equal(row["frame_t"][valid], frames.frames[flat])
    np.testing.assert_array_equal(row["frame_tk"][valid], frames.frames[flat + 1])


def test_streamed_latent_statistics_equal_the_pooled_ones(tiny_data):
  from hilam_jax.skill import window_stream  # pylint: disable=g-import-not-at-top
  _, labels_dir = tiny_data
  pooled = trainer.latent_statistics(trainer.load_split_latents(labels_dir, "train"))
  streamed = trainer.latent_statistics(window_stream.iter_shard_latents(
      window_stream.split_units(labels_dir, "train")))
  np.testing.assert_allclose(streamed["mean"], pooled["mean"], rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(streamed["std"], pooled["std"], rtol=1e-10)
