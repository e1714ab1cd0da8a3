"""Policy training and test-time policies: fractions, parameter transfer, frozen pi^h, the low
level's language and skill condition in fine-tuning and at test time, hierarchy."""
import json
import os

import jax
import numpy as np
import pytest

from hilam_jax import training
from hilam_jax.lam import labeling
from hilam_jax.language import CachedEncoder, make_encoder
from hilam_jax.policy import baku
from hilam_jax.policy import config as policy_defaults
from hilam_jax.policy import networks
from hilam_jax.policy import policies
from hilam_jax.policy import trainer
from tests.conftest import parse_python

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


def tiny_config(dataset_dir, variant="tiny", **overrides):
  """The tiny policy config on one dataset, 4 steps (also used by test_exact_resume)."""
  config = policy_defaults.default_config(variant)
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


def _imported_modules(module) -> set[str]:
  """Every module a source file imports, at any depth (function-level imports included)."""
  import ast
  import importlib
  path = importlib.import_module(module).__file__
  names = set()
  for node in ast.walk(parse_python(path)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def test_layering_test_time_code_and_library_do_not_import_upwards():
  """Item 6: policies.py (test time) does not import the trainer; the library's experiment does
  not import the launch layer (experiments/)."""
  assert "hilam_jax.policy.trainer" not in _imported_modules("hilam_jax.policy.policies")
  assert "hilam_jax.policy.networks" in _imported_modules("hilam_jax.policy.policies")
  imported = _imported_modules("hilam_jax.experiment")
  assert not [m for m in imported if m == "experiments" or m.startswith("experiments.")]
  assert "hilam_jax.policy" in imported  # the walk does see function-level imports


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
  small = policy_defaults.model("tiny", proprio_dim=4)
  heads = {"latent": {"kind": "latent", "dim": 3, "target": "z0"}}
  c = policy_defaults.default_config("tiny")
  c.heads = heads
  c.model = small
  cfg_old = networks.model_config(c)
  c.heads = {"action": {"kind": "categorical", "dim": 7, "target": "action"}}
  cfg_new = networks.model_config(c)
  example = networks.example_inputs(cfg_old, (56, 56))
  old = baku.BakuPolicy(cfg_old).init(jax.random.key(0), example)["params"]
  new = baku.BakuPolicy(cfg_new).init(jax.random.key(1), example)["params"]
  merged, fresh = trainer.transfer_params(old, new, source="test")
  assert fresh == ["head_action"] and "head_latent" not in merged
  np.testing.assert_array_equal(merged["action_token"], old["action_token"])
  c.model = policy_defaults.model("tiny", proprio_dim=4, num_keypoints=4)
  other = baku.BakuPolicy(networks.model_config(c)).init(jax.random.key(2), example)["params"]
  with pytest.raises(ValueError, match="shapes"):
    trainer.transfer_params(old, other, source="test")


INSTRUCTIONS = ("put the red ball next to the key", "pick up the blue box")


def _raw_batch(n=2, seed=0, chunk=4, instructions=None):
  """A batch as the tf.data pipeline yields it (numpy), n rows of random frames."""
  rng = np.random.default_rng(seed)
  instructions = instructions or [INSTRUCTIONS[i % 2] for i in range(n)]
  return {"observation": {"image_primary": rng.integers(0, 256, (n, 56, 56, 3), dtype=np.uint8),
                          "proprio": rng.normal(size=(n, 4)).astype(np.float32)},
          "language_instruction": np.array([i.encode() for i in instructions]),
          "action": rng.integers(0, 6, (n, chunk)).astype(np.int32),
          "action_pad_mask": np.ones((n, chunk), bool),
          "z0": rng.normal(size=(n, LATENT_DIM)).astype(np.float32)}


def test_batch_converter_masks_the_placeholder_action():
  config = policy_defaults.default_config("tiny")
  encoder = CachedEncoder(make_encoder("hash"))
  convert = trainer.BatchConverter(config, encoder)
  batch = {"observation": {"image_primary": np.zeros((2, 56, 56, 3), np.uint8),
                           "proprio": np.zeros((2, 4), np.float32)},
           "language_instruction": np.array([b"a", b"b"]),
           "action": np.array([[2, 3, 6, 6], [1, 1, 1, 1]], np.int32),
           "action_pad_mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)}
  out = convert(batch)
  np.testing.assert_array_equal(out["masks"]["action"][:, 0], [[1, 1, 0, 0], [1, 1, 1, 1]])
  assert out["inputs"]["images"]["image_primary"].shape == (2, 1, 56, 56, 3)
  np.testing.assert_array_equal(out["inputs"]["lang"], encoder.embed([b"a", b"b"]))
  assert not np.array_equal(out["inputs"]["lang"][0], out["inputs"]["lang"][1])


def _low_config(lang_for_low, source="labels"):
  config = policy_defaults.default_config("tiny")
  config.role, config.lang_for_low = "low", lang_for_low
  config.data.labels = {"z0": {"dir": "unused"}}
  config.condition.key, config.condition.source = "z0", source
  config.model = policy_defaults.model("tiny", proprio_dim=4, condition_dim=LATENT_DIM)
  return config


@pytest.mark.parametrize("lang_for_low", [False, True])
def test_low_level_reads_the_instruction_only_with_lang_for_low(lang_for_low):
  """Item 3: pi^l(o, skill) by default, in training (loss) and at test time (PolicyNetwork)."""
  config = _low_config(lang_for_low)
  cfg = networks.model_config(config)
  assert cfg.use_lang == lang_for_low
  module = baku.BakuPolicy(cfg)
  params = module.init(jax.random.key(0), networks.example_inputs(cfg, (56, 56)))["params"]
  noise = np.random.default_rng(1)  # non-zero FiLM, so language could act through it too
  params = jax.tree.map(lambda x: x + 0.3 * noise.normal(size=x.shape).astype(np.float32), params)
  encoder = CachedEncoder(make_encoder("hash"))
  convert = trainer.BatchConverter(config, encoder)
  losses, predictions = [], []
  network = policies.PolicyNetwork(module, params, image_size=(56, 56), encoder=encoder)
  for instruction in INSTRUCTIONS:
    raw = _raw_batch(instructions=[instruction] * 2)
    batch = convert(raw)
    assert ("lang" in batch["inputs"]) == lang_for_low
    losses.append(trainer.policy_loss(params, batch, jax.random.key(0), module=module,
                                      head_cfgs=cfg.heads, train=False)[0])
    predictions.append(network.predict(raw["observation"], [instruction] * 2,
                                       condition=raw["z0"])["action"])
  if lang_for_low:
    assert abs(float(losses[0]) - float(losses[1])) > 1e-6
    assert np.abs(predictions[0] - predictions[1]).max() > 1e-5
  else:
    np.testing.assert_array_equal(losses[0], losses[1])
    np.testing.assert_array_equal(predictions[0], predictions[1])
  # pi^h fine-tuning source: the batch carries the instruction for pi^h, whatever pi^l reads.
  assert "lang" in trainer.BatchConverter(_low_config(lang_for_low, "high_policy"),
                                          encoder)(_raw_batch())["inputs"]


@pytest.fixture(scope="module")
def trained_levels(babyai_data, tmp_path_factory):
  """pi^h pretrained on latent labels, then pi^l fine-tuned with pi^h frozen."""
  dataset_dir, labels_dir = babyai_data
  root = str(tmp_path_factory.mktemp("levels"))
  labels = {"z0": {"dir": labels_dir}}
  high = tiny_config(dataset_dir, role="high", **{"data.labels": labels},
                     heads={"skill": {"kind": "latent", "dim": LATENT_DIM, "target": "z0"}})
  high_dir = os.path.join(root, "high")
  trainer.train_and_evaluate(high, high_dir)
  low = tiny_config(dataset_dir, role="low", init_from=None,
                    model=policy_defaults.model("tiny", proprio_dim=4, condition_dim=LATENT_DIM),
                    **{"condition.key": "z0", "condition.source": "high_policy",
                       "condition.high_workdir": high_dir, "data.ignore_action": 6})
  low_dir = os.path.join(root, "low")
  metrics = trainer.train_and_evaluate(low, low_dir)
  return high_dir, low_dir, low, metrics


class _RecordingModule:
  """A module whose `apply` records the inputs it is given (the condition pi^l is fed)."""

  def __init__(self, module):
    self.module, self.inputs = module, []

  def apply(self, variables, inputs, **kwargs):
    self.inputs.append(inputs)
    return self.module.apply(variables, inputs, **kwargs)


def _fine_tuning_condition(low_config, low_dir, high, raw, encoder):
  """[N, Cz]: the condition the fine-tuning loss feeds pi^l for the raw batch."""
  low_module, low_params, _ = networks.load_policy(low_dir)
  recorder = _RecordingModule(low_module)
  batch = trainer.BatchConverter(low_config, encoder)(raw)
  trainer.policy_loss(low_params, batch, jax.random.key(0), module=recorder,
                      head_cfgs=low_module.config.heads, high=high, train=False)
  (inputs,) = recorder.inputs
  return np.asarray(inputs["condition"])[:, 0]


def test_fine_tuning_condition_is_the_frozen_high_policys_prediction(trained_levels):
  """Item 5a: the condition is pi^h's (offset-0) prediction, it moves with pi^h's parameters, and
  pi^h's parameters are no part of the fine-tuned TrainState."""
  high_dir, low_dir, low_config, metrics = trained_levels
  assert "action/accuracy" in metrics
  high_module, high_params, _ = networks.load_policy(high_dir)
  encoder = CachedEncoder(make_encoder("hash"))
  raw = _raw_batch(n=3)
  condition = _fine_tuning_condition(low_config, low_dir, (high_module, high_params, "skill"),
                                     raw, encoder)
  high_net = policies.PolicyNetwork(high_module, high_params, image_size=(56, 56),
                                    encoder=encoder, heads=("skill",))
  predicted = high_net.predict(raw["observation"], list(INSTRUCTIONS) + [INSTRUCTIONS[0]])
  np.testing.assert_allclose(condition, predicted["skill"][:, 0], rtol=1e-5, atol=1e-5)
  assert np.abs(predicted["skill"][:, 1] - predicted["skill"][:, 0]).max() > 1e-4  # not trivial

  noise = np.random.default_rng(0)
  perturbed = jax.tree.map(lambda x: x + 0.1 * noise.normal(size=x.shape).astype(np.float32),
                           high_params)
  moved = _fine_tuning_condition(low_config, low_dir, (high_module, perturbed, "skill"), raw,
                                 encoder)
  assert np.abs(moved - condition).max() > 1e-3

  # The stored TrainState restores strictly (missing or unexpected keys, shapes are errors)
  # against pi^l's params and the optimizer state of pi^l's params alone.
  directory = os.path.join(low_dir, "checkpoints")
  low_module, _, stored = networks.load_policy(low_dir)
  assert stored["model_config"]["use_lang"] is False
  tx = training.make_optimizer(low_config)
  init = lambda rng: low_module.init(rng, networks.example_inputs(low_module.config, (56, 56)))[
      "params"]
  checkpointer = training.Checkpointer(directory, stored)
  state = checkpointer.restore(training.abstract_train_state(init, tx, training.make_mesh()))
  checkpointer.close()
  assert set(state.params) == set(jax.eval_shape(init, jax.random.key(0)))
  assert "head_skill" not in state.params and "lang_mlp" not in state.params


def _spy_conditions(network):
  """Replaces network.predict by a wrapper recording the `condition` argument."""
  seen, predict = [], network.predict

  def spy(obs, instructions, condition=None):
    seen.append(np.array(condition))
    return predict(obs, instructions, condition=condition)

  network.predict = spy
  return seen


@pytest.mark.parametrize("high_every", [1, 2])
def test_fine_tuning_and_test_time_condition_pi_l_on_the_same_skill(trained_levels, high_every):
  """Item 4: for the same observations and instruction, the skill HierarchicalPolicy gives pi^l
  at step t equals the fine-tuning condition of the observation of its last refresh."""
  high_dir, low_dir, low_config, _ = trained_levels
  high_module, high_params, _ = networks.load_policy(high_dir)
  encoder = CachedEncoder(make_encoder("hash"))
  steps = 4
  raw = _raw_batch(n=steps, seed=3, instructions=[INSTRUCTIONS[0]] * steps)
  expected = _fine_tuning_condition(low_config, low_dir, (high_module, high_params, "skill"),
                                    raw, encoder)
  high = policies.PolicyNetwork.load(high_dir, heads=("skill",), encoder=encoder)
  low = policies.PolicyNetwork.load(low_dir, heads=("action",), encoder=high.encoder)
  seen = _spy_conditions(low)
  policy = policies.HierarchicalPolicy(high, low, high_every=high_every)
  policy.reset(1)
  for t in range(steps):
    obs = {k: v[t:t + 1] for k, v in raw["observation"].items()}
    policy.act(obs, [INSTRUCTIONS[0]], np.array([t == 0]))
  for t in range(steps):
    refreshed_at = t - t % high_every
    np.testing.assert_allclose(seen[t][0], expected[refreshed_at], rtol=1e-5, atol=1e-5,
                               err_msg=f"step {t}")


def test_hierarchical_policy_acts_in_the_simulator(trained_levels):
  from hilam_jax.evaluation import babyai as babyai_eval
  high_dir, low_dir, _, _ = trained_levels
  high = policies.PolicyNetwork.load(high_dir, heads=("skill",))
  low = policies.PolicyNetwork.load(low_dir, heads=("action",), encoder=high.encoder)
  assert not low.config.use_lang  # the stored run config tells the test-time network
  policy = policies.HierarchicalPolicy(high, low, high_every=2)
  actions = []

  class Recording:
    def reset(self, num_envs):
      actions.append([])
      policy.reset(num_envs)

    def act(self, obs, instructions, first):
      action = policy.act(obs, instructions, first)
      actions[-1].append(np.array(action))
      return action

  results = [babyai_eval.evaluate_babyai(Recording(), "BabyAI-PutNextLocal-v0", num_episodes=3,
                                         num_envs=2, max_steps=6) for _ in range(2)]
  assert results[0].num_episodes == 3 and len(actions[0]) >= 6
  # reset() clears every per-env state (held skills, action buffers): the same seeds give the
  # same actions and episodes again.
  np.testing.assert_array_equal(np.stack(actions[0]), np.stack(actions[1]))
  assert results[0].episodes == results[1].episodes
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


def test_body_lr_multiplier_zero_freezes_the_pretrained_body(babyai_data, tmp_path):
  """Fine-tuning with body_lr_multiplier=0 changes only the new action head (the pretrained
  encoder, trunk and embeddings stay bit-equal); 0.5 moves the body too."""
  dataset_dir, labels_dir = babyai_data
  pre = tiny_config(dataset_dir, variant="flat_latent",
                    **{"data.labels": {"z0": {"dir": labels_dir}}},
                    heads={"latent": {"kind": "latent", "dim": LATENT_DIM, "target": "z0"}},
                    model=policy_defaults.model("tiny", proprio_dim=4))
  pre_dir = str(tmp_path / "pre")
  trainer.train_and_evaluate(pre, pre_dir)
  _, pretrained, _ = networks.load_policy(pre_dir)
  bodies = {}
  for multiplier in (0.0, 0.5):
    cfg = tiny_config(dataset_dir, init_from=pre_dir, body_lr_multiplier=multiplier,
                      model=policy_defaults.model("tiny", proprio_dim=4))
    out = str(tmp_path / f"ft_{multiplier}")
    trainer.train_and_evaluate(cfg, out)
    _, params, _ = networks.load_policy(out)
    body = {k: v for k, v in params.items() if not k.startswith("head_")}
    bodies[multiplier] = body
    assert "head_action" in params and "head_latent" not in params
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), bodies[0.0],
                      {k: pretrained[k] for k in bodies[0.0]})
  assert all(jax.tree.leaves(same))
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                       bodies[0.5], {k: pretrained[k] for k in bodies[0.5]})
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_a_run_stopped_early_is_the_first_steps_of_the_longer_run(babyai_data, tmp_path):
  """num_steps=3 with schedule_steps=6 trains the first 3 steps of the 6-step run: the same
  losses, and extended to 6 steps (num_steps may change on resume) it ends where the 6-step run
  ends. Without schedule_steps the 3-step run's cosine decays sooner (other parameters)."""
  from hilam_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  from hilam_jax.training import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  dataset_dir, _ = babyai_data

  def run(name, **kwargs):
    cfg = tiny_config(dataset_dir, log_every=1, warmup_steps=1, **kwargs)
    workdir = str(tmp_path / name)
    trainer.train_and_evaluate(cfg, workdir)
    losses = dict(metrics_lib.read_scalars(os.path.join(workdir, "tensorboard"), "train/loss"))
    params = checkpoint.restore_params(os.path.join(workdir, "checkpoints"))
    return losses, jax.tree.leaves(jax.device_get(params))

  long_losses, long_params = run("long", num_steps=6, checkpoint_every=6)
  short_losses, short_params = run("short", num_steps=3, schedule_steps=6, checkpoint_every=3)
  _, own_params = run("own", num_steps=3, checkpoint_every=3)
  assert sorted(short_losses) == [1, 2, 3]
  for step, loss in short_losses.items():
    np.testing.assert_allclose(loss, long_losses[step], rtol=1e-6)
  assert max(float(np.max(np.abs(a - b)))
             for a, b in zip(short_params, own_params, strict=True)) > 1e-6
  # Extended: the last 3 steps of the 6-step run (the policy resumes to ~1e-5, see
  # test_exact_resume.test_policy_resumes_exactly).
  extended_losses, extended_params = run("short", num_steps=6, schedule_steps=6,
                                         checkpoint_every=3)
  for step in (4, 5, 6):
    np.testing.assert_allclose(extended_losses[step], long_losses[step], rtol=1e-5)
  for a, b in zip(long_params, extended_params, strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="schedule_steps=2 is shorter than num_steps=3"):
    run("bad", num_steps=3, schedule_steps=2)


