"""Every launch config with declared variants builds, and unknown variants are refused by name."""
import importlib

import pytest

CONFIGS = ("benchmark_regime", "main", "train_policy")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_variant_builds(name):
  module = importlib.import_module(f"experiments.configs.{name}")
  for variant in module.VARIANTS:
    config = module.get_config(variant)
    assert config.to_dict()  # a plain, non-empty dict (what run_info writes)
  with pytest.raises(ValueError, match="nope"):
    module.get_config("nope")


def test_main_job_regime_is_the_measured_benchmark_regime():
  """The main job trains every policy in the regime `benchmark_regime` measured (README)."""
  from experiments.configs import benchmark_regime, main
  regime = benchmark_regime.get_config("default")
  config = main.get_config("default")
  assert config.level == regime.demos.level
  for key in ("view", "tile_size", "level"):
    assert config.demos[key] == config.video[key] == regime.demos[key]
  p, r = config.policy, regime.policy
  assert (p.chunk, p.augment, p.learning_rate, p.batch_size, tuple(p.image_size)) == (
      r.chunk, r.data.augment, r.learning_rate, r.batch_size, tuple(r.data.image_size))
  assert config.video.seed != config.demos.seed
  assert config.video.num_train_episodes >= 10 * config.demos.num_train_episodes


def test_main_job_refuses_an_unknown_stop_after_before_writing(tmp_path):
  from experiments.configs import main  # pylint: disable=g-import-not-at-top
  from hilam_jax import experiment  # pylint: disable=g-import-not-at-top
  config = main.get_config("smoke")
  config.stop_after = "policies"
  with pytest.raises(ValueError, match="stop_after='policies'"):
    experiment.run(config, str(tmp_path / "main"))
  assert not (tmp_path / "main").exists()
