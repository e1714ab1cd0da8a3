"""Bad inputs are refused with a message that names the file or workdir at fault."""
import os

import jax
import pytest

from data_pipeline import reader
from data_pipeline import schema
from hilam_jax import training
from hilam_jax.lam import frozen_models
from tests import training_worker as tw


def test_an_unreadable_dataset_info_is_named(toy_dataset, tmp_path):
  import shutil
  copy = str(tmp_path / "copy")
  shutil.copytree(toy_dataset, copy)
  with open(os.path.join(copy, "dataset_info.json"), "w") as f:
    f.write('{"name": "pipetest_toy", "splits": [{"name": 3')  # truncated mid-write
  with pytest.raises(schema.DatasetError,
                     match=rf"{os.path.join(copy, 'dataset_info.json')} .*could not be read"):
    reader.get_source(copy, split="train")


def test_a_frozen_model_that_is_not_a_lam_workdir_is_named(tmp_path):
  """E.g. a skill-model workdir given as 'lam:<dir>': its checkpoint config has no LAM."""
  workdir = str(tmp_path / "skill_model")
  ckpt = training.Checkpointer(os.path.join(workdir, "checkpoints"),
                               {"model": {"latent_dim": 4}, "data": {"window": 16}})
  mesh = training.make_mesh(jax.devices()[:1])
  ckpt.save(1, training.create_train_state(tw.init_params_fn(), tw.make_tx(),
                                           jax.random.PRNGKey(0), mesh), force=True)
  ckpt.close()
  for call in (frozen_models.load_frozen_model, frozen_models.frozen_model_fingerprint):
    with pytest.raises(ValueError, match=rf"{workdir} is not a LAM workdir \(train_lam\): its "
                                         r"checkpoint config has \['data', 'model'\]"):
      call(f"lam:{workdir}")


def test_a_frozen_model_without_l_rec_is_named_as_unused(caplog):
  from experiments.configs import train_skill_model  # pylint: disable=g-import-not-at-top
  from hilam_jax.skill import trainer  # pylint: disable=g-import-not-at-top
  config = train_skill_model.get_config("tiny")
  config.lambda_rec = 0.0
  config.frozen_model = "uniskill:/weights/uniskill_flax"
  trainer.check_objective(config)
  assert "frozen_model='uniskill:/weights/uniskill_flax' is not used" in caplog.text
  caplog.clear()
  config.lambda_rec = 0.5
  trainer.check_objective(config)
  assert "not used" not in caplog.text


def test_a_double_corrupt_restore_is_one_error_without_asyncio_noise(tmp_path):
  """Every step of a checkpoint garbled: the resume fails with one error naming each step, and
  no traceback of tensorstore's I/O threads comes with it (before the filter in
  `training.checkpoint`: 26 "Event loop is closed" tracebacks here, when the machine is idle;
  under load the reads finish before orbax's loop closes and none appear)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  mesh = training.make_mesh(jax.devices()[:1])
  ckpt = training.Checkpointer(tmp_path, tw.CONFIG)
  state = training.create_train_state(tw.init_params_fn(), tw.make_tx(), jax.random.PRNGKey(0),
                                      mesh)
  ckpt.save(1, state, force=True)
  ckpt.save(2, state.replace(step=state.step + 1), force=True)
  ckpt.close()
  for step in ("1", "2"):
    for root, _, files in os.walk(tmp_path / step / "state"):
      for name in files:
        if os.path.basename(root) == "d":
          path = os.path.join(root, name)
          with open(path, "wb") as f:
            f.write(os.urandom(os.path.getsize(path) or 64))
  script = (
      "import jax, sys\n"
      "from hilam_jax import training\n"
      "from tests import training_worker as tw\n"
      "mesh = training.make_mesh(jax.devices()[:1])\n"
      "ckpt = training.Checkpointer(sys.argv[1], tw.CONFIG)\n"
      "ckpt.restore(training.abstract_train_state(tw.init_params_fn(), tw.make_tx(), mesh))\n")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=repo,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 1
  assert "CorruptCheckpointError: No checkpoint in" in done.stderr
  assert "step 2:" in done.stderr and "step 1:" in done.stderr
  assert "Event loop is closed" not in done.stderr
  assert done.stderr.count("Traceback") <= 2  # the error and the orbax error it chains
