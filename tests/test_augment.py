"""On-device augmentation (hilam_jax/training/augment.py): the same pixels as the tf.data
transforms for the same parameters, one draw per example shared by its frames and cameras inside
the real jitted train step, and the trainers' placement switch."""
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow as tf

from data_pipeline import frame_transforms as ft
from experiments.configs import train_lam as lam_config
from hilam_jax import training
from hilam_jax.lam import trainer as lam_trainer
from hilam_jax.policy import trainer as policy_trainer
from hilam_jax.training import augment

# Strong jitter so that every term of the colour transform moves pixels by many levels.
STRONG = ft.AugmentConfig(shift_pad=5, brightness=0.3, contrast=(0.5, 1.5),
                          saturation=(0.2, 1.8), hue=0.3)


def _images(shape, seed=0):
  """Smooth gradients plus noise: a shift of one pixel changes most values."""
  rng = np.random.default_rng(seed)
  *lead, h, w, _ = shape
  ramp = (np.arange(h)[:, None, None] * 7 + np.arange(w)[None, :, None] * 3
          + np.array([0, 60, 120])) % 256
  return np.clip(ramp + rng.integers(-20, 21, shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("config", [ft.AugmentConfig(), STRONG], ids=["default", "strong"])
def test_device_pixels_match_tfdata_for_the_same_parameters(config):
  """The tf.data draw fed to both pixel ops: at most 1 level apart on at most 0.1% of the
  values (float32 rounding at .5 ties; measured: identical on CPU). Run eagerly, inside
  tf.data and under jit."""
  images = _images((12, 2, 20, 18, 3))
  params = ft.sample_augment_params(tf.constant([3, 4]), 12, config)
  host = ft.apply_augment(tf.constant(images), params, config).numpy()
  in_tfdata = next(iter(tf.data.Dataset.from_tensors(images).map(
      lambda x: ft.apply_augment(x, params, config)))).numpy()
  np.testing.assert_array_equal(host, in_tfdata)
  device = np.asarray(jax.jit(augment.apply_params)(
      images, {k: jnp.asarray(v.numpy()) for k, v in params.items()}))
  diff = np.abs(host.astype(int) - device.astype(int))
  assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3
  assert np.abs(host.astype(int) - images).mean() > 3  # the transform did change the pixels
  # ft.augment is the draw followed by the pixel op.
  np.testing.assert_array_equal(host, ft.augment(tf.constant(images), tf.constant([3, 4]), config))


def test_device_draws_cover_the_configured_ranges():
  params = jax.device_get(augment.sample_params(jax.random.key(0), 512, STRONG))
  assert set(np.unique(params["shift"])) == set(range(-5, 6))
  for name, (low, high) in {"brightness": (-76.5, 76.5), "contrast": (0.5, 1.5),
                            "saturation": (0.2, 1.8),
                            "angle": (-0.6 * np.pi, 0.6 * np.pi)}.items():
    values = params[name]
    assert low <= values.min() < low + 0.1 * (high - low), name
    assert high - 0.1 * (high - low) < values.max() <= high, name


def _record_step(augment_fn):
  """A real jitted train step whose metrics carry the (augmented) batch it trained on."""
  def loss_fn(params, batch, rng):
    del rng
    mean = jnp.mean(jnp.stack([jnp.mean(x.astype(jnp.float32))
                               for x in jax.tree.leaves(batch)]))
    return params["w"] ** 2 * mean, {"batch": batch}

  mesh = training.make_mesh(jax.devices()[:1])
  tx = optax.sgd(1e-3)
  step = training.make_train_step(loss_fn, tx, mesh, augment_fn=augment_fn)

  def run(batch, num_steps, seed=0):
    state = training.create_train_state(lambda r: {"w": jnp.ones(())}, tx,
                                        jax.random.key(seed), mesh)
    seen = []
    for _ in range(num_steps):
      state, metrics = step(state, batch)
      seen.append(jax.device_get(metrics["batch"]))
    return seen

  return run


def test_train_step_augments_per_example_and_step_sharing_pair_frames():
  config = ml_collections.ConfigDict({"data": {"augment": {"shift_pad": 4},
                                               "augment_on": "device"}})
  run = _record_step(lam_trainer.device_augment_fn(config))
  frame = _images((1, 16, 16, 3))
  batch = {"frame_t": np.repeat(frame, 8, 0), "frame_tk": np.repeat(frame, 8, 0)}
  first, second = run(batch, 2)
  for seen in (first, second):
    np.testing.assert_array_equal(seen["frame_t"], seen["frame_tk"])  # one draw per pair
    distinct = {x.tobytes() for x in seen["frame_t"]}
    assert len(distinct) == 8  # every example its own draw
  assert not np.array_equal(first["frame_t"], second["frame_t"])  # a new draw each step
  assert not np.array_equal(first["frame_t"][0], batch["frame_t"][0])
  again = run(batch, 2)
  for a, b in zip((first, second), again):  # a function of the state's rng and step only
    np.testing.assert_array_equal(a["frame_t"], b["frame_t"])
  other_seed = run(batch, 1, seed=1)[0]
  assert not np.array_equal(other_seed["frame_t"], first["frame_t"])


def test_train_step_gives_every_camera_of_an_example_the_same_change():
  config = ml_collections.ConfigDict({"data": {"augment": True, "augment_on": "device"}})
  run = _record_step(policy_trainer.device_augment_fn(config))
  images = np.repeat(_images((1, 1, 16, 16, 3)), 4, 0)  # [B, H=1, h, w, 3]
  batch = {"inputs": {"images": {"image_primary": images, "image_wrist": images.copy()}},
           "targets": {"action": np.zeros((4, 1), np.float32)}}
  seen = run(batch, 1)[0]
  cams = seen["inputs"]["images"]
  np.testing.assert_array_equal(cams["image_primary"], cams["image_wrist"])
  assert len({x.tobytes() for x in cams["image_primary"]}) == 4
  np.testing.assert_array_equal(seen["targets"]["action"], batch["targets"]["action"])


def test_placement_switch():
  off = ml_collections.ConfigDict({"augment": None, "augment_on": "device"})
  assert augment.placement(off) is None
  assert augment.placement(ml_collections.ConfigDict({"augment": True})) == "device"
  assert augment.placement(ml_collections.ConfigDict({"augment": True,
                                                      "augment_on": "host"})) == "host"
  with pytest.raises(ValueError, match="augment_on"):
    augment.placement(ml_collections.ConfigDict({"augment": True, "augment_on": "tpu"}))
  with pytest.raises(ValueError, match="crop='shift' only"):
    augment.sample_params(jax.random.key(0), 2, ft.AugmentConfig(crop="resized"))
  host = ml_collections.ConfigDict({"data": {"augment": True, "augment_on": "host"}})
  assert policy_trainer.device_augment_fn(host) is None


def test_lam_pipeline_augments_on_the_host_only_when_asked(toy_dataset):
  """Device placement (the default): tf.data decodes and batches only, the pixels equal those
  of augmentation off; host placement changes them."""
  def first_batch(augment_cfg, augment_on):
    config = lam_config.get_config("tiny")
    config.data.train = ({"dataset_dir": toy_dataset, "split": "train"},)
    config.data.shuffle_buffer = 0
    config.data.image_size = (16, 16)
    config.data.augment = augment_cfg
    config.data.augment_on = augment_on
    pipe = lam_trainer.pair_pipeline(config, "train", seed=0, repeat=False, batch_size=4)
    return next(itertools.islice(pipe.as_numpy_iterator(), 1))["observation"]["image_primary"]

  assert lam_config.get_config("tiny").data.augment_on == "device"
  plain = first_batch(None, "device")
  np.testing.assert_array_equal(first_batch({"shift_pad": 4}, "device"), plain)
  assert not np.array_equal(first_batch({"shift_pad": 4}, "host"), plain)