def test_body_lr_multiplier_must_not_be_negative():
  config = policy_defaults.default_config("tiny")
  config.body_lr_multiplier = -0.1
  with pytest.raises(ValueError, match="body_lr_multiplier"):
    trainer.body_update_scale(config)


def test_every_camera_of_a_libero_dataset_reaches_the_network(tmp_path):
  """Issue 13 item 6: data.cameras = (agent view, wrist) trains on LIBERO's two cameras and the
  test-time network (cameras from the checkpoint) needs and uses both."""
  from data_pipeline import libero_schema
  dataset_dir = libero_schema.write_tiny_libero_dataset(str(tmp_path / "rlds"),
                                                        num_episodes=4)
  cameras = ("image_primary", "image_wrist")
  config = tiny_config(dataset_dir, **{"data.val": (), "data.image_size": (32, 32),
                                       "data.cameras": cameras, "data.ignore_action": None})
  config.heads = {"action": {"kind": "continuous", "dim": 7, "target": "action"}}
  config.model = policy_defaults.model("tiny", proprio_dim=8)
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(config, workdir)
  network = policies.PolicyNetwork.load(workdir)
  assert network.cameras == cameras
  assert {f"camera_embedding_{c}" for c in cameras} <= set(network.params)
  rng = np.random.default_rng(0)
  obs = {c: rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8) for c in cameras}
  obs["proprio"] = rng.normal(size=(2, 8)).astype(np.float32)
  instructions = ["put the bowl on the plate"] * 2
  before = network.predict(obs, instructions)["action"]
  wrist_changed = dict(obs, image_wrist=255 - obs["image_wrist"])
  assert np.abs(network.predict(wrist_changed, instructions)["action"] - before).max() > 1e-6
  with pytest.raises(ValueError, match="image_wrist"):
    network.predict({k: v for k, v in obs.items() if k != "image_wrist"}, instructions)
  # A camera the dataset lacks is named at the first batch; a malformed list at the start.
  config.data.cameras = ("image_primary", "image_left")
  with pytest.raises(ValueError, match="image_left"):
    trainer.train_and_evaluate(config, str(tmp_path / "bad"))
  with pytest.raises(ValueError, match="data.cameras"):
    networks.cameras({"data": {"cameras": ["wrist"]}})


