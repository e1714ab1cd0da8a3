"""Policy training and test-time policies: fractions, parameter transfer, frozen pi^h, hierarchy."""
import json
import os

import jax
import numpy as np
import pytest

from data_pipeline import dataset as dp
from experiments.configs import train_policy
from hilam_jax import training
from hilam_jax.lam import labeling
from hilam_jax.language import CachedEncoder, make_encoder
from hilam_jax.policy import baku
from hilam_jax.policy import policies
from hilam_jax.policy import trainer

LATENT_DIM = 3


@pytest.fixture(scope="module")
def babyai_data(tmp_path_factory):
  """A tiny BabyAI PutNextLocal demo set from the real simulator + latent labels per frame."""
  from data_pipeline.generators import babyai
  from experiments.configs import generate_babyai
  root = str(tmp_path_factory.mktemp("policy_data"))
  config = generate_babyai.get_config("tiny")
  config.level = "BabyAI-PutNextLocal-v0"
  config.num_train_episodes, config.num_val_episodes = 6, 2
  dataset_dir = babyai.generate(config, root)["dataset_dir"]
  # Latent-action-like labels (T-1 per episode) written in the labeling job's format.
  labels_dir = os.path.join(root, "labels")
  jobs = labeling.plan_shards([{"dataset_dir": dataset_dir, "split": s}
                               for s in ("train", "val")], labels_dir)
  rng = np.random.default_rng(0)
  from data_pipeline import reader
  for job in jobs:
    labels = {}
    for traj in reader.read_trajectories(job.source.dataset_dir, source=job.source):
      steps = int(traj["is_first"].shape[0])
      labels[traj["episode_id"][0].numpy().decode()] = rng.normal(
          size=(steps - 1, LATENT_DIM)).astype(np.float32)
    labeling.write_shard(job.out_path, labels, LATENT_DIM)
  with open(os.path.join(labels_dir, labeling.MANIFEST), "w") as f:
    json.dump({"shards": [os.path.relpath(j.out_path, labels_dir) for j in jobs],
               "latent_dim": LATENT_DIM}, f)
  return dataset_dir, labels_dir


def _config(dataset_dir, variant="tiny", **overrides):
  config = train_policy.get_config(variant)
  config.lang_encoder = "hash"
  config.data.train = ({"dataset_dir": dataset_dir},)
  config.data.val = ({"dataset_dir": dataset_dir},)
  config.data.shuffle_buffer = 64
  config.chunk = 4
  config.head_hidden = (16,)
  config.batch_size = 8
  config.num_steps = 4
  config.warmup_steps = 1
  config.log_every = 2
  config.eval_every = 0
  config.checkpoint_every = 4
  config.num_eval_batches = 1
  for key, value in overrides.items():
    target = config
    *path, last = key.split(".")
    for p in path:
      target = target[p]
    target[last] = value
  return config


def test_select_episodes_nested_and_deterministic(babyai_data):
  dataset_dir, _ = babyai_data
  spec = {"dataset_dir": dataset_dir, "split": "train"}
  assert trainer.select_episodes(spec, 1.0) is None
  small = trainer.select_episodes(spec, 0.3)
  large = trainer.select_episodes(spec, 0.6)
  assert len(small) == 2 and len(large) == 4 and set(small) <= set(large)
  assert small == trainer.select_episodes(spec, 0.3)
  with pytest.raises(ValueError, match="episode_fraction"):
    trainer.select_episodes(spec, 0.0)


def test_transfer_params_is_strict_about_the_body():
  small = train_policy.model("tiny", proprio_dim=4)
  heads = {"latent": {"kind": "latent", "dim": 3, "target": "z0"}}
  c = train_policy.get_config("tiny")
  c.heads = heads
  c.model = small
  cfg_old = trainer.model_config(c)
  c.heads = {"action": {"kind": "categorical", "dim": 7, "target": "action"}}
  cfg_new = trainer.model_config(c)
  example = trainer._example_inputs(cfg_old, (56, 56))
  old = baku.BakuPolicy(cfg_old).init(jax.random.key(0), example)["params"]
  new = baku.BakuPolicy(cfg_new).init(jax.random.key(1), example)["params"]
  merged, fresh = trainer.transfer_params(old, new, source="test")
  assert fresh == ["head_action"] and "head_latent" not in merged
  np.testing.assert_array_equal(merged["action_token"], old["action_token"])
  c.model = train_policy.model("tiny", proprio_dim=4, num_keypoints=4)
  other = baku.BakuPolicy(trainer.model_config(c)).init(jax.random.key(2), example)["params"]
  with pytest.raises(ValueError, match="shapes"):
    trainer.transfer_params(old, other, source="test")


