"""Exact resume: `kill -9` mid-run, then the same command, trains on the same batches.

Each trainer (LAM, skill model, policy) runs at tiny size in spawned processes: once without
interruption, and once killed with SIGKILL (no handler, no cleanup) right after it started
writing the checkpoint of step KILL_AT, then rerun on the same workdir. Every per-step training
loss the interrupted and resumed processes logged must equal the uninterrupted run's loss at
that step bit for bit (the policy: to 1e-6, see its test), and the final parameters must be
identical: the data stream resumes at the step's position instead of being re-seeded.
"""
import json
import multiprocessing
import os
import signal

import numpy as np
import pytest

from data_pipeline import reader
from data_pipeline.generators import babyai
from experiments.configs import generate_babyai
from experiments.configs import train_lam as train_lam_config
from experiments.configs import train_skill_model as skill_config
from hilam_jax.lam import labeling
from hilam_jax.training import metrics as metrics_lib
from tests import test_policy

# Killed after the save of step 4 started: the rerun restores step 2 or 4 (not 0: it logs at most
# KILL_AT + NUM_STEPS - CHECKPOINT_EVERY losses in all) and redoes steps up to KILL_AT.
NUM_STEPS, CHECKPOINT_EVERY, KILL_AT = 6, 2, 4
LATENT_DIM = 4


def _child(kind: str, config: dict, workdir: str, kill_at: int | None) -> None:
  """Runs one trainer (in a spawned process); with kill_at, SIGKILLs itself right after the
  save of that step was started (orbax writes asynchronously: the step may be incomplete)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from hilam_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  if kill_at is not None:
    save = checkpoint.Checkpointer.save

    def save_then_die(self, step, state, **kwargs):
      saved = save(self, step, state, **kwargs)
      if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
      return saved

    checkpoint.Checkpointer.save = save_then_die
  if kind == "lam":
    from hilam_jax.lam import trainer  # pylint: disable=g-import-not-at-top
  elif kind == "skill":
    from hilam_jax.skill import trainer  # pylint: disable=g-import-not-at-top
  else:
    from hilam_jax.policy import trainer  # pylint: disable=g-import-not-at-top
  trainer.train_and_evaluate(ml_collections.ConfigDict(config), workdir)


def _run(kind, config, workdir, kill_at=None):
  context = multiprocessing.get_context("spawn")
  process = context.Process(target=_child, args=(kind, config.to_dict(), workdir, kill_at))
  process.start()
  process.join(timeout=600)
  return process.exitcode


def _losses(workdir):
  return metrics_lib.read_scalars(os.path.join(workdir, "tensorboard"), "train/loss")


def _final_params(workdir):
  from hilam_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  params = checkpoint.restore_params(os.path.join(workdir, "checkpoints"))
  return jax.tree.leaves(jax.device_get(params))


def _check_exact_resume(kind, config, tmp_path, rtol=0.0, params_atol=0.0):
  config.num_steps = NUM_STEPS
  config.checkpoint_every = CHECKPOINT_EVERY
  config.log_every = 1
  config.eval_every = NUM_STEPS
  reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
  assert _run(kind, config, reference) == 0
  assert _run(kind, config, resumed, kill_at=KILL_AT) == -signal.SIGKILL
  killed_losses = _losses(resumed)
  assert max(step for step, _ in killed_losses) == KILL_AT  # died right at the kill point
  assert _run(kind, config, resumed) == 0
  expected = dict(_losses(reference))
  assert sorted(expected) == list(range(1, NUM_STEPS + 1))
  logged = _losses(resumed)  # both processes' events: steps up to KILL_AT appear twice or more
  assert {step for step, _ in logged} == set(expected)
  # The rerun restored a checkpoint (step >= CHECKPOINT_EVERY), it did not start over.
  assert len(logged) <= KILL_AT + NUM_STEPS - CHECKPOINT_EVERY
  for step, value in logged:
    np.testing.assert_allclose(value, expected[step], rtol=rtol, atol=0,
                               err_msg=f"{kind}: step {step}")
  for a, b in zip(_final_params(reference), _final_params(resumed), strict=True):
    np.testing.assert_allclose(a, b, rtol=100 * rtol, atol=params_atol)


@pytest.fixture(scope="module")
def tiny_babyai(tmp_path_factory):
  config = generate_babyai.get_config("tiny")
  config.num_train_episodes, config.num_val_episodes = 8, 2
  return babyai.generate(config, str(tmp_path_factory.mktemp("babyai")))["dataset_dir"]


def test_lam_resumes_exactly(tiny_babyai, tmp_path):
  config = train_lam_config.get_config("tiny")
  config.data.train = ({"dataset_dir": tiny_babyai, "split": "train"},)
  config.data.val = ({"dataset_dir": tiny_babyai, "split": "val"},)
  _check_exact_resume("lam", config, tmp_path)


def write_random_labels(dataset_dir: str, labels_dir: str) -> str:
  """A labels folder of random LATENT_DIM latents for every episode of `dataset_dir` (train and
  val), in the labeling format; returns labels_dir."""
  datasets = [{"dataset_dir": dataset_dir, "split": s} for s in ("train", "val")]
  jobs = labeling.plan_shards(datasets, labels_dir)
  rng = np.random.default_rng(0)
  for job in jobs:
    labels = {}
    for traj in reader.read_trajectories(dataset_dir, source=job.source):
      labels[traj["episode_id"][0].numpy().decode()] = rng.normal(
          size=(len(traj["is_first"]) - 1, LATENT_DIM)).astype(np.float32)
    labeling.write_shard(job.out_path, labels, LATENT_DIM)
  with open(os.path.join(labels_dir, labeling.MANIFEST), "w") as f:
    json.dump({"lam": {}, "frame_gap": 1, "latent_dim": LATENT_DIM, "datasets": datasets,
               "shards": [os.path.relpath(j.out_path, labels_dir) for j in jobs]}, f)
  return labels_dir


def test_skill_model_resumes_exactly(tiny_babyai, tmp_path):
  config = skill_config.get_config("tiny")
  config.data.labels_dir = write_random_labels(tiny_babyai, str(tmp_path / "labels"))
  _check_exact_resume("skill", config, tmp_path)


def test_policy_resumes_exactly(tiny_babyai, tmp_path):
  config = test_policy.tiny_config(tiny_babyai, chunk=2)
  # Not bitwise: measured (with this test's former config, default warm-up), the resumed run's
  # losses at 2 of the 6 steps it redid differ from the uninterrupted run's in the last bit
  # (1.97520911 vs 1.97520924), while the uninterrupted steps of the killed run match bit for bit;
  # the batches are the same (a wrong data position moves the loss by ~0.1). Cause not found yet
  # (the LAM and skill model are bitwise). Adam turns such last-bit differences of near-zero
  # gradients into whole steps, so parameters near 0 differ by up to ~1e-5 (measured in two CI
  # runs: 3.3e-6, 1.05e-5): compared with an absolute tolerance of 1e-4, an order above.
  _check_exact_resume("policy", config, tmp_path, rtol=1e-6, params_atol=1e-4)
