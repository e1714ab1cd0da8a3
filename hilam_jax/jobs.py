"""Runs a graph of independent jobs (policy runs, evaluations) in parallel worker processes.

The main job trains dozens of small policies; one of them does not keep both cores of a small
machine busy, two processes side by side do. `run_jobs` takes `Job`s (a name, a picklable
top-level function with its keyword arguments, and the names of the jobs it needs), runs every
job whose dependencies are done in a pool of `num_workers` spawned processes and returns
{name: result}.

  jobs = [Job("pretrain", train, {"cfg": a}), Job("finetune", train, {"cfg": b}, deps=("pretrain",))]
  results = run_jobs(jobs, num_workers=2)

- Jobs cache their own results on disk (the experiment's runs are resumable), so a rerun after an
  interruption or a failure repeats only the unfinished ones. The first failure stops the
  scheduling of new jobs and is raised, with the job's name, after the running ones end.
- Workers are "spawn"ed (no forked JAX / TensorFlow state) and `worker_env` is set in each before
  anything is imported (e.g. thread counts: `single_thread_env()`).
- `num_workers=0` runs the jobs in this process, in dependency order (tests, debugging).
- Progress: one log line per finished job with the count done and an ETA.
- Interrupts: Ctrl-C, SIGINT or SIGTERM (preemption: `hilam_jax.preemption`) to the scheduling
  process, or a job stopped by one, stop the run: the running jobs get the signal (a training
  job saves a checkpoint) and a bounded grace period, no new job starts, and the interrupt
  (`KeyboardInterrupt`, or its subclass `Preempted` for SIGTERM) is raised.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging

from hilam_jax import preemption

INTERRUPT_GRACE_S = 60.0  # a running job's time to save and stop after an interrupt


@dataclasses.dataclass(frozen=True)
class Job:
  """One unit of work: `fn(**kwargs)` after every job named in `deps` has finished."""
  name: str
  fn: Callable[..., Any]
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  deps: tuple[str, ...] = ()


def single_thread_env() -> dict[str, str]:
  """Environment for a worker that should use one core: XLA's CPU client on one thread, the
  BLAS / OpenMP pools that NumPy, TensorFlow and PyTorch may start, and tf.data without
  autotuning (`data_pipeline.dataset.pipeline_options`: nothing to tune on one core, and it
  stalled iterator teardown by up to 60 s)."""
  return {
      "XLA_FLAGS": " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""),
                                          "--xla_cpu_multi_thread_eigen=false",
                                          "intra_op_parallelism_threads=1"])),
      "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
      "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
      "HILAM_TF_DATA_AUTOTUNE": "0",
  }


def _init_worker(env: Mapping[str, str]) -> None:
  os.environ.update(env)
  # A process started with SIGINT ignored (a background job of a non-interactive shell, a
  # pytest-xdist worker) passes that on to its children, and Python then raises no
  # KeyboardInterrupt: the interrupt this module forwards to its workers must reach their jobs.
  signal.signal(signal.SIGINT, signal.default_int_handler)
  preemption.raise_on_sigterm()  # a job outside a train loop stops as on an interrupt


def _check_graph(jobs: Sequence[Job]) -> dict[str, Job]:
  by_name: dict[str, Job] = {}
  for job in jobs:
    if job.name in by_name:
      raise ValueError(f"duplicate job name {job.name!r}")
    by_name[job.name] = job
  for job in jobs:
    missing = [d for d in job.deps if d not in by_name]
    if missing:
      raise ValueError(f"job {job.name!r} depends on unknown jobs {missing}")
  # Cycle check (depth-first).
  state: dict[str, int] = {}

  def visit(name: str, path: tuple[str, ...]) -> None:
    if state.get(name) == 2:
      return
    if state.get(name) == 1:
      raise ValueError(f"dependency cycle: {' -> '.join(path + (name,))}")
    state[name] = 1
    for dep in by_name[name].deps:
      visit(dep, path + (name,))
    state[name] = 2

  for name in by_name:
    visit(name, ())
  return by_name


class _Progress:

  def __init__(self, total: int, what: str):
    self.total, self.what, self.done, self.start = total, what, 0, time.perf_counter()

  def finished(self, name: str, seconds: float) -> None:
    self.done += 1
    elapsed = time.perf_counter() - self.start
    eta = elapsed / self.done * (self.total - self.done)
    logging.info("[%s] %d/%d done: %s (%.0f s); elapsed %.0f s, ETA %.0f s", self.what,
                 self.done, self.total, name, seconds, elapsed, eta)


def _timed(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> tuple[Any, float]:
  start = time.perf_counter()
  return fn(**kwargs), time.perf_counter() - start


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor, what: str, grace_s: float,
                  signum: int = signal.SIGINT) -> None:
  """Sends `signum` to the pool's workers, gives their jobs `grace_s` to save and stop, then
  terminates the ones still alive.

  Ctrl-C in a terminal reaches every worker (one process group); a signal sent to the parent
  alone does not: it is passed on, so that running jobs stop (and save) now. SIGTERM is passed
  on as SIGTERM: a train loop then saves at its next step boundary. The pool's own shutdown is
  not waited for: it can block on a worker the signal caught outside a job.
  """
  processes = list((getattr(pool, "_processes", None) or {}).values())
  for process in processes:
    try:
      os.kill(process.pid, signum)
    except (ProcessLookupError, OSError):
      pass
  pool.shutdown(wait=False, cancel_futures=True)
  deadline = time.monotonic() + grace_s
  for process in processes:
    process.join(max(0.0, deadline - time.monotonic()))
  for process in processes:
    # Not `is_alive()`: the pool's own thread may have reaped an exited worker first, and
    # is_alive() then reports it alive (a false "did not stop" after 2 s, measured). The
    # sentinel is ready once the process has ended, whoever reaped it.
    if not multiprocessing.connection.wait([process.sentinel], timeout=0):
      logging.warning("[%s] worker %d did not stop in %.0f s: terminating it", what, process.pid,
                      grace_s)
      process.terminate()
      process.join(5)


def run_jobs(jobs: Sequence[Job], *, num_workers: int, worker_env: Mapping[str, str] | None = None,
             what: str = "jobs", interrupt_grace_s: float = INTERRUPT_GRACE_S) -> dict[str, Any]:
  """Runs `jobs` respecting their deps; returns {name: fn's return value}.

  Args:
    jobs: the graph; names unique, deps among the names, no cycles (checked before anything runs).
    num_workers: worker processes (>= 1), or 0 to run in this process.
    worker_env: environment variables set in each worker before the job's imports.
    what: label of the progress lines.
    interrupt_grace_s: on an interrupt, the running jobs' time to save and stop before their
      workers are terminated.

  Raises:
    KeyboardInterrupt: interrupted (`preemption.Preempted` for SIGTERM), after the running
      jobs stopped or the grace period ended. SIGTERM raises `Preempted` here while this runs.
    RuntimeError: the first job that failed, after the running ones ended.
  """
  with preemption.raising_on_sigterm():
    return _run_jobs(jobs, num_workers=num_workers, worker_env=worker_env, what=what,
                     interrupt_grace_s=interrupt_grace_s)


def _run_jobs(jobs: Sequence[Job], *, num_workers: int, worker_env: Mapping[str, str] | None,
              what: str, interrupt_grace_s: float) -> dict[str, Any]:
  if num_workers < 0:
    raise ValueError(f"num_workers must be >= 0, got {num_workers}")
  by_name = _check_graph(jobs)
  results: dict[str, Any] = {}
  progress = _Progress(len(jobs), what)
  pending = dict(by_name)

  def ready() -> list[Job]:
    return [j for j in pending.values() if all(d in results for d in j.deps)]

  if num_workers == 0:
    while pending:
      for job in ready():
        results[job.name], seconds = _timed(job.fn, job.kwargs)
        del pending[job.name]
        progress.finished(job.name, seconds)
    return results

  context = multiprocessing.get_context("spawn")
  error: tuple[str, BaseException] | None = None
  # Not a `with` block: its exit waits for the pool's shutdown, which an interrupt must bound.
  pool = concurrent.futures.ProcessPoolExecutor(
      max_workers=num_workers, mp_context=context, initializer=_init_worker,
      initargs=(dict(worker_env or {}),))
  running: dict[concurrent.futures.Future, str] = {}
  try:
    while pending or running:
      if error is None:
        # At most one job per worker in flight: a queued job could not be taken back on an
        # interrupt (the pool hands its queue to the workers ahead of time).
        for job in ready():
          if len(running) >= num_workers:
            break
          if job.name not in running.values():
            running[pool.submit(_timed, job.fn, job.kwargs)] = job.name
      if not running:
        break
      done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        name = running.pop(future)
        try:
          results[name], seconds = future.result()
        except KeyboardInterrupt:
          raise  # a job stopped by an interrupt (e.g. its worker got SIGTERM): stop the run
        except BaseException as e:  # pylint: disable=broad-except
          if error is None:
            error = (name, e)
            logging.error("[%s] job %s failed: %r; waiting for %d running job(s)", what, name,
                          e, len(running))
          pending.pop(name, None)
          continue
        del pending[name]
        progress.finished(name, seconds)
  except KeyboardInterrupt as e:
    preempted = isinstance(e, preemption.Preempted)
    logging.warning("[%s] %s: stopping %d running job(s)", what,
                    "preempted (SIGTERM)" if preempted else "interrupted", len(running))
    _stop_workers(pool, what, interrupt_grace_s, signal.SIGTERM if preempted else signal.SIGINT)
    raise
  except BaseException:
    pool.shutdown(wait=False, cancel_futures=True)
    raise
  pool.shutdown(wait=True)
  if error is not None:
    raise RuntimeError(f"job {error[0]!r} failed: {error[1]!r}") from error[1]
  return results
