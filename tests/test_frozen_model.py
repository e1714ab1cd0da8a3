"""The one factory that chooses the frozen model: routing of 'lam:' / bare / 'uniskill:' specs."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import train_lam as train_lam_config
from hilam_jax import training
from hilam_jax.lam import frozen_lam
from hilam_jax.lam import frozen_models
from hilam_jax.lam import model as lam_model
from hilam_jax.lam import trainer
from hilam_jax.lam.uniskill import convert as uniskill_convert
from hilam_jax.lam.uniskill import depth_anything_convert
from hilam_jax.lam.uniskill.idm import IDMConfig
from experiments import uniskill_torch_reference as reference

FRAME_GAP = 3  # not the tiny config's default (1): proves the checkpoint's config was read


@pytest.fixture(scope="module")
def lam_workdir(tmp_path_factory):
  """A real train_lam workdir (tiny LAM) with checkpoints at steps 1 and 2 (different params)."""
  workdir = str(tmp_path_factory.mktemp("lam"))
  config = train_lam_config.get_config("tiny")
  config.data.frame_gap = FRAME_GAP
  module = lam_model.LatentActionModel(lam_model.LAMConfig.from_dict(dict(config.lam)))
  image_size = tuple(config.data.image_size)

  def init_params(rng):
    frames = jnp.zeros((1, *image_size, 3), jnp.uint8)
    return module.init(rng, frames, frames)["params"]

  # Random params of the right tree (eval_shape: no init compile, which takes ~30 s here).
  abstract = training.abstract_train_state(init_params, training.make_optimizer(config),
                                           training.make_mesh(jax.devices()[:1]))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  ckpt = training.Checkpointer(os.path.join(workdir, "checkpoints"), config)
  for step in (1, 2):
    rng = np.random.default_rng(step)
    params = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(s.dtype), abstract.params)
    ckpt.save(step, zeros.replace(params=params, step=np.int32(step)), force=True)
  ckpt.close()
  return workdir


def _frames(seed, image_size):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (3, *image_size, 3), dtype=np.uint8) for _ in range(2)]


@pytest.mark.parametrize("form", ["lam:{}", "{}"])
def test_lam_specs_load_that_workdirs_latest_checkpoint(lam_workdir, form):
  model = frozen_models.load_frozen_model(form.format(lam_workdir))
  assert isinstance(model, frozen_lam.FrozenLAM)
  assert model.frame_gap == FRAME_GAP and model.image_size == (56, 56)
  frames = _frames(0, model.image_size)
  latest = trainer.load_frozen_lam(lam_workdir)
  np.testing.assert_array_equal(model.encode(*frames), latest.encode(*frames))
  step_1 = trainer.load_frozen_lam(lam_workdir, 1)
  assert not np.allclose(model.encode(*frames), step_1.encode(*frames))  # steps do differ


def test_step_reaches_the_checkpoint(lam_workdir):
  frames = _frames(1, (56, 56))
  model = frozen_models.load_frozen_model(f"lam:{lam_workdir}", step=1)
  np.testing.assert_array_equal(model.encode(*frames),
                                trainer.load_frozen_lam(lam_workdir, 1).encode(*frames))
  assert (frozen_models.frozen_model_fingerprint(f"lam:{lam_workdir}", 1)
          == trainer.checkpoint_fingerprint(lam_workdir, 1))
  assert (frozen_models.frozen_model_fingerprint(lam_workdir)
          != trainer.checkpoint_fingerprint(lam_workdir, 1))


@pytest.mark.parametrize("spec, expected", [
    ("lam:runs/a", ("lam", "runs/a")), ("uniskill:/x/y", ("uniskill", "/x/y")),
    ("runs/a", ("lam", "runs/a")), ("gs://bucket/run", ("lam", "gs://bucket/run")),
    ("lam:gs://bucket/run", ("lam", "gs://bucket/run")), ("./a:b", ("lam", "./a:b"))])
def test_parse(spec, expected):
  assert frozen_models.parse_frozen_model(spec) == expected


@pytest.mark.parametrize("spec", ["lamm:runs/a", "idm:/x", "UniSkill:/x"])
def test_unknown_scheme_names_the_accepted_forms(spec):
  with pytest.raises(ValueError, match=r"unknown scheme.*'lam:<train_lam workdir>'.*"
                                       r"'uniskill:<converted dir>'"):
    frozen_models.load_frozen_model(spec)


@pytest.mark.parametrize("spec", ["", "lam:", "uniskill:", None])
def test_empty_specs_are_refused(spec):
  with pytest.raises(ValueError):
    frozen_models.parse_frozen_model(spec)


def test_uniskill_without_parts_names_every_missing_part(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    frozen_models.load_frozen_model(f"uniskill:{tmp_path}")
  for part in ("idm", "depth", "fdm_unet", "fdm_vae"):
    assert part in str(error.value)
  assert "IDM + depth" in str(error.value) and "FDM" in str(error.value)


def test_uniskill_with_a_converted_idm_only_names_depth_and_fdm(tmp_path):
  config = IDMConfig.tiny()
  reference.save_state_dict(reference.make_reference(config), tmp_path / "idm.pth")
  out_dir = tmp_path / "converted"
  uniskill_convert.convert_idm(str(tmp_path / "idm.pth"), str(out_dir / "idm"), config)
  assert frozen_models.missing_uniskill_parts(str(out_dir)) == {
      "depth": "depth/manifest.json", "fdm_unet": "unet/manifest.json",
      "fdm_vae": "vae/manifest.json"}
  with pytest.raises(FileNotFoundError, match=r"missing part\(s\) depth .*fdm_unet .*fdm_vae"
                     ) as error:
    frozen_models.load_frozen_model(f"uniskill:{out_dir}")
  assert "idm (" not in str(error.value).split("UniSkillDynamics")[0]
  with pytest.raises(ValueError, match="step"):
    frozen_models.load_frozen_model(f"uniskill:{out_dir}", step=3)
  # With a converted Depth-Anything too, only the FDM's parts are missing.
  from tests import test_depth_anything  # pylint: disable=g-import-not-at-top
  test_depth_anything.transformers.DepthAnythingForDepthEstimation(
      test_depth_anything.tiny_hf_config()).save_pretrained(str(tmp_path / "hf"))
  depth_anything_convert.convert(str(tmp_path / "hf"), str(out_dir / "depth"))
  with pytest.raises(FileNotFoundError, match=r"missing part\(s\) fdm_unet .*fdm_vae") as error:
    frozen_models.load_frozen_model(f"uniskill:{out_dir}")
  assert "depth (" not in str(error.value).split("UniSkillDynamics")[0]


def test_call_sites_default_to_the_lam():
  from experiments.configs import label_latent_actions, main, train_skill_model
  assert label_latent_actions.get_config("babyai").frozen_model == "lam:runs/lam_babyai"
  assert train_skill_model.get_config("babyai").frozen_model is None  # the manifest's LAM
  assert main.get_config().frozen_model is None  # the LAM the run trains


def test_main_job_labels_with_its_own_lam_unless_told(tmp_path):
  from experiments.configs import main
  from hilam_jax import experiment
  config = main.get_config()
  paths = experiment.Paths(str(tmp_path))
  assert experiment.frozen_model_spec(config, paths) == f"lam:{paths.lam}"
  config.frozen_model = "uniskill:/converted"
  assert experiment.frozen_model_spec(config, paths) == "uniskill:/converted"


def _labels_dir(tmp_path, lam_workdir):
  """A label folder whose manifest names the LAM of `lam_workdir` (what labeling writes)."""
  import json  # pylint: disable=g-import-not-at-top
  from hilam_jax.lam import labeling  # pylint: disable=g-import-not-at-top
  labels = tmp_path / "labels"
  labels.mkdir()
  manifest = {"lam": trainer.checkpoint_fingerprint(lam_workdir), "frame_gap": FRAME_GAP,
              "latent_dim": trainer.load_frozen_lam(lam_workdir).latent_dim}
  (labels / labeling.MANIFEST).write_text(json.dumps(manifest))
  return str(labels)


def test_skill_trainer_routes_through_the_factory(lam_workdir, tmp_path):
  from experiments.configs import train_skill_model  # pylint: disable=g-import-not-at-top
  from hilam_jax.skill import trainer as skill_trainer  # pylint: disable=g-import-not-at-top
  config = train_skill_model.get_config("babyai")
  config.data.labels_dir = _labels_dir(tmp_path, lam_workdir)
  frames = _frames(2, (56, 56))
  default = skill_trainer.resolve_frozen_lam(config)  # None: the manifest's LAM
  np.testing.assert_array_equal(default.encode(*frames),
                                trainer.load_frozen_lam(lam_workdir).encode(*frames))
  config.frozen_model = f"uniskill:{tmp_path}"
  with pytest.raises(FileNotFoundError, match="missing part"):
    skill_trainer.resolve_frozen_lam(config)
  config.frozen_model = "idm:/x"
  with pytest.raises(ValueError, match="unknown scheme"):
    skill_trainer.resolve_frozen_lam(config)
