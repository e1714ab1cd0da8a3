"""Smoke tests of the benchmark scripts (not timed: each runs a few steps and its figures are
checked against the quantities it reports), on the smoke-size main job's outputs where they need
data."""
import glob
import json
import os

import pytest

from data_pipeline import registry
from tests.conftest import run_module


@pytest.mark.parametrize("mode", ["plain", "ours", "noaug", "pairs"])
def test_benchmark_script_runs(smoke_main_job, mode):
  with open(os.path.join(smoke_main_job, "stages", "1_data.json")) as f:
    dataset_dir = json.load(f)["result"]["demos"]  # the action-labelled demos
  out = run_module(["experiments.benchmark_pipeline", f"--mode={mode}",
                    f"--dataset_dir={dataset_dir}", "--batch_size=8", "--num_batches=3",
                    "--shuffle_buffer=32"])
  result = json.loads(out.stdout.split("RESULT ", 1)[1])
  # 3 batches of 8 frames (the warm-up excluded) in the seconds it reports.
  assert (result["batches"], result["batch_size"]) == (3, 8)
  assert result["frames_per_second"] == pytest.approx(3 * 8 / result["seconds"], rel=1e-9)
  shapes = result["example_shapes"]
  assert shapes["observation/image_primary" if mode != "plain" else "image"] == [8, 56, 56, 3]
  assert shapes["action"] == ([8] if mode == "plain" else [8, 10])  # action_horizon=10
  assert ("next_observation/image_primary" in shapes) == (mode == "pairs")
  assert result["peak_rss_mb"] > 200  # MB (ru_maxrss is KiB): TensorFlow alone takes more


def test_teardown_benchmark_runs(smoke_main_job):
  run_dir = sorted(glob.glob(os.path.join(smoke_main_job, "policies", "demos_*", "s*", "baku")))[0]
  out = run_module(["experiments.benchmark_teardown", f"--run_dir={run_dir}", "--pairs=1",
                    "--num_steps=3"])
  result = json.loads(out.stdout.split("RESULT ", 1)[1])
  assert result["num_steps"] == 3 and result["run_dir"] == run_dir
  for arm in ("on", "off"):
    (run,) = result["runs"][arm]  # one pair: one run per arm, the median is that run
    assert run["train_s"] > 0 and run["tail_s"] >= 0  # start < final evaluation <= return
    assert result["median"][arm] == run
  on, off = result["runs"]["on"][0], result["runs"]["off"][0]
  assert result["train_ratio_off_over_on"] == pytest.approx(off["train_s"] / on["train_s"])
  assert result["tail_ratio_off_over_on"] == pytest.approx(
      off["tail_s"] / max(on["tail_s"], 1e-9))


def test_all_dataset_families_registered():
  names = registry.registered_names()
  for expected in ("babyai_*", "metaworld_*", "video_*", "bridge", "libero_spatial_no_noops",
                   "libero_object_no_noops", "libero_goal_no_noops", "libero_10_no_noops"):
    assert expected in names


def test_policy_latency_benchmark_runs():
  out = run_module(["experiments.benchmark_policy", "--model_size=tiny", "--lang_encoder=hash",
                    "--num_calls=20", "--skill_dim=8"])
  result = json.loads(out.stdout.split("RESULT ", 1)[1])
  assert result["num_calls"] == 20
  for policy in ("baku", "hilam"):
    assert result["act_ms_median"][policy] <= result["act_ms_p90"][policy]
  assert set(result["forward_ms_median"]) == {"baku_network", "hilam_high_network",
                                              "hilam_low_network"}
  assert result["hilam_meets_target"] == (result["act_ms_median"]["hilam"] <= result["target_ms"])
  assert result["params"]["hilam"] > result["params"]["baku"]


def test_memory_benchmark_runs(tmp_path):
  """--small at two scales (1x, 3x; each scale is one child process importing TensorFlow and
  JAX, ~30 s in CI): one row per scale of a corpus that grows with the scale, and the printed
  3x / 1x ratio is the one of the printed peak RSS figures."""
  out = run_module(["experiments.benchmark_memory", "--small", "--scales=1,3",
                    f"--out_dir={tmp_path}"])
  result = json.loads(out.stdout.split("RESULT ", 1)[1])
  rows = result["rows"]
  assert [(r["scale"], r["case"]) for r in rows] == [(1, "label"), (3, "label")]
  assert rows[0]["episodes"] * 3 == rows[1]["episodes"]
  assert rows[0]["shards"] < rows[1]["shards"]
  assert all(r["peak_rss_mb"] > 200 for r in rows)  # a process with TensorFlow and JAX
  table = out.stdout.split("RESULT ", 1)[0]
  for r in rows:  # the table prints the figures of the JSON
    assert f"| {r['scale']}x | {r['episodes']:,} |" in table
    assert f"| label | {r['peak_rss_mb']:.1f} |" in table
  ratio = result["ratios"]["label"]
  assert ratio["ratio"] == pytest.approx(rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"])
  assert f"ratio label: 3x / 1x = {ratio['ratio']:.3f}" in table


def test_seeds_benchmark_stacked_path_and_summary():
  """The stacked path (in process, tiny network, 2 seeds): its first step gives each seed the
  loss the seed's own step gives, and the summary's ratio is the one of the printed times."""
  from experiments import benchmark_seeds  # pylint: disable=g-import-not-at-top
  out = benchmark_seeds.run_path("stacked", num_seeds=2, steps=1, small=True)
  assert out["max_loss_diff"] < 1e-5
  assert out["ms_per_seed_step"] > 0 and out["samples_per_s"] == pytest.approx(
      out["batch_size"] / out["ms_per_seed_step"] * 1e3)
  rounds = [dict(path="single", compile_s=2.0, ms_per_seed_step=30.0, samples_per_s=1.0,
                 peak_rss_mb=900.0),
            dict(out, peak_rss_mb=1000.0)]
  summary = benchmark_seeds.summarize(rounds)
  assert summary["speedup_stacked"] == pytest.approx(30.0 / out["ms_per_seed_step"])
  table = benchmark_seeds.format_table(summary, {"num_seeds": 2, "batch_size": 4, "params": 1,
                                                 "threads": 1, "repeats": 1, "steps": 1})
  assert f"stacked vs single: {summary['speedup_stacked']:.2f}x" in table
  assert "| single | 2.0 | 30.0 |" in table
