"""Joining a multi-process (multi-host) JAX job: TPU pods, SLURM clusters, or explicit settings.

Every launch script calls `initialize` before it touches a device (experiments/launch.py turns
its flags into the arguments). Where the settings come from, first match wins:

  1. explicit: coordinator address, process count and process id, from the arguments or the
     environment (HILAM_COORDINATOR_ADDRESS, HILAM_NUM_PROCESSES, HILAM_PROCESS_ID); all three
     or none;
  2. auto-detected: a multi-host Cloud TPU VM (TPU_WORKER_HOSTNAMES lists more than one host) or
     a SLURM job step with more than one task (SLURM_NTASKS > 1): `jax.distributed.initialize()`
     with no arguments, which reads the cluster's own variables;
  3. otherwise a single process: nothing to do.

After it, `jax.devices()` lists every process's devices, `training.make_mesh()` spans them all,
each data pipeline reads the disjoint shard `jax.process_index()` of `jax.process_count()`, and
orbax checkpoints are written and restored by all processes together. On CPU (tests; a cluster
of CPU hosts) the cross-process collectives run over gloo.
"""
from __future__ import annotations

import os
import socket
import sys
from typing import Any, Mapping, Optional

import jax
from absl import logging

ENV_COORDINATOR = "HILAM_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "HILAM_NUM_PROCESSES"
ENV_PROCESS_ID = "HILAM_PROCESS_ID"

_initialized: Optional[dict[str, Any]] = None


def free_local_port() -> int:
  """A TCP port on 127.0.0.1 that is free now (for a local coordinator: tests, launch_local)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def detect_cluster(environ: Mapping[str, str] | None = None) -> Optional[str]:
  """"tpu" / "slurm" when the environment is a multi-process cluster JAX can read, else None."""
  environ = os.environ if environ is None else environ
  hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1:
    return "tpu"
  try:
    if "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
      return "slurm"
  except ValueError:
    pass
  return None


def explicit_settings(coordinator_address: Optional[str] = None,
                      num_processes: Optional[int] = None, process_id: Optional[int] = None,
                      environ: Mapping[str, str] | None = None
                      ) -> Optional[tuple[str, int, int]]:
  """(address, count, id) from the arguments, else the HILAM_* environment; None if neither.

  Raises:
    ValueError: some but not all three given, a count < 1, or an id outside [0, count).
  """
  environ = os.environ if environ is None else environ
  given = (coordinator_address, num_processes, process_id)
  if all(v is None for v in given):
    given = tuple(environ.get(k) for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID))
    source = f"environment ({ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})"
  else:
    source = "arguments (coordinator_address, num_processes, process_id)"
  if all(v is None or v == "" for v in given):
    return None
  if any(v is None or v == "" for v in given):
    raise ValueError(f"multi-process settings from the {source} need all three, got "
                     f"coordinator={given[0]!r}, num_processes={given[1]!r}, "
                     f"process_id={given[2]!r}")
  address, count, index = str(given[0]), int(given[1]), int(given[2])
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"process_id {index} must be in [0, num_processes={count})")
  return address, count, index


def _exit_at_once_on_uncaught_exception() -> None:
  """An uncaught exception ends this process right after its traceback is printed.

  Otherwise JAX's exit handler (`jax.distributed.shutdown`) waits at a barrier for every other
  process, for up to 300 s, while they wait for this one in their next collective: nothing
  exits, and whichever process times out first looks like the one that failed. Interrupts
  (Ctrl-C, `preemption.Preempted`) keep the normal exit, where the barrier is what lets every
  process stop together.
  """
  previous = sys.excepthook

  def hook(kind, value, traceback):
    previous(kind, value, traceback)
    if not issubclass(kind, KeyboardInterrupt):
      logging.flush()
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(1)  # pylint: disable=protected-access

  sys.excepthook = hook


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> dict[str, Any]:
  """Joins the multi-process job described by the arguments / environment (module docstring).

  Idempotent: a second call returns the first call's result. Must run before any JAX device is
  used (JAX initialises its backends once).

  Returns:
    {"mode": "explicit" | "tpu" | "slurm" | "single", "process_index", "process_count",
    "local_device_count", "device_count"}.
  """
  global _initialized
  if _initialized is not None:
    return _initialized
  settings = explicit_settings(coordinator_address, num_processes, process_id)
  mode = "explicit" if settings else (detect_cluster() or "single")
  if mode != "single":
    # Only read by the CPU client: cross-process collectives of CPU devices go over gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if settings:
      address, count, index = settings
      jax.distributed.initialize(coordinator_address=address, num_processes=count,
                                 process_id=index)
    else:
      jax.distributed.initialize()
    _exit_at_once_on_uncaught_exception()
  _initialized = {"mode": mode, "process_index": jax.process_index(),
                  "process_count": jax.process_count(),
                  "local_device_count": jax.local_device_count(),
                  "device_count": jax.device_count()}
  if mode != "single":
    logging.info("multi-process JAX (%s): process %d of %d, %d local / %d global devices", mode,
                 _initialized["process_index"], _initialized["process_count"],
                 _initialized["local_device_count"], _initialized["device_count"])
  return _initialized
