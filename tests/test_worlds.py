"""World adapters (hilam_jax/worlds): each world's facts, the registry, and the main job's
policy configs, which the adapters must not change for BabyAI (tests/data/planner_jobs_babyai.json
was captured from the code before them, by `tests/planner_jobs.py`)."""
import json
import os
import re

import numpy as np
import pytest

from experiments.configs import main as main_config
from hilam_jax import worlds
from tests import planner_jobs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "data", "planner_jobs_babyai.json")

# name -> (action kind, action dim, ignored action, proprio dim, cameras, has a generator)
FACTS = {
    "babyai": ("categorical", 7, 6, 4, ("image_primary",), True),
    "metaworld": ("continuous", 4, None, 4, ("image_primary",), True),
    "libero": ("continuous", 7, None, 8, ("image_primary", "image_wrist"), False),
}


@pytest.mark.parametrize("name", sorted(FACTS))
def test_each_world_states_its_facts(name):
  world = worlds.get_world(name)
  kind, dim, ignore, proprio, cameras, generator = FACTS[name]
  assert world.name == name
  assert (world.action.kind, world.action.dim, world.action.ignore) == (kind, dim, ignore)
  assert (world.proprio_dim, world.cameras, world.has_generator) == (proprio, cameras, generator)
  assert world.instruction_key == "language_instruction"
  assert world.observation_keys() == cameras + ("proprio",)
  assert world.action.heads() == {"action": {"kind": kind, "dim": dim, "target": "action"}}
  if kind == "continuous":
    assert (world.action.low, world.action.high) == (-1.0, 1.0)  # the tanh head's range


def test_the_registry_lists_every_world_module_and_refuses_an_unknown_name():
  assert set(worlds.WORLDS) == set(FACTS)
  modules = {f[:-3] for f in os.listdir(os.path.join(REPO, "hilam_jax", "worlds"))
             if f.endswith(".py") and f not in ("__init__.py", "base.py")}
  assert modules == {m.rsplit(".", 1)[1] for m in worlds.WORLDS.values()}
  with pytest.raises(ValueError, match="unknown world 'procgen'; worlds: babyai, libero, "
                                       "metaworld"):
    worlds.get_world("procgen")


def test_the_babyai_facts_are_the_simulator_constants():
  from data_pipeline.sim import babyai as sim  # pylint: disable=g-import-not-at-top
  world = worlds.get_world("babyai")
  assert world.action.dim == len(sim.ACTION_NAMES)
  assert world.action.ignore == sim.DONE_ACTION
  assert world.proprio_dim == sim.NUM_DIRECTIONS == len(sim.proprio(0))


def test_the_experiment_holds_no_world_constant():
  with open(os.path.join(REPO, "hilam_jax", "experiment.py"), encoding="utf-8") as f:
    source = f.read()
  for word in ("babyai", "minigrid", "metaworld", "meta-world", "libero"):
    assert word not in source.lower(), word
  assert "ignore_action = 6" not in source and "!= 6" not in source
  assert not re.search(r"proprio_dim=\d", source)
  assert not re.search(r'"dim": \d', source)  # no action head of its own


def _without_world(job: dict) -> dict:
  """An evaluation job's kwargs as before the adapters (they add the world's name)."""
  if job["fn"] != "evaluate_job":
    return job
  kwargs = dict(job["kwargs"])
  assert kwargs.pop("world") == "babyai"
  return dict(job, kwargs=kwargs)


NO_EARLY_STOPPING = {"metric": "", "mode": "max", "patience": 1000}


def _as_before_sharing(name: str, job: dict, early_fractions: tuple[float, ...] = ()) -> dict:
  """A job as before four intended changes, two knobs added later at their neutral values
  (`schedule_steps` None, `data.global_order` False) in every policy config, early stopping
  (on for the fine-tunes at `early_fractions`, off in every other run), and a flat z̄^2
  fine-tuning job fine-tuned from π^h's pretraining (before: its own flat_s2 run)."""
  job = json.loads(json.dumps(job))
  if job["fn"] == "train_policy_job":
    assert job["kwargs"]["config"].pop("schedule_steps") is None
    assert job["kwargs"]["config"]["data"].pop("global_order") is False
    fraction = job["kwargs"]["config"]["data"]["episode_fraction"]
    early = name.startswith("finetune/") and fraction in early_fractions
    assert job["kwargs"]["config"].pop("early_stopping") == (
        {"metric": "action/accuracy", "mode": "max", "patience": 1000} if early
        else NO_EARLY_STOPPING), name
  if not name.startswith("finetune/flat_z2@"):
    return job
  seed = name.rsplit("/s", 1)[1]
  assert job["deps"] == [f"pretrain/s{seed}/high_s2"]
  job["deps"] = [f"pretrain/s{seed}/flat_s2"]
  config = job["kwargs"]["config"]
  assert config["init_from"] == f"/w/policies/pretrain/s{seed}/high_s2"
  config["init_from"] = f"/w/policies/pretrain/s{seed}/flat_s2"
  return job