# ----------------------------------------------------------------------------- z-scored targets


def test_zscored_latent_head_predicts_in_label_units_and_scores_in_z_units():
  import jax.numpy as jnp
  from hilam_jax.policy import heads as heads_lib
  mean, std = (0.5, -1.0, 2.0), (0.1, 0.03, 2.5)
  plain = heads_lib.HeadConfig("latent", "latent", dim=3, chunk=2, hidden=(8,))
  scaled = heads_lib.HeadConfig("latent", "latent", dim=3, chunk=2, hidden=(8,),
                                target_mean=mean, target_std=std)
  features = jax.random.normal(jax.random.key(0), (4, 1, 6))
  params = heads_lib.PolicyHead(plain).init(jax.random.key(1), features)
  out_plain = heads_lib.PolicyHead(plain).apply(params, features)
  out_scaled = heads_lib.PolicyHead(scaled).apply(params, features)  # the same parameters
  np.testing.assert_allclose(out_scaled, np.asarray(mean) + np.asarray(std) * out_plain,
                             rtol=1e-6, atol=1e-6)
  rng = np.random.default_rng(0)
  target = jnp.asarray(mean + std * rng.normal(size=(4, 1, 2, 3)), jnp.float32)
  mask = jnp.asarray(rng.random((4, 1, 2)) > 0.3)
  z = lambda x: (x - jnp.asarray(mean)) / jnp.asarray(std)

  def losses(pred):
    loss_s, metrics_s = heads_lib.head_loss(scaled, pred, target, mask)
    loss_p, _ = heads_lib.head_loss(plain, z(pred), z(target), mask)
    return loss_s, loss_p, metrics_s

  loss_s, loss_p, metrics_s = losses(out_scaled)
  np.testing.assert_allclose(loss_s, loss_p, rtol=1e-5)
  # the reported mse / r2 stay in the labels' own units
  _, raw = heads_lib.head_loss(plain, out_scaled, target, mask)
  np.testing.assert_allclose(metrics_s["mse"], raw["mse"], rtol=1e-6)
  np.testing.assert_allclose(metrics_s["r2"], raw["r2"], rtol=1e-5)
  assert not np.isclose(loss_s, raw["loss"], rtol=1e-2)  # small stds weigh more
  g_s = jax.grad(lambda p: losses(p)[0])(out_scaled)
  g_p = jax.grad(lambda p: losses(p)[1])(out_scaled)
  np.testing.assert_allclose(g_s, g_p, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="categorical", target_mean=(0.0,) * 3, target_std=(1.0,) * 3), "latent heads"),
    (dict(kind="latent", target_mean=(0.0,) * 2, target_std=(1.0,) * 2), "3 values"),
    (dict(kind="latent", target_mean=(0.0,) * 3, target_std=()), "3 values"),
    (dict(kind="latent", target_mean=(0.0,) * 3, target_std=(1.0, 0.0, 1.0)), "> 0"),
])
def test_head_target_statistics_are_checked(kwargs, match):
  from hilam_jax.policy import heads as heads_lib
  with pytest.raises(ValueError, match=match):
    heads_lib.HeadConfig("h", dim=3, **kwargs)


