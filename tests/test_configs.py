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
  """The main job trains every policy in the regime `benchmark_regime` measured (docs/log/2026-11-29-unlocklocal-regime.md)."""
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


def test_every_skill_study_setting_builds_a_valid_model_config():
  """Each named setting of the skill study overrides fields that exist and gives a skill model
  config the model accepts (a typo or an invalid combination fails here, not hours into a study)."""
  from experiments import skill_study  # pylint: disable=g-import-not-at-top
  from hilam_jax.skill import model as skill_model  # pylint: disable=g-import-not-at-top
  for name in skill_study.SETTINGS:
    for variant in ("babyai", "metaworld"):
      config = skill_study.setting_config(name, 0, "/nonexistent", variant, 10)
      model = skill_model.SkillModelConfig.from_dict(dict(config.model))
      # A non-causal model must not train on the next-latent (or the FDM) loss.
      if not model.causal:
        assert config.lambda_latent == 0 and config.lambda_rec == 0, name


TRAINER_FIELDS = ("seed", "batch_size", "compute_dtype", "num_steps", "learning_rate",
                  "warmup_steps", "weight_decay", "grad_clip", "log_every", "eval_every",
                  "num_eval_batches", "checkpoint_every")
# The trainer hyper-parameters of the three training configs, as they were before the block was
# shared (hilam_jax.training.hyperparams): (config, variant) -> values of TRAINER_FIELDS.
PINNED_TRAINER_FIELDS = {
    ("train_lam", "babyai"): (0, 32, "float32", 2000, 1e-3, 200, 1e-4, 1.0, 50, 500, 20, 500),
    ("train_lam", "metaworld"): (0, 32, "float32", 2000, 1e-3, 200, 1e-4, 1.0, 50, 500, 20, 500),
    ("train_lam", "tiny"): (0, 8, "float32", 6, 1e-3, 2, 1e-4, 1.0, 2, 4, 2, 4),
    ("train_skill_model", "babyai"): (0, 32, "float32", 2000, 1e-3, 100, 1e-4, 1.0, 50, 500, 10,
                                      500),
    ("train_skill_model", "metaworld"): (0, 32, "float32", 800, 1e-3, 100, 1e-4, 1.0, 50, 500, 10,
                                         500),
    ("train_skill_model", "tiny"): (0, 4, "float32", 4, 1e-3, 1, 1e-4, 1.0, 2, 4, 1, 2),
    ("policy", "baku"): (0, 64, "float32", 2000, 3e-4, 100, 1e-4, 1.0, 50, 1000, 5, 1000),
    ("policy", "flat_latent"): (0, 64, "float32", 2000, 3e-4, 100, 1e-4, 1.0, 50, 1000, 5, 1000),
    ("policy", "high"): (0, 64, "float32", 2000, 3e-4, 100, 1e-4, 1.0, 50, 1000, 5, 1000),
    ("policy", "low"): (0, 64, "float32", 2000, 3e-4, 100, 1e-4, 1.0, 50, 1000, 5, 1000),
    ("policy", "tiny"): (0, 8, "float32", 6, 3e-4, 1, 1e-4, 1.0, 2, 4, 1, 4),
}


@pytest.mark.parametrize("name,variant", sorted(PINNED_TRAINER_FIELDS))
def test_trainer_hyperparameters_are_pinned(name, variant):
  if name == "policy":
    from hilam_jax.policy import config as policy_config  # pylint: disable=g-import-not-at-top
    config = policy_config.default_config(variant)
  else:
    config = importlib.import_module(f"experiments.configs.{name}").get_config(variant)
  got = tuple(config[field] for field in TRAINER_FIELDS)
  assert got == PINNED_TRAINER_FIELDS[(name, variant)]
  assert [type(v) for v in got] == [type(v) for v in PINNED_TRAINER_FIELDS[(name, variant)]]
