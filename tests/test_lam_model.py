"""Tests of the stage-0 latent action model: interface contract, freezing, learning, jit caching.

Sizes are tiny (a few thousand parameters) so the whole file runs in well under a minute on CPU.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hilam_jax import lam

# A micro model: total stride 4 (stem 2, two stages), so 16x16, 56x56 and 64x64 frames all work.
MICRO = dict(stem_stride=2, idm_widths=(8, 16), fdm_widths=(8, 16), idm_mlp_width=16,
             fdm_cond_width=16, norm_groups=4)


def random_frames(rng, batch, size):
  return rng.randint(0, 256, (batch, *size, 3)).astype(np.uint8)


def micro_config(bottleneck):
  return lam.LAMConfig(bottleneck=bottleneck, latent_dim=6 if bottleneck == "none" else None,
                       fsq_levels=(8, 5, 3), **MICRO)


@functools.lru_cache(maxsize=None)
def micro_params(bottleneck):
  # With global pooling the parameters do not depend on the image size: one init serves all.
  return lam.init_params(micro_config(bottleneck), jax.random.key(1), (16, 16))


@functools.lru_cache(maxsize=None)
def frozen_micro(bottleneck, size):
  return lam.FrozenLAM.from_config(micro_config(bottleneck).to_dict(), micro_params(bottleneck),
                                   frame_gap=3, image_size=size)


# ---------------------------------------------------------------- interface contract


@pytest.mark.parametrize("size", [(56, 56), (64, 64)])
@pytest.mark.parametrize("bottleneck", ["none", "fsq"])
def test_interface_shapes_and_dtypes(bottleneck, size):
  frozen = frozen_micro(bottleneck, size)
  rng = np.random.RandomState(0)
  frame_t, frame_tk = random_frames(rng, 3, size), random_frames(rng, 3, size)
  dim = 6 if bottleneck == "none" else 3
  assert (frozen.latent_dim, frozen.frame_gap, frozen.image_size) == (dim, 3, size)
  assert isinstance(frozen, lam.FrozenDynamicsModel)

  z = frozen.encode(frame_t, frame_tk)
  assert z.shape == (3, dim) and z.dtype == jnp.float32
  assert np.all(np.isfinite(z))
  prediction = frozen.decode(frame_t, z)
  assert prediction.shape == (3, *size, 3) and prediction.dtype == jnp.float32
  loss = frozen.reconstruction_loss(frame_t, z, frame_tk)
  assert loss.shape == () and loss.dtype == jnp.float32
  per_sample = frozen.reconstruction_loss(frame_t, z, frame_tk, per_sample=True)
  assert per_sample.shape == (3,)
  np.testing.assert_allclose(per_sample.mean(), loss, rtol=1e-5)

  if bottleneck == "fsq":
    # Every coordinate is on its level's grid (j - L // 2) / (L // 2).
    for i, level in enumerate((8, 5, 3)):
      grid = (np.arange(level) - level // 2) / (level // 2)
      assert np.all(np.min(np.abs(np.asarray(z[:, i])[:, None] - grid), axis=1) < 1e-6)
    fsq = lam.FSQ((8, 5, 3))
    indices = fsq.codes_to_indices(z)
    assert indices.dtype == jnp.int32 and np.all((indices >= 0) & (indices < 120))
    np.testing.assert_allclose(fsq.indices_to_codes(indices), z, atol=1e-6)


def test_fsq_grid_and_straight_through():
  fsq = lam.FSQ((8, 5))
  z = jnp.linspace(-6, 6, 301)[:, None] * jnp.ones((1, 2))
  codes = fsq(z)
  assert sorted(set(np.round(np.asarray(codes[:, 0]) * 4).astype(int))) == list(range(-4, 4))
  assert sorted(set(np.round(np.asarray(codes[:, 1]) * 2).astype(int))) == list(range(-2, 3))
  all_codes = fsq.indices_to_codes(jnp.arange(fsq.codebook_size))
  np.testing.assert_array_equal(fsq.codes_to_indices(all_codes), np.arange(40))
  grad = jax.grad(lambda x: jnp.sum(fsq(x)))(jnp.zeros((1, 2)))
  assert np.all(grad > 0)  # straight-through: rounding does not block the gradient


def test_clear_errors_on_bad_input():
  frozen = frozen_micro("none", (56, 56))
  good = np.zeros((2, 56, 56, 3), np.uint8)
  with pytest.raises(ValueError, match="image_size"):
    frozen.encode(np.zeros((2, 64, 64, 3), np.uint8), np.zeros((2, 64, 64, 3), np.uint8))
  with pytest.raises(TypeError, match="uint8"):
    frozen.encode(good.astype(np.float32), good)
  with pytest.raises(ValueError, match="rank 4"):
    frozen.encode(good[0], good[0])
  with pytest.raises(ValueError, match="batch sizes differ"):
    frozen.encode(good, good[:1])
  with pytest.raises(ValueError, match=r"z: expected shape \[2, 6\]"):
    frozen.reconstruction_loss(good, jnp.zeros((2, 5)), good)
  with pytest.raises(ValueError, match="divisible"):
    lam.FrozenLAM(frozen.module, frozen.params, frame_gap=3, image_size=(58, 58))
  with pytest.raises(ValueError, match="do not match"):
    lam.FrozenLAM.from_config(lam.LAMConfig(latent_dim=7, **MICRO).to_dict(), frozen.params,
                              frame_gap=3, image_size=(56, 56))
  with pytest.raises(ValueError, match="unknown keys"):
    lam.FrozenLAM.from_config({"latent_dimension": 8}, frozen.params, 3, (56, 56))
  with pytest.raises(ValueError, match="divisible"):
    lam.LatentActionModel(lam.LAMConfig(**MICRO)).init(
        jax.random.key(0), np.zeros((1, 18, 18, 3), np.uint8), np.zeros((1, 18, 18, 3), np.uint8))
  with pytest.raises(ValueError, match="latent_dim"):
    lam.LAMConfig(bottleneck="fsq", latent_dim=16)


@pytest.mark.parametrize("changes", [
    dict(fdm_conditioning="concat"), dict(idm_pooling="flatten"), dict(idm_pooling="mean_max"), dict(activation="gelu"),
    dict(idm_use_difference=False, fdm_predict_delta=False), dict(stem_stride=1, idm_blocks=2)])
def test_config_variants_shapes(changes):
  """Every knob builds and keeps the output contract (shape-only evaluation, nothing compiled)."""
  module = lam.LatentActionModel(lam.LAMConfig(**{**MICRO, **changes}))
  frames = jax.ShapeDtypeStruct((2, 56, 64, 3), jnp.uint8)
  variables = jax.eval_shape(module.init, jax.random.key(0), frames, frames)
  out = jax.eval_shape(module.apply, variables, frames, frames)
  assert out.latent.z.shape == (2, 16) and out.latent.codes is None
  assert out.prediction.shape == (2, 56, 64, 3) and out.prediction.dtype == jnp.float32


def test_config_round_trip():
  config = lam.LAMConfig.tiny(bottleneck="fsq")
  assert lam.LAMConfig.from_dict(config.to_dict()) == config
  assert config.z_dim == 4 and lam.LAMConfig().z_dim == 16 and config.total_stride == 8


# ---------------------------------------------------------------- frozen


def test_frozen_downstream_step_leaves_lam_untouched():
  frozen = frozen_micro("none", (56, 56))
  lam_before = jax.tree_util.tree_map(np.array, frozen.params)
  rng = np.random.RandomState(1)
  frame_t, frame_tk = random_frames(rng, 4, (56, 56)), random_frames(rng, 4, (56, 56))
  features = jnp.asarray(rng.randn(4, 10), jnp.float32)

  head = nn.Dense(frozen.latent_dim)
  head_params = head.init(jax.random.key(2), features)
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(head_params)

  def loss_of_z(z):
    return frozen.reconstruction_loss(frame_t, z, frame_tk)

  @jax.jit
  def train_step(head_params, opt_state):
    loss, grads = jax.value_and_grad(lambda p: loss_of_z(head.apply(p, features)))(head_params)
    updates, opt_state = optimizer.update(grads, opt_state, head_params)
    grad_z = jax.grad(loss_of_z)(head.apply(head_params, features))
    return optax.apply_updates(head_params, updates), opt_state, loss, grad_z

  new_head_params, _, loss, grad_z = train_step(head_params, opt_state)
  assert np.isfinite(loss)
  jax.tree_util.tree_map(np.testing.assert_array_equal, lam_before,
                         jax.tree_util.tree_map(np.array, frozen.params))
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), head_params,
                                   new_head_params)
  assert all(jax.tree_util.tree_leaves(changed))

  assert np.all(np.isfinite(grad_z)) and np.abs(grad_z).max() > 0
  z = head.apply(head_params, features)

  # stop_gradient inside: even params handed in as a differentiated argument get no gradient.
  def through_params(params):
    wrapped = lam.FrozenLAM(frozen.module, params, frozen.frame_gap, frozen.image_size)
    return wrapped.reconstruction_loss(frame_t, z, frame_tk)
  grads = jax.grad(through_params)(frozen.params)
  assert all(np.all(g == 0) for g in jax.tree_util.tree_leaves(grads))


# ---------------------------------------------------------------- learning

SQUARE_MOVES = np.array([[0, 2], [0, -2], [2, 0], [-2, 0]])  # the 4 latent actions (dy, dx)


def moving_squares(rng, batch, size=16, side=3):
  """Random-colour square on black; frame_tk has it moved by one of SQUARE_MOVES."""
  frame_t = np.zeros((batch, size, size, 3), np.uint8)
  frame_tk = np.zeros_like(frame_t)
  moves = SQUARE_MOVES[rng.randint(0, len(SQUARE_MOVES), batch)]
  starts = rng.randint(2, size - side - 1, (batch, 2))
  colours = rng.randint(128, 256, (batch, 3))
  for i in range(batch):
    (y, x), (v, u) = starts[i], starts[i] + moves[i]
    frame_t[i, y:y + side, x:x + side] = colours[i]
    frame_tk[i, v:v + side, u:u + side] = colours[i]
  return {"frame_t": frame_t, "frame_tk": frame_tk}


def train_on_squares(config, params, steps, idm_trainable=True, batch_size=16):
  """Adam on fresh moving-square batches.

  Returns (metrics of the first step, mean metrics of the last 10 steps, number of traces). One
  jitted step serves every call with the same config (idm_trainable is a traced input), so the
  control run below costs no extra compilation.
  """
  step, traces = _train_step(config)
  opt_state = OPTIMIZER.init(params)
  rng = np.random.RandomState(0)
  history = []
  for i in range(steps):
    params, opt_state, metrics = step(params, opt_state, moving_squares(rng, batch_size),
                                      jax.random.key(i), jnp.float32(idm_trainable))
    history.append(metrics)
  history = jax.device_get(history)
  last = {k: np.mean([h[k] for h in history[-10:]]) for k in history[-1]}
  return history[0], last, len(traces)


OPTIMIZER = optax.adam(3e-3)


@functools.lru_cache(maxsize=None)
def _train_step(config):
  module = lam.LatentActionModel(config)
  traces = []

  @jax.jit
  def step(params, opt_state, batch, rng, idm_trainable):
    traces.append(1)  # runs only while tracing: counts compilations
    grad_fn = jax.value_and_grad(lam.lam_loss, has_aux=True)
    (_, metrics), grads = grad_fn(params, module, batch, rng)
    grads["idm"] = jax.tree_util.tree_map(lambda g: g * idm_trainable, grads["idm"])
    updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  return step, traces


def test_learns_moving_square_motion_and_zero_z_control_does_not():
  config = lam.LAMConfig(latent_dim=4, stem_stride=1, idm_widths=(8, 16), fdm_widths=(8, 16),
                         idm_mlp_width=32, fdm_cond_width=32, norm_groups=4)
  params = lam.init_params(config, jax.random.key(0), (16, 16))
  first, last, traces = train_on_squares(config, params, steps=80)
  assert traces == 1  # the jitted loss + update never recompiles across same-shape batches
  assert last["recon_mse"] < 0.25 * first["recon_mse"]
  assert last["recon_mse"] < 0.25 * last["copy_mse"]
  assert last["z_gain"] > 0.5, last
  assert last["z_var/min"] > 1e-3, last

  # Control: z forced to zero (IDM output layer zeroed and frozen); the FDM trains z-blind.
  zero_out = jax.tree_util.tree_map(jnp.zeros_like, params["idm"]["mlp_out"])
  control_params = {**params, "idm": {**params["idm"], "mlp_out": zero_out}}
  _, control, traces = train_on_squares(config, control_params, steps=30, idm_trainable=False)
  assert traces == 1
  # z_gain compares the loss with z and with z shuffled across the batch: identical zeros, so
  # only a reduction's rounding separates them (0, or ~1e-8 with XLA's CPU optimisation off).
  assert control["z_var/max"] == 0 and abs(control["z_gain"]) < 1e-6
  assert control["recon_mse"] > 4 * last["recon_mse"], (control, last)


def test_zero_latent_knob_zeroes_z():
  config = lam.LAMConfig.from_dict({**micro_config("none").to_dict(), "zero_latent": True})
  frames = np.random.RandomState(0).randint(0, 256, (2, 16, 16, 3)).astype(np.uint8)
  encode = jax.jit(functools.partial(lam.LatentActionModel(config).apply,
                                     method=lam.LatentActionModel.encode))
  z = encode({"params": micro_params("none")}, frames, frames[::-1])
  assert z.shape == (2, 6) and not np.any(z)


# ---------------------------------------------------------------- jit


def test_loss_jit_does_not_recompile_and_metrics_are_scalars():
  module = lam.LatentActionModel(micro_config("fsq"))
  params = micro_params("fsq")
  traces = []

  @jax.jit
  def loss_fn(params, batch, rng):
    traces.append(1)
    return lam.lam_loss(params, module, batch, rng)

  rng = np.random.RandomState(0)
  for i in range(3):
    batch = moving_squares(rng, 8)
    batch["valid"] = np.array([1.0] * 7 + [0.0], np.float32)
    loss, metrics = loss_fn(params, batch, jax.random.key(i))
  assert len(traces) == 1
  assert np.isfinite(loss)
  assert all(v.shape == () and v.dtype == jnp.float32 for v in metrics.values())
  for key in ("recon_mse", "recon_mse_shuffled_z", "z_gain", "copy_mse", "z_var/mean",
              "z_var/min", "fsq/usage", "fsq/perplexity", "fsq/unique_codes"):
    assert key in metrics
  # Only the 7 valid samples count towards codebook statistics.
  assert 1 <= metrics["fsq/perplexity"] <= 7 + 1e-4 and 0 < metrics["fsq/usage"] <= 7 / 120


def test_continuous_regularisers_enter_the_loss():
  config = lam.LAMConfig(z_l2_weight=1e-3, z_std_weight=0.1, **MICRO)
  batch = {"frame_t": jax.ShapeDtypeStruct((4, 16, 16, 3), jnp.uint8),
           "frame_tk": jax.ShapeDtypeStruct((4, 16, 16, 3), jnp.uint8)}
  module = lam.LatentActionModel(config)
  params = jax.eval_shape(module.init, jax.random.key(0), batch["frame_t"], batch["frame_tk"])
  _, metrics = jax.eval_shape(functools.partial(lam.lam_loss, module=module), params,
                              batch=batch, rng=jax.random.key(0))
  assert {"z_l2", "z_std_hinge", "loss", "z_gain"} <= set(metrics)
  assert "fsq/usage" not in metrics


def test_codebook_statistics_and_derangement():
  codes = jnp.array([0, 0, 1, 3, 3, 3])
  stats = lam.codebook_statistics(codes, 4, valid=jnp.array([1, 1, 1, 1, 0, 0.0]))
  assert stats["fsq/unique_codes"] == 3 and stats["fsq/usage"] == 0.75
  probs = np.array([0.5, 0.25, 0.25])
  np.testing.assert_allclose(stats["fsq/perplexity"], np.exp(-np.sum(probs * np.log(probs))),
                             rtol=1e-5)
  perm = np.asarray(lam.losses.derangement(jax.random.key(0), 9))
  assert sorted(perm) == list(range(9)) and not np.any(perm == np.arange(9))
