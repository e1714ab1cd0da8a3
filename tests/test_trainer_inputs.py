"""Every trainer (LAM, skill model, policy) checks its inputs before it builds or writes anything.

Tiny configs on the shared toy RLDS dataset (conftest); nothing here trains.
"""
import os

import jax
import pytest

from data_pipeline import run_info
from data_pipeline import schema
from experiments.configs import train_lam as lam_config
from experiments.configs import train_skill_model as skill_config
from hilam_jax import training
from hilam_jax.lam import labeling
from hilam_jax.lam import trainer as lam_trainer
from hilam_jax.policy import config as policy_config
from hilam_jax.policy import trainer as policy_trainer
from hilam_jax.skill import trainer as skill_trainer
from tests import training_worker as tw

TRAINERS = ("lam", "skill", "policy")


def _labels_dir(root, datasets=()):
  """A label folder with a manifest (and no shards): enough for the checks under test."""
  folder = os.path.join(root, "labels")
  run_info.write_json_atomic(os.path.join(folder, labeling.MANIFEST),
                             {"frame_gap": 1, "latent_dim": 4, "datasets": list(datasets),
                              "shards": []})
  return folder


def _config(trainer, dataset_dir, root):
  if trainer == "lam":
    config = lam_config.get_config("tiny")
    config.data.train = ({"dataset_dir": dataset_dir, "split": "train"},)
    config.data.val = ({"dataset_dir": dataset_dir, "split": "val"},)
    return config
  if trainer == "skill":
    config = skill_config.get_config("tiny")
    config.data.labels_dir = _labels_dir(root)
    return config
  config = policy_config.default_config("tiny")
  config.lang_encoder = "hash"
  config.data.train = ({"dataset_dir": dataset_dir},)
  config.data.val = ({"dataset_dir": dataset_dir},)
  config.heads = {"action": {"kind": "continuous", "dim": 2, "target": "action"}}
  return config


def _train(trainer, config, workdir):
  module = {"lam": lam_trainer, "skill": skill_trainer, "policy": policy_trainer}[trainer]
  return module.train_and_evaluate(config, workdir)


@pytest.mark.parametrize("num_steps", [0, -3])
@pytest.mark.parametrize("trainer", TRAINERS)
def test_num_steps_below_one_is_refused_before_anything_is_written(trainer, num_steps,
                                                                   toy_dataset, tmp_path):
  config = _config(trainer, toy_dataset, str(tmp_path))
  config.num_steps = num_steps
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match=r"config\.num_steps must be an integer >= 1"):
    _train(trainer, config, workdir)
  assert not os.path.exists(workdir)


def test_log_every_below_one_is_refused(toy_dataset, tmp_path):
  config = _config("lam", toy_dataset, str(tmp_path))
  config.log_every = 0
  with pytest.raises(ValueError, match=r"config\.log_every"):
    _train("lam", config, str(tmp_path / "run"))


def _missing_input(trainer, config, root):
  """Points `config` at a missing input; returns the error expected and its message."""
  missing = os.path.join(root, "missing", "1.0.0")
  if trainer == "lam":
    config.data.val = ({"dataset_dir": missing, "split": "val"},)
    return schema.DatasetNotFoundError, "does not exist"
  if trainer == "policy":
    config.data.train = ({"dataset_dir": missing},)
    return schema.DatasetNotFoundError, "does not exist"
  if trainer == "policy_labels":
    config.data.labels = {"z0": {"dir": os.path.join(root, "no_labels")}}
    config.heads = {"latent": {"kind": "latent", "dim": 4, "target": "z0"}}
    return FileNotFoundError, "label 'z0': no manifest"
  if trainer == "skill":
    config.data.labels_dir = os.path.join(root, "no_labels")
    return FileNotFoundError, "no label manifest"
  # skill with L_rec: the frames come from the datasets the label manifest names.
  config.lambda_rec = 1.0
  config.data.labels_dir = _labels_dir(os.path.join(root, "rec"),
                                       [{"dataset_dir": missing, "split": "train"}])
  return schema.DatasetNotFoundError, "does not exist"


@pytest.mark.parametrize("case", ["lam", "policy", "policy_labels", "skill", "skill_rec"])
def test_missing_input_is_reported_before_anything_is_written(case, toy_dataset, tmp_path):
  trainer = case.split("_")[0]
  config = _config(trainer, toy_dataset, str(tmp_path))
  error, message = _missing_input(case, config, str(tmp_path))
  workdir = str(tmp_path / "run")
  with pytest.raises(error, match=message):
    _train(trainer, config, workdir)
  assert not os.path.exists(workdir)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_refused_resume_leaves_the_workdir_as_it_was(trainer, toy_dataset, tmp_path):
  """A workdir holding another run (its checkpoint and run_info.json): the trainer refuses to
  resume, and run_info.json still describes that run; nothing else is written."""
  workdir = str(tmp_path / "run")
  mesh = training.make_mesh(jax.devices()[:1])
  other = training.Checkpointer(os.path.join(workdir, "checkpoints"), tw.CONFIG)
  other.save(1, training.create_train_state(tw.init_params_fn(), tw.make_tx(),
                                            jax.random.PRNGKey(0), mesh), force=True)
  other.close()
  info = run_info.write_run_info(workdir, tw.CONFIG)
  before = open(info, "rb").read()
  with pytest.raises(training.ConfigMismatchError, match="Refusing to resume"):
    _train(trainer, _config(trainer, toy_dataset, str(tmp_path)), workdir)
  assert open(info, "rb").read() == before
  assert sorted(os.listdir(workdir)) == ["checkpoints", "run_info.json"]
