"""Starts N local processes of a launch script as one multi-process JAX job (to try it here).

  # a 2-process LAM run, 4 forced CPU devices per process (8 in the mesh):
  python -m experiments.launch_local --num_processes=2 --devices_per_process=4 -- \
      experiments.train_lam --config=experiments/configs/train_lam.py:tiny \
      --config.data.train='({"dataset_dir": "/tmp/d/babyai_bosslevel/1.0.0"},)' --workdir=/tmp/lam2

Every process gets `--coordinator_address=127.0.0.1:<free port> --num_processes=N
--process_id=i` (the flags of `experiments/launch.py`); `{process_id}` in the script's
arguments is replaced by i. Output lines are prefixed with "[i]". If one process fails, the
others are stopped: SIGTERM, then SIGKILL for any still running --stop_grace_seconds later (a
process waiting in a collective for the failed one cannot act on SIGTERM); the exit code is the
first failure's (0 when all succeed) and stderr names that process.
"""
import os
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

from hilam_jax.training import distributed

_NUM = flags.DEFINE_integer("num_processes", 2, "Processes to start.")
_DEVICES = flags.DEFINE_integer(
    "devices_per_process", 0, "Forced CPU devices per process (XLA_FLAGS "
    "--xla_force_host_platform_device_count; JAX_PLATFORMS=cpu); 0: leave the devices alone.")
_PORT = flags.DEFINE_integer("port", 0, "Coordinator port on 127.0.0.1 (0: a free one).")
_GRACE = flags.DEFINE_float(
    "stop_grace_seconds", 10.0, "After a process fails, the others get SIGTERM, and SIGKILL if "
    "still running this many seconds later.")


def _pump(index: int, stream) -> None:
  for line in stream:
    sys.stdout.write(f"[{index}] {line}")
    sys.stdout.flush()


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give the launch script's module and arguments after --, e.g. "
                         "-- experiments.train_lam --config=...")
  if _NUM.value < 1:
    raise app.UsageError(f"--num_processes must be >= 1, got {_NUM.value}")
  module, args = argv[1], argv[2:]
  address = f"127.0.0.1:{_PORT.value or distributed.free_local_port()}"
  env = dict(os.environ)
  if _DEVICES.value:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                        f"{_DEVICES.value}").strip()
    env["JAX_PLATFORMS"] = "cpu"
  processes, pumps = [], []
  for i in range(_NUM.value):
    command = [sys.executable, "-m", module, *(a.replace("{process_id}", str(i)) for a in args),
               f"--coordinator_address={address}", f"--num_processes={_NUM.value}",
               f"--process_id={i}"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    pump = threading.Thread(target=_pump, args=(i, process.stdout), daemon=True)
    pump.start()
    processes.append(process)
    pumps.append(pump)
  code = 0
  kill_at = None  # when the processes still running after a failure get SIGKILL
  try:
    remaining = list(processes)
    while remaining:
      if kill_at is not None and time.monotonic() >= kill_at:
        for other in remaining:
          print(f"process {processes.index(other)} still running {_GRACE.value:g} s after "
                "SIGTERM: killing it", file=sys.stderr)
          other.kill()
        kill_at = float("inf")
      for process in list(remaining):
        try:
          rc = process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
          continue
        remaining.remove(process)
        if rc and not code:
          code = rc
          print(f"process {processes.index(process)} exited with {rc}: stopping the others",
                file=sys.stderr)
          for other in remaining:
            other.terminate()
          kill_at = time.monotonic() + _GRACE.value
  except KeyboardInterrupt:
    for process in processes:
      process.terminate()
    raise
  for pump in pumps:
    pump.join(timeout=5)
  return code


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