def _dropped_from_the_default(name: str) -> bool:
  """Jobs the default no longer runs: the z̄^1 ablation (now in `large`) and HiLAM without video
  pretraining with all the demos (it runs at 10% only)."""
  return "hilam_s1_z0@" in name or "/high_s1" in name or "/low_s1_z0" in name or (
      "hilam_no_pretrain@1/" in name or "/demos_100pct_" in name)


def test_the_planner_builds_the_babyai_jobs_of_before_the_adapters():
  """Every job of the smoke and default main jobs: the same policy configs (field order too),
  dependencies and evaluation settings as the code before the adapters built, but for intended
  changes: flat BAKU -> z̄^2 is fine-tuned from π^h's pretraining run (the same run), so the
  graph has no `flat_s2` pretraining; early stopping of the fine-tunes at its fractions; the
  default without the z̄^1 ablation and HiLAM without video pretraining at 100%."""
  with open(FIXTURE) as f:
    before = json.load(f)
  for variant in ("smoke", "default"):
    config = main_config.get_config(variant)
    config.extra_seeds.seeds = ()  # the fixture predates them (test_report covers their jobs)
    early = tuple(config.policy.early_stopping.fractions)
    assert early == ((1.0,) if variant == "smoke" else (0.1,))
    now = {n: _as_before_sharing(n, _without_world(j), early)
           for n, j in planner_jobs.planner_jobs(variant, config).items()}
    expected = {n: j for n, j in before[variant].items() if "/flat_s2" not in n}
    assert len(expected) < len(before[variant])
    if variant == "default":
      dropped = {n for n in expected if _dropped_from_the_default(n)}
      assert len(dropped) == 3 * 4 + 3 * 4  # per seed: 2 pretrainings, fine-tune, evaluation
      expected = {n: j for n, j in expected.items() if n not in dropped}
    assert set(now) == set(expected)
    for name, job in now.items():
      if variant == "smoke":
        assert job == expected[name], name
        assert json.dumps(job) == json.dumps(expected[name]), name  # field order
      else:
        assert planner_jobs.digest(job) == expected[name], name
  assert len(now) > 50  # every method, fraction and seed of the default, HiLAM w/o video at 10%


def _metaworld_raw_episode(num_steps: int = 5) -> dict:
  """A raw episode with the keys of the Meta-World generator's RLDS schema (images encoded)."""
  return {
      "steps": {
          "observation": {"image": [b"jpeg"] * num_steps,
                          "state": np.zeros((num_steps, 39), np.float32)},
          "action": np.zeros((num_steps, 4), np.float32),
          "reward": np.zeros(num_steps, np.float32),
          "discount": np.ones(num_steps, np.float32),
          "is_first": np.arange(num_steps) == 0, "is_last": np.arange(num_steps) == num_steps - 1,
          "is_terminal": np.zeros(num_steps, bool),
          "language_instruction": ["pick and place the puck"] * num_steps,
      },
      "episode_metadata": {"task": "pick-place-v3", "seed": np.int64(0),
                           "source": "pick-place-v3/seed=0",
                           "phase_start_steps": np.array([0, 2], np.int32),
                           "phase_names": ["reach", "grasp"]},
  }


def _libero_raw_episode(num_steps: int = 5) -> dict:
  """A raw episode with the keys of LIBERO's released RLDS schema (images encoded)."""
  return {
      "steps": {
          "observation": {"image": [b"jpeg"] * num_steps, "wrist_image": [b"jpeg"] * num_steps,
                          "state": np.zeros((num_steps, 8), np.float32),
                          "joint_state": np.zeros((num_steps, 7), np.float32)},
          "action": np.zeros((num_steps, 7), np.float32),
          "reward": np.zeros(num_steps, np.float32),
          "discount": np.ones(num_steps, np.float32),
          "is_first": np.arange(num_steps) == 0, "is_last": np.arange(num_steps) == num_steps - 1,
          "is_terminal": np.arange(num_steps) == num_steps - 1,
          "language_instruction": ["put the bowl on the plate"] * num_steps,
      },
      "episode_metadata": {"file_path": "demo.hdf5"},
  }


