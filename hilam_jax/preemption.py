"""Preemption: SIGTERM stops a run like an interrupt, after saving, and a rerun resumes it.

A scheduler that preempts a job sends SIGTERM and, after a grace period (often 30 s), SIGKILL.

- Inside `training.train_loop`, SIGTERM only sets a flag (`sigterm_sets_flag`): the loop saves
  a checkpoint of the current step at the next step boundary, waits for it and raises
  `Preempted`.
- Elsewhere, `raise_on_sigterm()` makes SIGTERM raise `Preempted` where the main thread is, as
  Ctrl-C raises KeyboardInterrupt (the stages write their outputs atomically, so a rerun redoes
  only what was running). The job runner's workers and the launch scripts install it.
- `Preempted` is a KeyboardInterrupt, so every handler of an interrupt treats it as one:
  `hilam_jax.jobs.run_jobs` stops its workers, stages are not marked done.
- `exit_on_preemption(main)` wraps a launch script's absl `main`: SIGTERM raises `Preempted`
  and ends the process with `EXIT_CODE` (143 = 128 + SIGTERM, what a shell reports for a
  process SIGTERM ended) and one log line instead of a traceback.
"""
from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from typing import Any, Callable, Iterator

from absl import logging

EXIT_CODE = 128 + signal.SIGTERM


class Preempted(KeyboardInterrupt):
  """The process got SIGTERM and stopped (inside `train_loop`: after saving a checkpoint)."""


def _raise_preempted(signum: int, frame: Any) -> None:
  del frame
  raise Preempted(f"received {signal.Signals(signum).name}")


def _in_main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


def raise_on_sigterm() -> None:
  """From now on SIGTERM raises `Preempted` in the main thread (no-op in other threads)."""
  if _in_main_thread():
    signal.signal(signal.SIGTERM, _raise_preempted)


@contextlib.contextmanager
def raising_on_sigterm() -> Iterator[None]:
  """`raise_on_sigterm` for the duration of the block; the previous handler is restored."""
  if not _in_main_thread():
    yield
    return
  previous = signal.signal(signal.SIGTERM, _raise_preempted)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


class StopRequest:
  """Whether SIGTERM arrived while `sigterm_sets_flag` was active (read at step boundaries)."""

  def __init__(self):
    self.requested = False
    self.handled = False  # the holder stopped on it (raised `Preempted`)

  def _set(self, signum: int, frame: Any) -> None:
    del signum, frame
    self.requested = True  # nothing else here: a signal handler must not block or log


@contextlib.contextmanager
def sigterm_sets_flag() -> Iterator[StopRequest]:
  """Within the block, SIGTERM sets the yielded `StopRequest` instead of acting.

  The previous SIGTERM handler is restored on exit. A request that arrived but was not handled
  when the block ends normally (right after its holder's last check) is delivered to the
  restored handler then, so it is never lost; a block ending in an exception just propagates
  it. Signals reach only the main thread: elsewhere the request never gets set.
  """
  request = StopRequest()
  if not _in_main_thread():
    logging.warning("Not in the main thread: SIGTERM will not stop training at a step boundary.")
    yield request
    return
  previous = signal.signal(signal.SIGTERM, request._set)  # pylint: disable=protected-access
  try:
    yield request
  finally:
    signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
  if request.requested and not request.handled:
    signal.raise_signal(signal.SIGTERM)


def exit_on_preemption(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """A launch script's `main(argv)` that stops on SIGTERM and exits with `EXIT_CODE`.

  Example:
    if __name__ == "__main__":
      app.run(preemption.exit_on_preemption(main))
  """

  @functools.wraps(main)
  def wrapped(argv: list[str]) -> Any:
    raise_on_sigterm()
    try:
      return main(argv)
    except Preempted as e:
      logging.warning("Preempted (%s): stopped; rerun the same command to resume.", e)
      sys.exit(EXIT_CODE)

  return wrapped
