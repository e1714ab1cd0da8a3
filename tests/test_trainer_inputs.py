"""Every trainer (LAM, skill model, policy) checks its inputs before it builds or writes anything,
and passes config.data.skip_corrupted down to its data pipeline.

Tiny configs on the shared toy RLDS dataset (conftest); only the last test trains (one step).
"""
import itertools
import os
import shutil

import jax
import numpy as np
import pytest

from data_pipeline import reader
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


def _stand_in_checkpoint(workdir, config):
  """A step-1 checkpoint stored with `config` (its state: the MLP of tests/training_worker)."""
  mesh = training.make_mesh(jax.devices()[:1])
  ckpt = training.Checkpointer(os.path.join(workdir, "checkpoints"), config)
  ckpt.save(1, training.create_train_state(tw.init_params_fn(), tw.make_tx(),
                                           jax.random.PRNGKey(0), mesh), force=True)
  ckpt.close()


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


@pytest.mark.parametrize("trainer", TRAINERS)
def test_batch_size_below_one_is_refused_before_anything_is_written(trainer, toy_dataset,
                                                                    tmp_path):
  config = _config(trainer, toy_dataset, str(tmp_path))
  config.batch_size = 0
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match=r"config\.batch_size must be an integer >= 1, got 0"):
    _train(trainer, config, workdir)
  assert not os.path.exists(workdir)


def _missing_input(trainer, config, root, dataset_dir):
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
  config.lambda_rec = 1.0
  if trainer == "skill_rec":  # the frames come from the datasets the label manifest names
    config.data.labels_dir = _labels_dir(os.path.join(root, "rec"),
                                         [{"dataset_dir": missing, "split": "train"}])
    return schema.DatasetNotFoundError, "does not exist"
  # L_rec's frozen model: named but missing, or neither named nor in the label manifest.
  config.data.labels_dir = _labels_dir(os.path.join(root, "rec"),
                                       [{"dataset_dir": dataset_dir, "split": "train"}])
  if trainer == "skill_rec_model":
    config.frozen_model = f"lam:{os.path.join(root, 'no_lam')}"
    return FileNotFoundError, "no_lam"
  return ValueError, "set config.frozen_model"


@pytest.mark.parametrize("case", ["lam", "policy", "policy_labels", "skill", "skill_rec",
                                  "skill_rec_model", "skill_rec_no_model"])
def test_missing_input_is_reported_before_anything_is_written(case, toy_dataset, tmp_path):
  trainer = case.split("_")[0]
  config = _config(trainer, toy_dataset, str(tmp_path))
  error, message = _missing_input(case, config, str(tmp_path), toy_dataset)
  workdir = str(tmp_path / "run")
  with pytest.raises(error, match=message):
    _train(trainer, config, workdir)
  assert not os.path.exists(workdir)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_refused_resume_leaves_the_workdir_as_it_was(trainer, toy_dataset, tmp_path):
  """A workdir holding another run (its checkpoint and run_info.json): the trainer refuses to
  resume, and run_info.json still describes that run; nothing else is written."""
  workdir = str(tmp_path / "run")
  _stand_in_checkpoint(workdir, tw.CONFIG)
  info = run_info.write_run_info(workdir, tw.CONFIG)
  before = open(info, "rb").read()
  with pytest.raises(training.ConfigMismatchError, match="Refusing to resume"):
    _train(trainer, _config(trainer, toy_dataset, str(tmp_path)), workdir)
  assert open(info, "rb").read() == before
  assert sorted(os.listdir(workdir)) == [training.LOCK_NAME, "checkpoints", "run_info.json"]


# ---------------------------------------------------------------- config.data.skip_corrupted


