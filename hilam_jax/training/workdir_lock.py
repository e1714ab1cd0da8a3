"""One run per workdir: an exclusive `fcntl.flock` on `<workdir>/.workdir.lock`.

Every writer of a workdir (the three trainers, latent-action labeling, the main job) takes the
lock before it writes anything; a second run on the same workdir is refused at once with a
`WorkdirLockedError` naming the holder's pid and host and the lock file.

The kernel releases a flock when its process ends, however it ends (normal exit, exception,
SIGTERM, SIGKILL), so a dead run never blocks the next one. The lock file also holds the
holder's pid/host as JSON (for the error message); it is emptied on a clean release, so a lock
file that still names a process when the lock is free was left by a run that died: it is taken
over with a warning naming that pid. The file itself is never deleted (deleting a flocked file
lets two processes lock two different inodes).

Multi-process jobs: all processes of one job share the workdir, so only process 0 takes the
lock (as only process 0 writes TensorBoard events and JSON files). Locks are per directory:
the main job's workdir and the workdirs of the trainings it runs under it do not conflict. A
process that already holds a workdir's lock may take it again (counted).

Remote workdirs (`gs://...`) cannot be flocked: they are not locked (logged).
"""
from __future__ import annotations

import datetime
import fcntl
import functools
import json
import os
import socket
import sys
from typing import Any, Callable, TypeVar

from absl import logging

LOCK_NAME = ".workdir.lock"

_F = TypeVar("_F", bound=Callable[..., Any])
_held: dict[str, list[int]] = {}  # lock file path -> [fd, times taken]


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir's lock."""


def _read_holder(fd: int) -> dict[str, Any]:
  os.lseek(fd, 0, os.SEEK_SET)
  raw = os.read(fd, 65536)
  try:
    holder = json.loads(raw) if raw.strip() else {}
  except ValueError:
    holder = {"unparsed": raw[:200].decode("utf-8", "replace")}
  return holder if isinstance(holder, dict) else {}


def _process_index() -> int:
  if "jax" not in sys.modules:  # no jax imported: a single process
    return 0
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def lock_workdir(workdir: str | os.PathLike) -> str | None:
  """Takes the exclusive lock of `workdir` (created if needed) for this process.

  Returns the lock file's path (None when not locked: process > 0, remote workdir). Raises
  WorkdirLockedError if another live process holds it. Release with `release_workdir` (or let
  `releases_workdir_locks` do it); the kernel releases it when the process ends.
  """
  workdir = os.fspath(workdir)
  if _process_index() != 0:
    return None
  if "://" in workdir:
    logging.info("workdir %s is remote: not locked", workdir)
    return None
  path = os.path.join(os.path.realpath(workdir), LOCK_NAME)
  if path in _held:
    _held[path][1] += 1
    return path
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      raise WorkdirLockedError(
          f"workdir {workdir} is in use by another run: pid {holder.get('pid', '?')} on host "
          f"{holder.get('host', '?')} (started {holder.get('started', '?')}, lock file "
          f"{path}). Wait for it to finish, stop it, or use another workdir.") from None
    previous = _read_holder(fd)
    if previous:
      logging.warning(
          "workdir %s: taking over the stale lock of pid %s on host %s (started %s), which is "
          "no longer running (lock file %s)", workdir, previous.get("pid", "?"),
          previous.get("host", "?"), previous.get("started", "?"), path)
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"),
              "argv": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
  except BaseException:
    os.close(fd)  # releases the flock, if taken
    raise
  _held[path] = [fd, 1]
  return path


def release_workdir(path: str | None) -> None:
  """Undoes one `lock_workdir` (the returned path); the last one empties the file and unlocks."""
  if path is None or path not in _held:
    return
  _held[path][1] -= 1
  if _held[path][1] > 0:
    return
  fd = _held.pop(path)[0]
  try:
    os.ftruncate(fd, 0)  # empty: free, not left by a dead run
  finally:
    os.close(fd)


def releases_workdir_locks(fn: _F) -> _F:
  """Decorator: the workdir locks `fn` takes (via `lock_workdir`) are released when it returns
  or raises, so that one process can run several trainings one after another."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    before = {p: n for p, (_, n) in _held.items()}
    try:
      return fn(*args, **kwargs)
    finally:
      for path, (_, count) in list(_held.items()):
        for _ in range(count - before.get(path, 0)):
          release_workdir(path)
  return wrapper  # type: ignore[return-value]
