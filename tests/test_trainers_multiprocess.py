"""The real trainers as one multi-process job: 2 processes x 4 CPU devices (through
`experiments/launch_local.py`) train to the losses and parameters of 1 process x 8 devices.

With `data.global_order=True` every process reads the whole stream and keeps its rows of each
global batch, so both layouts see the same global batches; what may still differ is the order of
the cross-device sums (gloo across processes, in-process within one), hence a tolerance
(RTOL, measured: see each test). The checkpoint of the 2-process run restores in this one-device
process.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline.generators import babyai
from experiments.configs import generate_babyai
from experiments.configs import train_lam as train_lam_config
from experiments.configs import train_skill_model as skill_config
from hilam_jax.training import metrics as metrics_lib
from tests import test_exact_resume
from tests import test_policy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 4
RTOL = 1e-5
PARAMS_ATOL = 3e-4


@pytest.fixture(scope="module")
def tiny_babyai(tmp_path_factory):
  config = generate_babyai.get_config("tiny")
  config.num_train_episodes, config.num_val_episodes = 8, 2
  config.episodes_per_shard = 3  # 3 train shards: more than one per process
  return babyai.generate(config, str(tmp_path_factory.mktemp("babyai")))["dataset_dir"]


def _config_file(path: str, config) -> str:
  """A config file for `--config=`: `get_config()` returns `config` (as JSON)."""
  with open(path, "w", encoding="utf-8") as f:
    f.write("import json\nimport ml_collections\n\n\ndef get_config():\n"
            f"  return ml_collections.ConfigDict(json.loads({json.dumps(config.to_json())}))\n")
  return path


def _run(script: str, config_path: str, workdir: str, processes: int, devices: int) -> None:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  args = [f"--config={config_path}", f"--workdir={workdir}"]
  if processes == 1:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}").strip()
    command = [sys.executable, "-m", script, *args]
  else:
    command = [sys.executable, "-m", "experiments.launch_local",
               f"--num_processes={processes}", f"--devices_per_process={devices}", "--",
               script, *args]
  # Its own process group: on a timeout the launcher's children are killed too.
  process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    stdout, stderr = process.communicate(timeout=900)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    stdout, stderr = process.communicate()
    pytest.fail(f"{script} did not finish in 900 s:\n{stdout[-2000:]}{stderr[-2000:]}")
  assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]


def _check_two_processes_match_one(script, config, tmp_path):
  config.num_steps = NUM_STEPS
  config.log_every = 1
  config.checkpoint_every = NUM_STEPS
  config.data.global_order = True
  path = _config_file(str(tmp_path / "config.py"), config)
  one, two = str(tmp_path / "one_x8"), str(tmp_path / "two_x4")
  _run(script, path, one, processes=1, devices=8)
  _run(script, path, two, processes=2, devices=4)
  losses = {}
  for name, workdir in (("one", one), ("two", two)):
    losses[name] = dict(metrics_lib.read_scalars(os.path.join(workdir, "tensorboard"),
                                                 "train/loss"))
    assert sorted(losses[name]) == list(range(1, NUM_STEPS + 1)), name
  for step, value in losses["one"].items():
    np.testing.assert_allclose(losses["two"][step], value, rtol=RTOL, err_msg=f"step {step}")
  # The 2-process checkpoint restores here (one device) and holds the 1-process parameters.
  params_one = test_exact_resume._final_params(one)  # pylint: disable=protected-access
  params_two = test_exact_resume._final_params(two)  # pylint: disable=protected-access
  # Parameters near 0 (biases starting at 0) move by ~lr per Adam step whatever the size of
  # their gradient, so a last-bit difference of a near-zero gradient can flip a step: measured
  # up to 2.6e-5 on the LAM (4 steps); PARAMS_ATOL is an order above.
  worst = max(float(np.max(np.abs(a - b))) for a, b in zip(params_one, params_two, strict=True))
  print(f"largest parameter difference {worst:.3g}; largest loss difference "
        f"{max(abs(losses['two'][s] - v) / abs(v) for s, v in losses['one'].items()):.3g} (rel)")
  for a, b in zip(params_one, params_two, strict=True):
    np.testing.assert_allclose(b, a, rtol=100 * RTOL, atol=PARAMS_ATOL)
  return losses


def test_lam_two_processes_match_one(tiny_babyai, tmp_path):
  config = train_lam_config.get_config("tiny")
  config.batch_size = 16
  config.data.train = ({"dataset_dir": tiny_babyai, "split": "train"},)
  config.data.val = ({"dataset_dir": tiny_babyai, "split": "val"},)
  _check_two_processes_match_one("experiments.train_lam", config, tmp_path)


def test_skill_model_two_processes_match_one(tiny_babyai, tmp_path):
  config = skill_config.get_config("tiny")
  config.batch_size = 8
  config.data.labels_dir = test_exact_resume.write_random_labels(tiny_babyai,
                                                                  str(tmp_path / "labels"))
  _check_two_processes_match_one("experiments.train_skill_model", config, tmp_path)


def test_policy_two_processes_match_one(tiny_babyai, tmp_path):
  config = test_policy.tiny_config(tiny_babyai, chunk=2)
  config.batch_size = 16
  _check_two_processes_match_one("experiments.train_policy", config, tmp_path)
