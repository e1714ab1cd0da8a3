"""LAM stage end to end on a tiny generated BabyAI dataset: train, checkpoint, label, join."""
import json
import os

import numpy as np
import pytest

from data_pipeline import dataset as dp
from data_pipeline import reader
from data_pipeline.generators import babyai
from experiments.configs import generate_babyai
from experiments.configs import train_lam as train_lam_config
from hilam_jax import training
from hilam_jax.lam import labeling
from hilam_jax.lam import trainer


@pytest.fixture(scope="module")
def tiny_babyai(tmp_path_factory):
  config = generate_babyai.get_config("tiny")
  config.level = "BabyAI-GoToSeq-v0"
  out = babyai.generate(config, str(tmp_path_factory.mktemp("babyai")))
  return out["dataset_dir"]


def _lam_config(dataset_dir, num_steps=40):
  config = train_lam_config.get_config("tiny")
  config.data.train = ({"dataset_dir": dataset_dir, "split": "train"},)
  config.data.val = ({"dataset_dir": dataset_dir, "split": "val"},)
  config.num_steps = num_steps
  config.log_every = 10
  config.eval_every = num_steps
  config.learning_rate = 3e-3
  return config


@pytest.fixture(scope="module")
def trained_lam(tiny_babyai, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("lam"))
  final = trainer.train_and_evaluate(_lam_config(tiny_babyai), workdir)
  return workdir, final


def _scalars(workdir, tag):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  values = []
  logdir = os.path.join(workdir, "tensorboard")
  for name in sorted(os.listdir(logdir)):
    for record in tf.data.TFRecordDataset(os.path.join(logdir, name)):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == tag:
          values.append((event.step, float(tf.make_ndarray(value.tensor))))
  return sorted(values)


def test_training_reduces_loss_and_logs(trained_lam):
  workdir, final = trained_lam
  losses = _scalars(workdir, "train/loss")
  assert len(losses) >= 3
  assert losses[-1][1] < losses[0][1] * 0.9, losses
  assert "z_gain" in final and "z_var/mean" in final and np.isfinite(final["loss"])
  assert _scalars(workdir, "steps_per_sec")
  with open(os.path.join(workdir, "run_info.json")) as f:
    assert "jax" in json.load(f)["versions"]


def test_checkpoint_with_mismatched_config_is_refused(tiny_babyai, trained_lam):
  workdir, _ = trained_lam
  config = _lam_config(tiny_babyai)
  lam = dict(config.lam)
  lam["latent_dim"] = 7
  config.lam = lam
  with pytest.raises(training.ConfigMismatchError, match="latent_dim"):
    trainer.train_and_evaluate(config, workdir)


def test_frozen_lam_from_checkpoint(trained_lam, tiny_babyai):
  workdir, _ = trained_lam
  lam = trainer.load_frozen_lam(workdir)
  assert lam.frame_gap == 1 and lam.image_size == (56, 56) and lam.latent_dim == 4
  frames = np.zeros((2, 56, 56, 3), np.uint8)
  assert lam.encode(frames, frames).shape == (2, 4)
  fingerprint = trainer.checkpoint_fingerprint(workdir)
  assert len(fingerprint["params_sha256"]) == 64


def _all_episode_ids(dataset_dir, split):
  return sorted(t["episode_id"][0].numpy().decode()
                for t in reader.read_trajectories(dataset_dir, split=split))


def test_labels_round_trip_resume_and_join(trained_lam, tiny_babyai, tmp_path):
  workdir, _ = trained_lam
  lam = trainer.load_frozen_lam(workdir)
  datasets = [{"dataset_dir": tiny_babyai, "split": "train"},
              {"dataset_dir": tiny_babyai, "split": "val"}]
  out_dir = str(tmp_path / "labels")
  fingerprint = trainer.checkpoint_fingerprint(workdir)
  # An interrupted job: one shard only, then the rerun finishes the rest.
  first = labeling.label_datasets(lam, datasets, out_dir, batch_size=16,
                                  fingerprint=fingerprint, max_shards=1)
  assert first["shards_done"] == 1 and not first["complete"]
  with pytest.raises(FileNotFoundError, match="incomplete"):
    labeling.load_labels(out_dir)
  done = [j.out_path for j in labeling.plan_shards(datasets, out_dir)
          if os.path.exists(j.out_path)]
  mtimes = {p: os.path.getmtime(p) for p in done}
  second = labeling.label_datasets(lam, datasets, out_dir, batch_size=16, fingerprint=fingerprint)
  assert second["complete"] and second["shards_done"] == second["shards_total"] - 1
  assert all(os.path.getmtime(p) == t for p, t in mtimes.items())  # not redone

  # No duplicates, no gaps: every episode once, T - k latents each.
  ids = []
  for job in labeling.plan_shards(datasets, out_dir):
    shard = labeling.read_shard(job.out_path)
    ids.extend(shard)
  assert sorted(ids) == sorted(_all_episode_ids(tiny_babyai, "train")
                               + _all_episode_ids(tiny_babyai, "val"))
  table = labeling.load_labels(out_dir)

  # Join onto the pipeline: the label at frame t is the LAM's z for the pair (t, t+1).
  pipe = dp.make_dataset([dp.DatasetSpec(tiny_babyai)], batch_size=8, repeat=False,
                         shuffle_buffer=0, labels={"latent_action": table},
                         transforms=dp.TransformConfig(frame_pair_k=1, resize=(56, 56)))
  checked = 0
  for batch in pipe.as_numpy_iterator():
    assert batch["latent_action_mask"].all()  # pairs exist exactly where labels do
    z = np.asarray(lam.encode(batch["observation"]["image_primary"],
                              batch["next_observation"]["image_primary"]))
    np.testing.assert_allclose(batch["latent_action"], z, atol=1e-5)
    checked += len(z)
  assert checked > 16

  # A different LAM in the same out_dir is refused.
  with pytest.raises(ValueError, match="another LAM"):
    labeling.label_datasets(lam, datasets, out_dir, fingerprint={"params_sha256": "other"})
