"""The policy trainer as one multi-process job (the helpers and the other trainers:
tests/test_trainers_multiprocess.py): 2 processes x 4 CPU devices train to the losses and
parameters of 1 process x 8 devices, and SIGTERM to one process stops both and they resume."""
import os
import re
import signal
import subprocess

import numpy as np
import psutil
import pytest

from hilam_jax.training import metrics as metrics_lib
from tests import test_policy
from tests.test_trainers_multiprocess import (REPO, _check_two_processes_match_one, _command,
                                              _config_file, _run, _two_and_one, tiny_babyai)

SIGTERM_STEPS = 40  # SIGTERM at step 10 lands well before the end (2 x 4 on 2 cores: ~0.3 s/step)
_ = tiny_babyai  # the fixture, imported for the tests below


def test_policy_two_processes_match_one(tiny_babyai, tmp_path):
  config = test_policy.tiny_config(tiny_babyai, chunk=2)
  config.batch_size = 16
  _check_two_processes_match_one(_two_and_one("experiments.train_policy", config, tmp_path))


def test_sigterm_to_one_process_stops_both_at_one_step_and_they_resume(tiny_babyai, tmp_path):
  """The policy trainer as 2 processes: SIGTERM to process 1 alone stops both at the same step
  with one checkpoint (the stop flag is all-gathered at every step boundary), and the same
  command resumes both from that step to the end. (That a resumed run continues exactly is
  tests/test_exact_resume.py's, in one process.)"""
  config = test_policy.tiny_config(tiny_babyai, chunk=2)
  config.batch_size = 16
  config.num_steps = config.checkpoint_every = SIGTERM_STEPS
  config.log_every = 10
  config.data.global_order = True
  path = _config_file(str(tmp_path / "config.py"), config)
  workdir = str(tmp_path / "two_x4")
  command, env = _command("experiments.train_policy", [f"--config={path}",
                                                       f"--workdir={workdir}"], 2, 4)
  process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    lines = []
    for line in process.stdout:  # until process 1 has trained 10 steps
      lines.append(line)
      if line.startswith("[1] ") and f"step 10/{SIGTERM_STEPS}" in line:
        break
    else:
      pytest.fail("process 1 ended before step 10:\n" + "".join(lines[-50:]))
    (one,) = [c for c in psutil.Process(process.pid).children()
              if "--process_id=1" in c.cmdline()]
    one.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=300)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
  output = "".join(lines) + rest
  assert process.returncode == 143, output[-3000:]  # preempted (128 + SIGTERM)
  saved = {i: (relayed, int(s)) for i, relayed, s in re.findall(
      r"^\[(\d)\] .*SIGTERM( \(to another process\))?: saving checkpoint at step (\d+) before "
      r"stopping", output, re.M)}
  # Process 1 got the signal, process 0 learnt it at the same step boundary.
  assert sorted(saved) == ["0", "1"], output[-3000:]
  assert saved["1"][0] == "" and saved["0"][0] == " (to another process)", output[-3000:]
  step = saved["0"][1]
  assert saved["1"][1] == step and 10 <= step < SIGTERM_STEPS
  checkpoints = os.path.join(workdir, "checkpoints")
  assert sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit()) == [step]
  resumed = _run("experiments.train_policy", path, workdir, processes=2, devices=4)
  for i in (0, 1):
    assert re.search(rf"^\[{i}\] .*Training from step {step} to {SIGTERM_STEPS}", resumed,
                     re.M), resumed[-3000:]
  losses = dict(metrics_lib.read_scalars(os.path.join(workdir, "tensorboard"), "train/loss"))
  assert sorted(losses) == list(range(10, SIGTERM_STEPS + 1, 10))
  assert all(np.isfinite(v) for v in losses.values())
  assert sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())[-1] == SIGTERM_STEPS
