"""Smoke tests of the launch scripts: the main job and the pipeline benchmark, end to end."""
import json
import os
import subprocess
import sys

import pytest

from data_pipeline import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, timeout=600):
  result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("main"))
  _run(["experiments.main", "--config=experiments/configs/main.py:tiny",
        "--config.babyai.num_workers=1", f"--workdir={workdir}"])
  return workdir


def test_main_job_writes_summary_and_filmstrip(main_job):
  with open(os.path.join(main_job, "summary", "summary.json")) as f:
    summary = json.load(f)
  assert summary["train"]["episodes"] == 4 and summary["val"]["episodes"] == 2
  assert summary["train"]["subtasks_per_episode"]["min"] >= 1
  assert summary["train"]["frames"] > summary["train"]["episodes"]
  with open(os.path.join(main_job, "summary", "filmstrip.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(main_job, "run_info.json")) as f:
    info = json.load(f)
  assert info["config"]["babyai"]["level"] == "BabyAI-BossLevel-v0"
  assert "tensorflow-datasets" in info["versions"]


@pytest.mark.parametrize("mode", ["plain", "ours", "noaug", "pairs"])
def test_benchmark_script_runs(main_job, mode):
  dataset_dir = os.path.join(main_job, "data", "babyai_bosslevel", "1.0.0")
  out = _run(["experiments.benchmark_pipeline", f"--mode={mode}", f"--dataset_dir={dataset_dir}",
              "--batch_size=8", "--num_batches=3", "--shuffle_buffer=32"])
  result = json.loads(out.stdout.split("RESULT ", 1)[1])
  assert result["frames_per_second"] > 0 and result["peak_rss_mb"] > 0
  assert result["example_shapes"]["observation/image_primary" if mode != "plain" else "image"][
      0] == 8


def test_all_dataset_families_registered():
  names = registry.registered_names()
  for expected in ("babyai_*", "metaworld_*", "video_*", "bridge", "libero_spatial_no_noops",
                   "libero_object_no_noops", "libero_goal_no_noops", "libero_10_no_noops"):
    assert expected in names