def _zscore_config(dataset_dir, labels_dir, **overrides):
  return tiny_config(dataset_dir, role="high", **{"data.labels": {"z0": {"dir": labels_dir}}},
                     heads={"skill": {"kind": "latent", "dim": LATENT_DIM, "target": "z0",
                                      "normalize": "zscore"}}, **overrides)


def test_target_statistics_are_those_of_the_training_episodes(babyai_data):
  dataset_dir, labels_dir = babyai_data
  config = _zscore_config(dataset_dir, labels_dir)
  labels = labeling.read_labels(labels_dir)
  from data_pipeline import dataset as dp
  train_ids = dp.list_episode_ids({"dataset_dir": dataset_dir, "split": "train"})
  assert set(train_ids) < set(labels)  # the labels also cover the validation episodes
  for ids in (None, train_ids[:3]):
    mean, std = trainer.target_statistics(config, ids)["skill"]
    frames = np.concatenate([labels[i] for i in (ids or train_ids)]).astype(np.float64)
    np.testing.assert_allclose(mean, frames.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, frames.std(0), rtol=1e-12)
  everything = np.concatenate(list(labels.values())).astype(np.float64)
  assert not np.allclose(trainer.target_statistics(config, None)["skill"][0], everything.mean(0))
  assert trainer.target_statistics(tiny_config(dataset_dir), None) == {}


