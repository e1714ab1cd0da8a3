"""hilam_jax.jobs: dependency order, parallel workers, failures, worker environment."""
import os
import time

import pytest

from hilam_jax import jobs


def _record(path: str, name: str, wait: float = 0.0) -> dict:
  """Appends `name` with start / end times to a log file (a top-level, picklable job function)."""
  start = time.time()
  time.sleep(wait)
  with open(path, "a") as f:
    f.write(f"{name} {start} {time.time()} {os.getpid()}\n")
  return {"name": name, "pid": os.getpid()}


def _read(path: str) -> dict[str, tuple[float, float, int]]:
  out = {}
  for line in open(path):
    name, start, end, pid = line.split()
    out[name] = (float(start), float(end), int(pid))
  return out


def _fail() -> None:
  raise ValueError("boom")


def _env(key: str) -> str | None:
  return os.environ.get(key)


def _graph(log: str, wait: float = 0.0):
  return [jobs.Job("c", _record, {"path": log, "name": "c"}, deps=("a", "b")),
          jobs.Job("a", _record, {"path": log, "name": "a", "wait": wait}),
          jobs.Job("b", _record, {"path": log, "name": "b", "wait": wait}),
          jobs.Job("d", _record, {"path": log, "name": "d"}, deps=("c",))]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dependencies_run_first(tmp_path, num_workers):
  log = str(tmp_path / "log")
  results = jobs.run_jobs(_graph(log), num_workers=num_workers)
  assert sorted(results) == ["a", "b", "c", "d"]
  assert results["c"]["name"] == "c"
  times = _read(log)
  for job, deps in (("c", "ab"), ("d", "c")):
    for dep in deps:
      assert times[dep][1] <= times[job][0], (dep, job)
  pids = {t[2] for t in times.values()}
  if num_workers == 0:
    assert pids == {os.getpid()}
  else:
    assert os.getpid() not in pids


def test_two_workers_run_side_by_side(tmp_path):
  log = str(tmp_path / "log")
  jobs.run_jobs(_graph(log, wait=1.5), num_workers=2)
  times = _read(log)
  a, b = times["a"], times["b"]
  assert a[2] != b[2]
  assert a[0] < b[1] and b[0] < a[1], "independent jobs a and b did not overlap"


def test_failure_is_raised_with_its_name_and_stops_dependants(tmp_path):
  log = str(tmp_path / "log")
  graph = [jobs.Job("bad", _fail), jobs.Job("ok", _record, {"path": log, "name": "ok"}),
           jobs.Job("after", _record, {"path": log, "name": "after"}, deps=("bad",))]
  with pytest.raises(RuntimeError, match="'bad'"):
    jobs.run_jobs(graph, num_workers=1)
  assert "after" not in (_read(log) if os.path.exists(log) else {})


@pytest.mark.parametrize("graph, message", [
    ([jobs.Job("a", _fail), jobs.Job("a", _fail)], "duplicate"),
    ([jobs.Job("a", _fail, deps=("x",))], "unknown"),
    ([jobs.Job("a", _fail, deps=("b",)), jobs.Job("b", _fail, deps=("a",))], "cycle"),
])
def test_bad_graphs_are_refused_before_running(graph, message):
  with pytest.raises(ValueError, match=message):
    jobs.run_jobs(graph, num_workers=0)