def test_batch_converter_masks_the_placeholder_action():
  config = train_policy.get_config("tiny")
  convert = trainer.BatchConverter(config, CachedEncoder(make_encoder("hash")))
  batch = {"observation": {"image_primary": np.zeros((2, 56, 56, 3), np.uint8),
                           "proprio": np.zeros((2, 4), np.float32)},
           "language_instruction": np.array([b"a", b"b"]),
           "action": np.array([[2, 3, 6, 6], [1, 1, 1, 1]], np.int32),
           "action_pad_mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)}
  out = convert(batch)
  np.testing.assert_array_equal(out["masks"]["action"][:, 0], [[1, 1, 0, 0], [1, 1, 1, 1]])
  assert out["inputs"]["images"]["image_primary"].shape == (2, 1, 56, 56, 3)
  assert out["inputs"]["lang"].shape == (2, 384)


@pytest.fixture(scope="module")
def trained_levels(babyai_data, tmp_path_factory):
  """pi^h pretrained on latent labels, then pi^l fine-tuned with pi^h frozen."""
  dataset_dir, labels_dir = babyai_data
  root = str(tmp_path_factory.mktemp("levels"))
  labels = {"z0": {"dir": labels_dir}}
  high = _config(dataset_dir, role="high", **{"data.labels": labels},
                 heads={"skill": {"kind": "latent", "dim": LATENT_DIM, "target": "z0"}})
  high_dir = os.path.join(root, "high")
  trainer.train_and_evaluate(high, high_dir)
  high_params_before = training.restore_params(os.path.join(high_dir, "checkpoints"))
  low = _config(dataset_dir, role="low", init_from=None,
                model=train_policy.model("tiny", proprio_dim=4, condition_dim=LATENT_DIM),
                **{"condition.key": "z0", "condition.source": "high_policy",
                   "condition.high_workdir": high_dir, "data.ignore_action": 6})
  low_dir = os.path.join(root, "low")
  metrics = trainer.train_and_evaluate(low, low_dir)
  return high_dir, low_dir, high_params_before, metrics


def test_frozen_high_policy_is_bit_identical_after_fine_tuning(trained_levels):
  high_dir, low_dir, before, metrics = trained_levels
  after = training.restore_params(os.path.join(high_dir, "checkpoints"))
  jax.tree.map(np.testing.assert_array_equal, before, after)
  with open(os.path.join(low_dir, "policy.json")) as f:
    info = json.load(f)
  assert info["high_policy"]["params_sha256"] == training.params_sha256(before)
  assert np.isfinite(metrics["loss"]) and "action/accuracy" in metrics


def test_hierarchical_policy_acts_in_the_simulator(trained_levels):
  from hilam_jax.evaluation import babyai as babyai_eval
  high_dir, low_dir, _, _ = trained_levels
  high = policies.PolicyNetwork.load(high_dir, heads=("skill",))
  low = policies.PolicyNetwork.load(low_dir, heads=("action",), encoder=high.encoder)
  policy = policies.HierarchicalPolicy(high, low, high_every=2)
  result = babyai_eval.evaluate_babyai(policy, "BabyAI-PutNextLocal-v0", num_episodes=2,
                                       num_envs=2, max_steps=6)
  assert result.num_episodes == 2 and 0 <= result.success_rate <= 1
  # high_every=2: the skill changes only at refresh steps.
  policy.reset(1)
  obs = {"image_primary": np.zeros((1, 56, 56, 3), np.uint8), "proprio": np.eye(4)[:1]}
  skills = []
  for t in range(4):
    policy.act(dict(obs, image_primary=np.full((1, 56, 56, 3), 40 * t, np.uint8)),
               ["put the red ball next to the key"], np.array([t == 0]))
    skills.append(policy._skill.copy())
  np.testing.assert_array_equal(skills[0], skills[1])
  assert not np.array_equal(skills[1], skills[2])
  np.testing.assert_array_equal(skills[2], skills[3])
  with pytest.raises(ValueError, match="conditioned on a skill"):
    low.predict(obs, ["x"])
