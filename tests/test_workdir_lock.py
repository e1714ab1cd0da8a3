"""One run per workdir (`hilam_jax.training.workdir_lock`): real `python -m experiments.train_lam`
processes on a tiny BabyAI dataset.

A second run started on the workdir of a running one is refused at once, naming the first's pid
and the lock file, and writes nothing (one TensorBoard event file, the first's); a lock file left
by a killed process is taken over with a warning.
"""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data_pipeline.generators import babyai
from experiments.configs import generate_babyai
from hilam_jax.training import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_babyai(tmp_path_factory):
  config = generate_babyai.get_config("tiny")
  config.num_train_episodes, config.num_val_episodes = 8, 2
  return babyai.generate(config, str(tmp_path_factory.mktemp("babyai")))["dataset_dir"]


def _train_lam(dataset_dir, workdir, num_steps):
  spec = lambda split: f'({{"dataset_dir": "{dataset_dir}", "split": "{split}"}},)'
  args = [sys.executable, "-m", "experiments.train_lam",
          "--config=experiments/configs/train_lam.py:tiny", f"--config.num_steps={num_steps}",
          f"--config.data.train={spec('train')}", f"--config.data.val={spec('val')}",
          f"--config.eval_every={num_steps}", f"--config.checkpoint_every={num_steps}",
          f"--workdir={workdir}"]
  return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _holder(workdir):
  try:
    with open(os.path.join(workdir, workdir_lock.LOCK_NAME)) as f:
      return json.loads(f.read() or "{}").get("pid")
  except (OSError, ValueError):
    return None


def _events(workdir):
  return sorted(glob.glob(os.path.join(workdir, "tensorboard", "**", "events.*"), recursive=True))


def test_second_run_on_a_workdir_is_refused_while_the_first_trains(tiny_babyai, tmp_path):
  """A second train_lam on the workdir of a training one is refused within seconds, naming the
  first's pid and the lock file, and writes nothing; the first goes on training, and when it
  stops (SIGTERM: its checkpoint saved, exit 143) the lock is released."""
  workdir = str(tmp_path / "run")
  first = _train_lam(tiny_babyai, workdir, num_steps=100_000)
  second = None
  try:
    deadline = time.time() + 300
    while not _events(workdir):  # the first is training (it took the lock before writing)
      assert first.poll() is None, first.communicate()[1][-3000:]
      assert time.time() < deadline, "the first run never started training"
      time.sleep(0.2)
    started = time.time()
    second = _train_lam(tiny_babyai, workdir, num_steps=100_000)
    _, err = second.communicate(timeout=120)
    seconds = time.time() - started
    assert second.returncode != 0
    assert "WorkdirLockedError" in err, err[-3000:]
    assert f"pid {first.pid}" in err and workdir_lock.LOCK_NAME in err, err[-3000:]
    assert seconds < 60, f"refused only after {seconds:.0f}s"
    assert first.poll() is None, "the first run ended before the second was refused: no overlap"
    assert _holder(workdir) == first.pid  # the second did not overwrite the lock file
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=300)
  finally:
    for process in (first, second):
      if process is not None and process.poll() is None:
        process.kill()
        process.wait()
  assert first.returncode == 143, err[-3000:]
  assert len(_events(workdir)) == 1, _events(workdir)  # the first run's events only
  assert _holder(workdir) is None  # released (emptied) at exit: no stale lock for the next run


def test_lock_file_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
  """A lock file that names a process killed with SIGKILL (no clean release) is taken over by
  the next run, which says so (`lock_workdir`, the call every trainer, labeling and the main job
  make first)."""
  workdir = str(tmp_path / "run")
  env = dict(os.environ, PYTHONPATH=REPO)
  holder = ("import sys, time\nfrom hilam_jax.training import workdir_lock as w\n"
            "w.lock_workdir(sys.argv[1]); print('locked', flush=True); time.sleep(120)\n")
  dead = subprocess.Popen([sys.executable, "-c", holder, workdir], stdout=subprocess.PIPE,
                          text=True, env=env, cwd=REPO)
  assert dead.stdout.readline().strip() == "locked"
  dead.kill()  # SIGKILL: the kernel drops the flock, the file still names the dead pid
  dead.wait()
  assert _holder(workdir) == dead.pid
  taker = ("import sys\nfrom absl import logging\n"
           "from hilam_jax.training import workdir_lock as w\n"
           "logging.use_absl_handler()\nw.release_workdir(w.lock_workdir(sys.argv[1]))\n")
  result = subprocess.run([sys.executable, "-c", taker, workdir], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"taking over the stale lock of pid {dead.pid}" in result.stderr, result.stderr[-3000:]
  assert _holder(workdir) is None


def test_lock_in_process_is_reentrant_and_nested_workdirs_do_not_conflict(tmp_path):
  outer, inner = str(tmp_path / "main"), str(tmp_path / "main" / "policies" / "p0")
  path = workdir_lock.lock_workdir(outer)
  assert workdir_lock.lock_workdir(outer) == path  # the same process: counted
  nested = workdir_lock.lock_workdir(inner)
  # Another process is refused on the outer workdir while this one holds it.
  probe = ("import sys; from hilam_jax.training import workdir_lock as w\n"
           "try:\n  w.lock_workdir(sys.argv[1])\nexcept w.WorkdirLockedError as e:\n"
           "  print(e); sys.exit(3)\n")
  env = dict(os.environ, PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, "-c", probe, outer], capture_output=True, text=True,
                          env=env, cwd=REPO)
  assert result.returncode == 3 and f"pid {os.getpid()}" in result.stdout, result
  for p in (nested, path, path):
    workdir_lock.release_workdir(p)
  result = subprocess.run([sys.executable, "-c", probe, outer], capture_output=True, text=True,
                          env=env, cwd=REPO)
  assert result.returncode == 0, result


def test_sigterm_exit_143_releases_the_lock(tmp_path):
  """A launch script stopped by SIGTERM (`preemption.exit_on_preemption`, exit 143) empties the
  lock file on its way out, and the next run takes the lock without a stale-lock warning."""
  workdir = str(tmp_path / "run")
  script = ("import sys, time\n"
            "from hilam_jax import preemption\n"
            "from hilam_jax.training import workdir_lock as w\n"
            "@w.releases_workdir_locks\n"
            "def main(argv):\n"
            "  w.lock_workdir(sys.argv[1]); print('locked', flush=True); time.sleep(120)\n"
            "preemption.exit_on_preemption(main)([])\n")
  env = dict(os.environ, PYTHONPATH=REPO)
  child = subprocess.Popen([sys.executable, "-c", script, workdir], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
  try:
    assert child.stdout.readline().strip() == "locked", child.stderr.read()
    assert _holder(workdir) == child.pid
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=60)
  finally:
    if child.poll() is None:
      child.kill()
  assert child.returncode == 143, child.stderr.read()
  assert _holder(workdir) is None
  path = workdir_lock.lock_workdir(workdir)
  workdir_lock.release_workdir(path)