@pytest.fixture(scope="module")
def corrupt_dataset(toy_dataset, tmp_path_factory):
  """A copy of the toy dataset with one byte flipped in the middle of its second train shard."""
  copy = str(tmp_path_factory.mktemp("corrupt") / "pipetest_toy" / "1.0.0")
  shutil.copytree(toy_dataset, copy)
  victim = os.path.join(copy, sorted(f for f in os.listdir(copy) if "-train." in f)[1])
  data = bytearray(open(victim, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(victim, "wb").write(bytes(data))
  return copy, os.path.basename(victim)


def _take(pipe, n):
  return list(itertools.islice(pipe.as_numpy_iterator(), n))


@pytest.mark.parametrize("trainer", ["lam", "policy"])
def test_skip_corrupted_reaches_the_trainers_pipeline(trainer, corrupt_dataset, tmp_path):
  dataset_dir, victim = corrupt_dataset
  config = _config(trainer, dataset_dir, str(tmp_path))
  config.data.shuffle_buffer = 0 if trainer == "lam" else 1

  def pipeline(config):
    if trainer == "lam":
      return lam_trainer.pair_pipeline(config, "train", seed=0, repeat=False, batch_size=1)
    return policy_trainer.make_pipeline(config, "train", {}, batch_size=1, seed=0)

  assert config.data.skip_corrupted is False  # the default: fail, naming the file
  with pytest.raises(schema.CorruptedRecordError, match=victim):
    _take(pipeline(config), 1000)
  config.data.skip_corrupted = True
  pipe = pipeline(config)
  assert pipe.num_skipped_records > 0
  assert len(_take(pipe, 50)) == 50
  if trainer == "policy":  # a demo fraction is drawn from the readable episodes
    spec = dict(config.data.train[0], split="train")
    assert len(policy_trainer.select_episodes(spec, 0.5, skip_corrupted=True)) >= 1


def _micro_frozen_lam():
  """An untrained micro LAM at the toy dataset's 16x16 with k = 1 and Dz = 4."""
  from hilam_jax import lam  # pylint: disable=g-import-not-at-top
  lam_cfg = lam.LAMConfig.tiny(stem_stride=2, idm_widths=(8, 16), fdm_widths=(8, 16),
                               idm_mlp_width=16, fdm_cond_width=16, norm_groups=4, latent_dim=4)
  return lam.FrozenLAM(lam.LatentActionModel(lam_cfg),
                       lam.init_params(lam_cfg, jax.random.key(0), (16, 16)), frame_gap=1,
                       image_size=(16, 16))


def test_skip_corrupted_reaches_the_skill_models_frames(toy_dataset, corrupt_dataset, tmp_path):
  """With L_rec the skill trainer reads frames of the labelled episodes: a corrupted record
  fails naming its file, and config.data.skip_corrupted trains without the skipped episodes."""
  dataset_dir, victim = corrupt_dataset
  labels_dir = str(tmp_path / "labels")
  rng = np.random.default_rng(0)
  splits = [{"dataset_dir": toy_dataset, "split": s} for s in ("train", "val")]
  jobs = labeling.plan_shards(splits, labels_dir)
  for job in jobs:  # random latents keyed by the real episode ids (the copy has the same ids)
    labels = {}
    for traj in reader.read_trajectories(toy_dataset, source=job.source):
      labels[traj["episode_id"][0].numpy().decode()] = rng.normal(
          size=(len(traj["is_first"]) - 1, 4)).astype(np.float32)
    labeling.write_shard(job.out_path, labels, 4)
  run_info.write_json_atomic(os.path.join(labels_dir, labeling.MANIFEST), {
      "lam": {}, "frame_gap": 1, "latent_dim": 4,
      "datasets": [dict(s, dataset_dir=dataset_dir) for s in splits],
      "shards": [os.path.relpath(j.out_path, labels_dir) for j in jobs]})
  config = skill_config.get_config("tiny")
  config.data.labels_dir = labels_dir
  config.num_steps = 1
  config.lambda_rec = 1.0
  config.data.rec_positions = 2
  assert config.data.skip_corrupted is False
  with pytest.raises(schema.CorruptedRecordError, match=victim):
    skill_trainer.train_and_evaluate(config, str(tmp_path / "fails"),
                                     frozen_lam=_micro_frozen_lam())
  config.data.skip_corrupted = True
  final = skill_trainer.train_and_evaluate(config, str(tmp_path / "skips"),
                                           frozen_lam=_micro_frozen_lam())
  assert np.isfinite(final["rec"])


@pytest.mark.parametrize("trainer", ["lam", "policy"])
def test_a_checkpoint_without_skip_corrupted_is_resumed(trainer, toy_dataset, tmp_path):
  """Checkpoints written before the option existed (or with another value) pass the config
  check: the restore is attempted (and fails here only because the stored state is a stand-in)."""
  from hilam_jax.policy import networks  # pylint: disable=g-import-not-at-top
  config = _config(trainer, toy_dataset, str(tmp_path))
  stored = config.to_dict()
  if trainer == "policy":
    stored["model_config"] = networks.model_config(config).to_dict()
  del stored["data"]["skip_corrupted"]
  workdir = str(tmp_path / "run")
  _stand_in_checkpoint(workdir, stored)
  config.data.skip_corrupted = True
  with pytest.raises(training.CheckpointMismatchError):
    _train(trainer, config, workdir)