@pytest.mark.parametrize("name, dataset, raw", [
    ("metaworld", "metaworld_experts", _metaworld_raw_episode),
    ("libero", "libero_spatial_no_noops", _libero_raw_episode)])
def test_a_continuous_world_builds_policy_configs_its_datasets_can_feed(name, dataset, raw):
  """The fine-tuning runs get the world's continuous head (no ignored action), and the cameras
  and proprio size the policies read are those of the world's standardized episodes."""
  from data_pipeline import registry  # pylint: disable=g-import-not-at-top
  from experiments.configs import main as main_config  # pylint: disable=g-import-not-at-top
  world = worlds.get_world(name)
  traj = registry.get_standardize_fn(dataset)(raw())
  assert set(world.cameras) <= set(traj["observation"])
  assert traj["observation"][world.proprio_key].shape[-1] == world.proprio_dim
  assert traj["action"].shape[-1] == world.action.dim
  assert world.instruction_key in traj

  config = main_config.get_config("smoke")
  config.world = name
  config.eval.actions = "argmax"
  jobs = planner_jobs.planner_jobs("smoke", config)
  finetunes = [j["kwargs"]["config"] for n, j in jobs.items() if n.startswith("finetune/")]
  assert len(finetunes) == len(config.methods)
  for cfg in finetunes:
    assert cfg["heads"]["action"] == {"kind": "continuous", "dim": world.action.dim,
                                      "target": "action"}
    assert cfg["data"]["ignore_action"] is None
  for n, job in jobs.items():
    if n.startswith(("pretrain/", "finetune/")):
      cfg = job["kwargs"]["config"]
      assert tuple(cfg["data"]["cameras"]) == world.cameras, n
      assert cfg["model"]["proprio_dim"] == world.proprio_dim, n
    else:
      assert job["kwargs"]["world"] == name, n

  config.eval.actions = "sample"  # sampling needs a categorical head
  with pytest.raises(ValueError, match="eval.actions='sample' needs categorical actions"):
    planner_jobs.planner_jobs("smoke", config)


def test_metaworld_evaluates_the_demos_tasks_with_their_camera(tmp_path):
  world = worlds.get_world("metaworld")
  demos = tmp_path / "metaworld_experts" / "1.0.0"
  demos.mkdir(parents=True)
  (demos / "generation_info.json").write_text(json.dumps({"config": {
      "tasks": ["reach-v3", "push-v3"], "image_size": 64, "camera": "corner2",
      "fast_render": True}}))
  assert world.check_settings(str(demos), "") == {
      "tasks": ["reach-v3", "push-v3"], "image_size": 64, "camera": "corner2"}
  assert world.check_settings(str(demos), "push-v3")["tasks"] == ["push-v3"]
  with pytest.raises(ValueError, match=r"\['door-open-v3'\] are not in the demos"):
    world.check_settings(str(demos), "push-v3,door-open-v3")


def test_libero_names_existing_datasets_and_evaluates_their_suite(tmp_path):
  world = worlds.get_world("libero")
  dataset = tmp_path / "libero_spatial_no_noops" / "1.0.0"
  dataset.mkdir(parents=True)
  assert world.generate({"dataset_dir": str(dataset)}, str(tmp_path / "data"))["dataset_dir"] \
      == str(dataset)
  with pytest.raises(ValueError, match="LIBERO has no generator"):
    world.generate({"num_train_episodes": 10}, str(tmp_path / "data"))
  with pytest.raises(ValueError, match="not a LIBERO dataset"):
    world.generate({"dataset_dir": str(tmp_path / "bridge" / "1.0.0")}, str(tmp_path))
  assert world.check_settings(str(dataset), "libero_spatial") == {"suite": "libero_spatial"}
  with pytest.raises(ValueError, match="fine-tuned on 'libero_spatial_no_noops'"):
    world.check_settings(str(dataset), "libero_goal")
  with pytest.raises(ValueError, match="expected a suite"):
    world.check_settings(str(dataset), "BabyAI-UnlockLocal-v0")
