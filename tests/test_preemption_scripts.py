"""SIGTERM to a long-running launch script that is not a trainer: it stops at once with its
spawned workers, exits 143, and the same command resumes.

Without a handler Python dies on SIGTERM like on SIGKILL: the data generator's spawned
simulation workers were left running as orphans.
"""
import os
import signal
import subprocess
import sys
import time

import psutil

from data_pipeline import reader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(data_dir):
  return [sys.executable, "-m", "experiments.generate_metaworld",
          "--config=experiments/configs/generate_metaworld.py:tiny",
          "--config.num_workers=2", "--config.episodes_per_shard=1",
          "--config.episodes_per_task.train=6", "--config.episodes_per_task.val=1",
          f"--data_dir={data_dir}"]


def _wait_for_line(process, needle, timeout):
  deadline = time.monotonic() + timeout
  lines = []
  while time.monotonic() < deadline:
    line = process.stderr.readline()
    if not line:
      break
    lines.append(line)
    if needle in line:
      return lines
  raise AssertionError(f"{needle!r} not logged within {timeout} s:\n" + "".join(lines[-30:]))


def test_sigterm_stops_the_data_generator_and_its_workers_and_the_rerun_resumes(tmp_path):
  data_dir = str(tmp_path / "data")
  process = subprocess.Popen(_command(data_dir), cwd=REPO, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_line(process, "written |", timeout=300)  # the first shard is on disk
    workers = psutil.Process(process.pid).children(recursive=True)
    assert len(workers) >= 2  # the pool's spawned simulation workers (+ its resource tracker)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 143, stderr[-3000:]
  assert "Preempted" in stderr and "rerun the same command to resume" in stderr
  gone, alive = psutil.wait_procs(workers, timeout=30)
  assert not alive, f"workers left running: {[p.pid for p in alive]}"
  assert gone

  rerun = subprocess.run(_command(data_dir), cwd=REPO, capture_output=True, text=True,
                         timeout=600, check=False)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resuming:" in rerun.stderr  # the shards written before the signal are kept
  dataset_dir = os.path.join(data_dir, "metaworld_tiny", "1.0.0")
  episodes = {split: sum(1 for _ in reader.read_trajectories(dataset_dir, split=split))
              for split in ("train", "val")}
  assert episodes == {"train": 6, "val": 1}


def _main_job(workdir):
  overrides = []
  for data in ("video", "demos"):
    overrides += [f"--config.{data}.tasks=('reach-v3',)", f"--config.{data}.max_steps=150",
                  f"--config.{data}.episodes_per_shard=1",
                  f"--config.{data}.episodes_per_task.train=4",
                  f"--config.{data}.episodes_per_task.val=1"]
  return [sys.executable, "-m", "experiments.main",
          "--config=experiments/configs/main.py:metaworld", f"--workdir={workdir}",
          "--config.stop_after=data", *overrides]


def test_sigterm_stops_the_main_job_in_its_data_stage_and_the_rerun_resumes(tmp_path):
  """The main job's stages outside training: SIGTERM while its data generator's workers
  simulate; exit 143 with the workers gone; the rerun keeps the shards and finishes the stage."""
  workdir = str(tmp_path / "main")
  process = subprocess.Popen(_main_job(workdir), cwd=REPO, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_line(process, "written |", timeout=300)
    workers = psutil.Process(process.pid).children(recursive=True)
    assert len(workers) >= 2
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 143, stderr[-3000:]
  _, alive = psutil.wait_procs(workers, timeout=30)
  assert not alive, f"workers left running: {[p.pid for p in alive]}"
  assert not os.path.exists(os.path.join(workdir, "stages", "1_data.json"))  # not marked done

  rerun = subprocess.run(_main_job(workdir), cwd=REPO, capture_output=True, text=True,
                         timeout=600, check=False)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resuming:" in rerun.stderr
  assert os.path.exists(os.path.join(workdir, "stages", "1_data.json"))