def test_worker_env_is_set_in_workers(monkeypatch):
  # The parent's values differ from single_thread_env's (the test run may set some of them).
  monkeypatch.setenv("OMP_NUM_THREADS", "7")
  monkeypatch.delenv("HILAM_TF_DATA_AUTOTUNE", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  monkeypatch.setenv("HILAM_TEST_UNTOUCHED", "kept")
  keys = ("OMP_NUM_THREADS", "HILAM_TF_DATA_AUTOTUNE", "XLA_FLAGS", "HILAM_TEST_UNTOUCHED")
  graph = [jobs.Job(k, _env, {"key": k}) for k in keys]
  assert jobs.run_jobs(graph, num_workers=1) == {  # without worker_env: the parent's
      "OMP_NUM_THREADS": "7", "HILAM_TF_DATA_AUTOTUNE": None,
      "XLA_FLAGS": "--xla_cpu_enable_fast_math=false", "HILAM_TEST_UNTOUCHED": "kept"}
  assert jobs.run_jobs(graph, num_workers=1, worker_env=jobs.single_thread_env()) == {
      "OMP_NUM_THREADS": "1", "HILAM_TF_DATA_AUTOTUNE": "0",
      "XLA_FLAGS": "--xla_cpu_enable_fast_math=false --xla_cpu_multi_thread_eigen=false "
                   "intra_op_parallelism_threads=1",
      "HILAM_TEST_UNTOUCHED": "kept"}


def _sleep_and_log(path: str, name: str, seconds: float) -> None:
  with open(path, "a") as f:
    f.write(f"start {name} {os.getpid()}\n")
  time.sleep(seconds)
  with open(path, "a") as f:
    f.write(f"end {name}\n")


def _ignore_interrupts_and_sleep(path: str, name: str, seconds: float) -> None:
  import signal  # pylint: disable=g-import-not-at-top
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _sleep_and_log(path, name, seconds)


# The parent as in a terminal: SIGINT raises KeyboardInterrupt even if this test process was
# started with it ignored (pytest-xdist workers are), which its children would inherit.
_INTERRUPT_SCRIPT = """
import signal
import sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from hilam_jax import jobs
from tests import test_jobs
log, fn, grace = sys.argv[1], getattr(test_jobs, sys.argv[2]), float(sys.argv[3])
graph = [jobs.Job(f"j{i}", fn, {"path": log, "name": f"j{i}", "seconds": 300}) for i in range(5)]
jobs.run_jobs(graph, num_workers=2, interrupt_grace_s=grace)
"""


def _start_and_interrupt(log, fn, grace, signum=None):
  """Runs the 5-job graph in a subprocess, waits for both workers' jobs to start, sends
  `signum` (default SIGINT) to the parent alone; returns the seconds it took to exit and its
  stderr."""
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.Popen([sys.executable, "-c", _INTERRUPT_SCRIPT, log, fn, str(grace)],
                          cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 180  # two spawned workers importing under a loaded machine
    while time.time() < deadline and (not os.path.exists(log) or
                                      open(log).read().count("start") < 2):
      time.sleep(0.2)
    assert open(log).read().count("start") == 2
    start = time.time()
    proc.send_signal(signal.SIGINT if signum is None else signum)
    _, stderr = proc.communicate(timeout=grace + 60)
    assert proc.returncode != 0
    return time.time() - start, stderr.decode()
  finally:
    if proc.poll() is None:  # a failed test leaves no scheduler (and its workers) behind
      proc.kill()


def test_interrupting_the_parent_stops_running_jobs_and_starts_no_more(tmp_path):
  """SIGINT to the scheduling process alone (not its process group): the running jobs get it
  too and the queue does not go on; the parent exits before the grace period after which it
  would terminate them (the jobs stopped on the signal), not after the 300 s jobs."""
  log = str(tmp_path / "log")
  seconds, stderr = _start_and_interrupt(log, "_sleep_and_log", jobs.INTERRUPT_GRACE_S)
  assert seconds < jobs.INTERRUPT_GRACE_S
  assert "did not stop" not in stderr  # every worker ended on the signal: none is terminated
  time.sleep(1)
  text = open(log).read()
  assert text.count("start") == 2 and "end" not in text


def test_jobs_that_ignore_the_interrupt_are_terminated_after_the_grace_period(tmp_path):
  log = str(tmp_path / "log")
  seconds, stderr = _start_and_interrupt(log, "_ignore_interrupts_and_sleep", 3.0)
  assert 3.0 <= seconds < 60
  assert stderr.count("did not stop in 3 s: terminating it") == 2
  time.sleep(1)
  text = open(log).read()
  assert text.count("start") == 2 and "end" not in text


def test_sigterm_to_the_parent_stops_the_run_like_an_interrupt(tmp_path):
  """Preemption: SIGTERM to the scheduling process alone is passed on to the running jobs,
  which stop (no job ends or starts), and every worker process exits with the parent."""
  import signal  # pylint: disable=g-import-not-at-top
  log = str(tmp_path / "log")

  def worker_pids():
    lines = open(log).read().splitlines() if os.path.exists(log) else []
    return [int(line.split()[2]) for line in lines if line.startswith("start")]

  try:
    seconds, stderr = _start_and_interrupt(log, "_sleep_and_log", jobs.INTERRUPT_GRACE_S,
                                           signal.SIGTERM)
    assert seconds < 30
    assert "did not stop" not in stderr
    assert len(worker_pids()) == 2

    def alive(pid):
      try:
        os.kill(pid, 0)
      except ProcessLookupError:
        return False
      return True

    deadline = time.time() + 10
    while time.time() < deadline and any(alive(p) for p in worker_pids()):
      time.sleep(0.2)
    assert not [p for p in worker_pids() if alive(p)], "workers outlived their parent"
    text = open(log).read()
    assert text.count("start") == 2 and "end" not in text
  finally:
    for pid in worker_pids():  # the workers this test started, if they outlived the parent
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
