"""Where a multi-process job's settings come from (`hilam_jax.training.distributed`); the
2-process training itself is tests/test_training.py::test_two_processes_match_one_process_of_eight_devices."""
import pytest

from hilam_jax.training import distributed


def test_explicit_settings_from_arguments_then_environment():
  env = {distributed.ENV_COORDINATOR: "10.0.0.1:99", distributed.ENV_NUM_PROCESSES: "4",
         distributed.ENV_PROCESS_ID: "3"}
  assert distributed.explicit_settings(environ=env) == ("10.0.0.1:99", 4, 3)
  # Arguments win over the environment.
  assert distributed.explicit_settings("h:1", 2, 0, environ=env) == ("h:1", 2, 0)
  assert distributed.explicit_settings(environ={}) is None


@pytest.mark.parametrize("args, match", [
    (("h:1", 2, None), "need all three"),
    ((None, 2, None), "need all three"),
    (("h:1", 2, 2), r"process_id 2 must be in \[0, num_processes=2\)"),
    (("h:1", 0, 0), "must be in"),
])
def test_incomplete_or_inconsistent_settings_are_refused(args, match):
  with pytest.raises(ValueError, match=match):
    distributed.explicit_settings(*args, environ={})


def test_partial_environment_is_refused():
  with pytest.raises(ValueError, match="environment"):
    distributed.explicit_settings(environ={distributed.ENV_COORDINATOR: "h:1"})


def test_cluster_detection():
  assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}) == "tpu"
  assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "t0"}) is None  # one host
  assert distributed.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}) == "slurm"
  assert distributed.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
  assert distributed.detect_cluster({}) is None


def test_launch_local_starts_one_job_of_n_processes(tmp_path):
  """experiments/launch_local.py: 2 processes x 2 CPU devices train the tiny worker together."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, "-m", "experiments.launch_local", "--num_processes=2",
       "--devices_per_process=2", "--", "tests.training_worker",
       f"--out={tmp_path}/p{{process_id}}.npz", "--num_steps=3"],
      cwd=repo, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  runs = [np.load(tmp_path / f"p{i}.npz") for i in range(2)]
  for i, run in enumerate(runs):
    info = json.loads(str(run["info"]))
    assert (info["process_index"], info["process_count"], info["device_count"]) == (i, 2, 4)
  np.testing.assert_array_equal(runs[0]["losses"], runs[1]["losses"])  # one job, one loss


def test_launch_local_stops_everything_when_a_process_fails(tmp_path):
  """Process 1 of 2 crashes once the job is up (--fail_process=1); process 0, asked for 100,000
  steps of 0.05 s, would wait for it in its next collective. The launcher names process 1, exits
  with its code, and stops process 0 within the grace period (SIGTERM, then SIGKILL)."""
  import os  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for i in range(2):
    (tmp_path / f"p{i}").mkdir()
  with open(tmp_path / "out.txt", "w") as out:
    launcher = subprocess.Popen(
        [sys.executable, "-m", "experiments.launch_local", "--num_processes=2",
         "--stop_grace_seconds=2", "--", "tests.training_worker",
         f"--train_dir={tmp_path}/p{{process_id}}", "--num_steps=100000", "--step_seconds=0.05",
         "--fail_process=1"],
        cwd=repo, stdout=out, stderr=subprocess.PIPE, text=True, start_new_session=True)
  # Whatever happens, nothing of the job outlives the test (the workers share its session).
  guard = threading.Timer(300, lambda: os.killpg(launcher.pid, signal.SIGKILL))
  guard.start()
  try:
    errors, failure, failed_at = [], None, None
    for line in launcher.stderr:
      errors.append(line)
      if "exited with" in line:
        failure, failed_at = line, time.monotonic()
        break
    assert failed_at is not None, "".join(errors) + (tmp_path / "out.txt").read_text()[-3000:]
    code = launcher.wait(timeout=60)
    stopped_after = time.monotonic() - failed_at
    errors += launcher.stderr.readlines()
  finally:
    guard.cancel()
    if launcher.poll() is None:
      os.killpg(launcher.pid, signal.SIGKILL)
      launcher.wait()
  report = "".join(errors)
  assert failure.startswith("process 1 exited with 1: stopping the others"), report
  assert "process 0 exited with" not in report, report
  assert code == 1, report
  # Grace period 2 s (then SIGKILL) and 0.5 s polls; without the stop, process 0 would sit in
  # its collective until gloo's 30 s timeout.
  assert stopped_after < 12, (stopped_after, report)
