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
