"""SIGTERM to a long-running launch script outside a train loop: it stops at once with its
spawned workers, exits 143, and the same command resumes.

Without a handler Python dies on SIGTERM like on SIGKILL: the data generator's spawned
simulation workers were left running as orphans (measured with `generate_metaworld`: exit -15,
and the test below fails that way without the handler).
"""
import os
import signal
import subprocess
import sys
import time

import psutil


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# Every launch script that runs for long: SIGTERM must end it with exit 143 through
# `preemption.exit_on_preemption` (what the main-job test below exercises end to end).
LONG_RUNNING = ("main", "train_lam", "train_skill_model", "train_policy", "label_latent_actions",
                "generate_babyai", "generate_metaworld", "convert_videos", "extract_skills",
                "evaluate_skills", "evaluate_lam", "skill_study", "skill_ceiling",
                "convert_uniskill", "early_stopping_study")


def test_every_long_running_script_stops_on_sigterm_with_exit_143():
  import ast  # pylint: disable=g-import-not-at-top
  for name in LONG_RUNNING:
    tree = ast.parse(open(os.path.join(REPO, "experiments", f"{name}.py")).read())
    runs = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and ast.unparse(node.func) == "app.run"]
    assert [ast.unparse(r.args[0]) for r in runs] == ["preemption.exit_on_preemption(main)"], \
        f"experiments/{name}.py: app.run(...) without preemption.exit_on_preemption"


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
