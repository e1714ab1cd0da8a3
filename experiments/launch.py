"""Flags every training / labeling launch script shares: joining a multi-process JAX job.

  # process i of N (e.g. two hosts, or two processes on one machine for a test):
  python -m experiments.train_lam ... --coordinator_address=10.0.0.1:1234 \
      --num_processes=2 --process_id=<i>

Unset, the settings come from HILAM_COORDINATOR_ADDRESS / HILAM_NUM_PROCESSES /
HILAM_PROCESS_ID, then from a detected multi-host TPU VM or SLURM job, else one process
(`hilam_jax.training.distributed`).
"""
from absl import flags

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 of a multi-process job (all processes "
    "give the same); with --num_processes and --process_id.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, N).")


def init_distributed() -> dict:
  """`distributed.initialize` from the flags; call first in `main`, before any device use."""
  from hilam_jax.training import distributed  # pylint: disable=g-import-not-at-top
  return distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