def test_normalize_is_only_for_latent_heads(babyai_data, tmp_path):
  dataset_dir, _ = babyai_data
  config = tiny_config(dataset_dir, heads={"action": {"kind": "categorical", "dim": 7,
                                                      "target": "action", "normalize": "zscore"}})
  with pytest.raises(ValueError, match="for latent heads"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  config.heads["action"]["normalize"] = "minmax"
  with pytest.raises(ValueError, match="not in"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_zscored_run_stores_its_statistics_and_resumes(babyai_data, tmp_path):
  dataset_dir, labels_dir = babyai_data
  config = _zscore_config(dataset_dir, labels_dir)
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(config, workdir)
  module, params, _ = networks.load_policy(workdir)
  head = module.config.head_configs["skill"]
  assert (head.target_mean, head.target_std) == trainer.target_statistics(config, None)["skill"]
  # the test-time network predicts in the labels' units: mean + std * out
  inputs = networks.example_inputs(module.config, tuple(config.data.image_size))
  pred = networks.high_level_skill(module, params, inputs, "skill")
  plain = baku.BakuPolicy(baku.BakuConfig.from_dict(
      {**module.config.to_dict(), "heads": [dict(head.to_dict(), target_mean=(), target_std=())]}))
  raw = networks.high_level_skill(plain, params, inputs, "skill")
  np.testing.assert_allclose(pred, np.asarray(head.target_mean) +
                             np.asarray(head.target_std) * raw, rtol=1e-5, atol=1e-6)
  config.num_steps = 6  # the same statistics again: the stored config matches, the run resumes
  trainer.train_and_evaluate(config, workdir)
  assert max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
             if d.isdigit()) == 6


def test_an_early_stopped_run_keeps_its_best_validation_step(babyai_data, tmp_path):
  """early_stopping: the run stops `patience` steps after its best validation value, its one
  checkpoint is that step's (what load_policy and fine-tuning read) and its final metrics are
  that step's evaluation. Mode "max" on the validation loss, which falls as the policy learns,
  makes the first evaluation the best and the stop certain."""
  from hilam_jax.training import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  dataset_dir, _ = babyai_data
  cfg = tiny_config(dataset_dir, num_steps=10, eval_every=2, checkpoint_every=3,
                    **{"early_stopping.metric": "loss", "early_stopping.mode": "max",
                       "early_stopping.patience": 4})
  workdir = str(tmp_path / "run")
  final = trainer.train_and_evaluate(cfg, workdir)
  curve = metrics_lib.read_scalars(os.path.join(workdir, "tensorboard"), "eval/loss")
  with open(os.path.join(workdir, "checkpoints", "early_stopping.json")) as f:
    rule = json.load(f)
  # Evaluations at 2, 4, 6; the final one (of the kept state) at the kept step again.
  trained, best = metrics_lib.early_stop_point(curve, higher_is_better=True, patience=4)
  assert (rule["stopped_at"], rule["best_step"]) == (trained, best) and trained < 10
  assert [s for s, _ in curve] == list(range(2, trained + 1, 2))
  np.testing.assert_allclose(final["loss"], rule["best_value"], rtol=1e-6)
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                if d.isdigit()) == [best]
  _, params, config = networks.load_policy(workdir)
  assert config["early_stopping"]["metric"] == "loss" and "head_action" in params
  with pytest.raises(ValueError, match="early_stopping.metric 'action/r2' is not a validation"):
    trainer.train_and_evaluate(tiny_config(dataset_dir, **{"early_stopping.metric": "action/r2"}),
                               str(tmp_path / "refused"))
  assert not os.path.exists(tmp_path / "refused")
