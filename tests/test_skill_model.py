"""Tests of the HiLAM skill model (causal 2-stage H-Net) and its loss.

Sizes are tiny (widths 16-32, one block per network) so the file runs in well under a minute on a
CPU. Checks: shapes and config round trip, causality through routing/chunking/dechunking, padding
invariance, the boundary hierarchy (stage 2 => stage 1) and skill read-off, no recompiles across
boundary patterns, learning on a synthetic piecewise-constant dataset, the reconstruction
term's gradient reaching the skill model but not the frozen LAM, and windows of 1 and 2 frames
(default config: stage 2 then routes over a single chunk).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hilam_jax import lam
from hilam_jax.lam import frozen_lam
from hilam_jax.skill import chunking
from hilam_jax.skill import losses as skill_losses
from hilam_jax.skill import model as skill_model

CONFIG = skill_model.SkillModelConfig.tiny()  # Dz 4, widths (16, 24, 32), N = (2, 2)
LENGTH = 12

# Compile quickly: these functions are tiny, XLA's backend optimisation is most of their compile
# time on CPU and buys nothing here.
FAST_COMPILE = ({"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None)
TRACES = []  # one entry per trace of `train_loss`


@functools.lru_cache(maxsize=None)
def tiny_params():
  # Parameter shapes do not depend on the window length: one init serves every test.
  return skill_model.init_params(CONFIG, jax.random.key(0), LENGTH)


@functools.lru_cache(maxsize=None)
def apply_fn():
  return jax.jit(skill_model.SkillModel(CONFIG).apply, compiler_options=FAST_COMPILE)


def run(latents, mask):
  return apply_fn()({"params": tiny_params()}, jnp.asarray(latents), jnp.asarray(mask))


def train_loss(params, batch, rng):
  TRACES.append(1)
  return skill_losses.skill_loss(params, skill_model.SkillModel(CONFIG), batch, rng,
                                 lambda_rec=0.0, lambda_ratio=0.03)


@functools.lru_cache(maxsize=None)
def loss_and_grad_fn():
  """The jitted training gradient, shared by the recompile and the learning test."""
  return jax.jit(jax.value_and_grad(train_loss, has_aux=True), compiler_options=FAST_COMPILE)


def random_batch(seed, batch=3, length=LENGTH, pad=(0, 3, 5)):
  rng = np.random.RandomState(seed)
  latents = rng.randn(batch, length, CONFIG.latent_dim).astype(np.float32)
  mask = np.arange(length)[None] < (length - np.asarray(pad[:batch]))[:, None]
  return latents, mask


def test_config_round_trip_and_validation():
  assert skill_model.SkillModelConfig.from_dict(CONFIG.to_dict()) == CONFIG
  assert skill_model.SkillModelConfig().num_stages == 2
  assert CONFIG.capacities(12) == (9, 7)  # ceil(12 / 2 * 1.5), ceil(9 / 2 * 1.5)
  with pytest.raises(ValueError, match="unknown keys"):
    skill_model.SkillModelConfig.from_dict({"nope": 1})
  with pytest.raises(ValueError, match="expected 3 entries"):
    skill_model.SkillModelConfig(widths=(16, 16))
  with pytest.raises(ValueError, match="> 1"):
    skill_model.SkillModelConfig(target_ratios=(1.0, 2.0))


def test_shapes():
  latents, mask = random_batch(0)
  out = run(latents, mask)
  assert out.prediction.shape == (3, LENGTH, 4) and out.prediction.dtype == jnp.float32
  assert len(out.stages) == 2
  for stage, seq_len, capacity, width in zip(out.stages, (LENGTH, 9), (9, 7), (16, 24)):
    assert stage.mask.shape == (3, seq_len)
    assert stage.routing.boundary_prob.shape == (3, seq_len)
    assert stage.routing.boundary_mask.dtype == jnp.bool_
    assert stage.chunks.chunks.shape == (3, capacity, width)
    assert stage.chunks.chunk_mask.shape == (3, capacity)
    assert stage.chunks.overflow.shape == (3,)
    assert stage.frame_boundary.shape == (3, LENGTH) and stage.frame_boundary.dtype == jnp.bool_
    assert stage.skill.shape == (3, LENGTH, width)
  assert np.all(np.isfinite(out.prediction))
  np.testing.assert_array_equal(out.stages[1].mask, out.stages[0].chunks.chunk_mask)
  np.testing.assert_array_equal(np.asarray(out.prediction)[~mask], 0.0)


def test_causality_through_chunking():
  latents, mask = random_batch(1, pad=(0, 0, 0))
  base = run(latents, mask)
  rng = np.random.RandomState(2)
  changed_any = False
  for cut in (0, 3, 6, 9):
    perturbed = latents.copy()
    perturbed[:, cut + 1:] = 3.0 * rng.randn(*perturbed[:, cut + 1:].shape)
    out = run(perturbed, mask)
    np.testing.assert_allclose(out.prediction[:, :cut + 1], base.prediction[:, :cut + 1],
                               atol=1e-5, rtol=1e-5)
    for s_out, s_base in zip(out.stages, base.stages):
      np.testing.assert_array_equal(s_out.frame_boundary[:, :cut + 1],
                                    s_base.frame_boundary[:, :cut + 1])
      np.testing.assert_allclose(s_out.skill[:, :cut + 1], s_base.skill[:, :cut + 1], atol=1e-5)
    np.testing.assert_allclose(out.stages[0].routing.boundary_prob[:, :cut + 1],
                               base.stages[0].routing.boundary_prob[:, :cut + 1], atol=1e-6)
    changed_any |= not np.allclose(out.prediction[:, cut + 1:], base.prediction[:, cut + 1:])
    changed_any |= not np.array_equal(out.stages[0].frame_boundary, base.stages[0].frame_boundary)
  assert changed_any  # the perturbation did reach the later outputs


def test_padding_is_ignored():
  latents, mask = random_batch(3)
  base = run(latents, mask)
  noisy = np.where(mask[..., None], latents, 100.0).astype(np.float32)
  out = run(noisy, mask)
  np.testing.assert_allclose(np.asarray(out.prediction)[mask], np.asarray(base.prediction)[mask],
                             atol=1e-5)
  for stage in out.stages:
    assert not np.any(np.asarray(stage.frame_boundary)[~mask])


def test_boundary_hierarchy_and_skill_readoff():
  for seed in range(3):
    latents, mask = random_batch(10 + seed)
    out = run(latents, mask)
    s1, s2 = out.stages
    b1, b2 = np.asarray(s1.frame_boundary), np.asarray(s2.frame_boundary)
    assert not np.any(b2 & ~b1)  # a stage-2 boundary is a stage-1 boundary
    assert np.all(b1[:, 0] & b2[:, 0])  # every sequence starts a chunk at both stages
    assert b1.sum() > b2.sum() >= 3  # the random init does chunk, and stage 2 is coarser
    for stage, b in ((s1, b1), (s2, b2)):
      np.testing.assert_array_equal(stage.segment_id, np.cumsum(b, axis=1) * mask)
      skill = np.asarray(stage.skill)
      for i in range(latents.shape[0]):
        for t in range(1, LENGTH):
          if mask[i, t] and not b[i, t] and stage.skill_valid[i, t]:
            np.testing.assert_array_equal(skill[i, t], skill[i, t - 1])  # constant in a segment
    # Stage-1 skill at a boundary frame is the encoder output there: chunk k holds frame
    # position of the k-th boundary.
    chunks1 = np.asarray(s1.chunks.chunks)
    for i in range(latents.shape[0]):
      starts = np.flatnonzero(b1[i])
      np.testing.assert_allclose(np.asarray(s1.skill)[i, starts], chunks1[i, :len(starts)],
                                 atol=1e-6)
    # Stage-2 boundaries at frame rate are the stage-1 boundaries whose chunk is a stage-2
    # boundary on the stage-1 chunk sequence.
    stage2_on_chunks = np.asarray(s2.routing.boundary_mask & s2.mask)
    capacity2 = s2.chunks.chunks.shape[1]
    stage2_on_chunks = stage2_on_chunks & (np.cumsum(stage2_on_chunks, axis=1) <= capacity2)
    for i in range(latents.shape[0]):
      starts = np.flatnonzero(b1[i])
      assert len(starts) <= chunks1.shape[1]  # overflowed stage-1 boundaries are not boundaries
      np.testing.assert_array_equal(b2[i, starts], stage2_on_chunks[i, :len(starts)])


def test_jitted_loss_does_not_recompile():
  grad_fn = loss_and_grad_fn()
  patterns, traces = [], []
  for seed in range(3):
    latents, mask = random_batch(20 + seed, pad=(seed, 0, 2 * seed))
    batch = {"latents": jnp.asarray(latents), "mask": jnp.asarray(mask)}
    (loss, metrics), grads = grad_fn(tiny_params(), batch, jax.random.key(seed))
    traces.append(len(TRACES))
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    for name in ("latent_l1", "ratio/s1", "ratio/s2", "boundary_rate/s1", "mean_chunk_len/s2",
                 "frame_boundary_rate/s2", "overflow/s1", "overflow/s2", "loss"):
      assert metrics[name].shape == () and metrics[name].dtype == jnp.float32
    out = run(latents, mask)
    patterns.append(np.asarray(out.stages[0].frame_boundary).tobytes())
  assert len(set(patterns)) == 3  # different boundary patterns ...
  assert traces[0] <= 1 and traces[-1] == traces[0]  # ... no new trace after the first call


def synthetic_skills(num_sequences, length, dim, seed=0):
  """Piecewise-constant latent sequences: segments of 2-5 frames, each one of 4 codebook vectors."""
  rng = np.random.RandomState(seed)
  codebook = rng.randn(4, dim).astype(np.float32)
  latents = np.zeros((num_sequences, length, dim), np.float32)
  for i in range(num_sequences):
    t = 0
    while t < length:
      span = rng.randint(2, 6)
      latents[i, t:t + span] = codebook[rng.randint(4)]
      t += span
  return latents + 0.01 * rng.randn(*latents.shape).astype(np.float32)


def test_adam_steps_reduce_loss():
  # Same shapes as `random_batch`, so the shared jitted gradient is reused (no compile here).
  latents = synthetic_skills(3, LENGTH, CONFIG.latent_dim)
  batch = {"latents": jnp.asarray(latents), "mask": jnp.ones(latents.shape[:2], bool)}
  params = tiny_params()
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)
  update = jax.jit(optimizer.update, compiler_options=FAST_COMPILE)
  grad_fn = loss_and_grad_fn()
  history = []
  for i in range(80):
    (_, metrics), grads = grad_fn(params, batch, jax.random.key(i))
    updates, opt_state = update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    history.append(float(metrics["latent_l1"]))
  assert np.isfinite(history).all()
  assert np.mean(history[-5:]) < 0.6 * np.mean(history[:3]), history[::10]


MICRO_LAM = dict(stem_stride=2, idm_widths=(8, 16), fdm_widths=(8, 16), idm_mlp_width=16,
                 fdm_cond_width=16, norm_groups=4, latent_dim=CONFIG.latent_dim)


def test_reconstruction_gradient_reaches_model_not_frozen_lam():
  lam_config = lam.LAMConfig.tiny(**MICRO_LAM)
  lam_module = lam.LatentActionModel(lam_config)
  lam_params = lam.init_params(lam_config, jax.random.key(3), (16, 16))
  frozen = lam.FrozenLAM(lam_module, lam_params, frame_gap=2, image_size=(16, 16))
  module = skill_model.SkillModel(CONFIG)
  rng = np.random.RandomState(4)
  batch_size, length = 2, 6
  latents, mask = random_batch(5, batch=batch_size, length=length, pad=(0, 2))
  batch = {"latents": jnp.asarray(latents), "mask": jnp.asarray(mask),
           "frame_t": jnp.asarray(rng.randint(0, 256, (batch_size, length, 16, 16, 3)), jnp.uint8),
           "frame_tk": jnp.asarray(rng.randint(0, 256, (batch_size, length, 16, 16, 3)),
                                   jnp.uint8)}
  params = tiny_params()

  def rec_only(p, lambda_rec):
    loss, metrics = skill_losses.skill_loss(p, module, batch, jax.random.key(0), frozen_lam=frozen,
                                            lambda_rec=lambda_rec, lambda_ratio=0.0)
    return loss - metrics["latent_l1"] if lambda_rec else loss, metrics

  grads, metrics = jax.jit(jax.grad(functools.partial(rec_only, lambda_rec=1.0), has_aux=True),
                           compiler_options=FAST_COMPILE)(params)
  assert "rec" in metrics and np.isfinite(metrics["rec"]) and metrics["rec"] > 0
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  # The gradient through the frozen FDM is the true one: a central finite difference of the rec
  # loss along a random direction of the prediction head's kernel matches <grad, direction>.
  direction = jnp.asarray(rng.randn(*grads["head"]["kernel"].shape), jnp.float32)
  direction = direction / jnp.linalg.norm(direction)

  rec_value = jax.jit(lambda p: rec_only(p, 1.0)[0], compiler_options=FAST_COMPILE)

  def along(eps):
    moved = jax.tree_util.tree_map(lambda x: x, params)
    moved["head"] = dict(moved["head"], kernel=params["head"]["kernel"] + eps * direction)
    return float(rec_value(moved))

  eps = 1e-2
  finite_difference = (along(eps) - along(-eps)) / (2 * eps)
  analytic = float(jnp.sum(grads["head"]["kernel"] * direction))
  assert abs(analytic) > 1e-6
  np.testing.assert_allclose(finite_difference, analytic, rtol=0.05, atol=1e-5)
  # lambda_rec = 0 (or no frozen model) skips the term entirely.
  _, metrics_off = jax.eval_shape(functools.partial(rec_only, lambda_rec=0.0), params)
  assert "rec" not in metrics_off
  # The frozen LAM's parameters receive no gradient through the path skill_loss uses.
  z = jnp.asarray(rng.randn(3, CONFIG.latent_dim), jnp.float32)
  frames = batch["frame_t"][0, :3]
  lam_grads = jax.jit(jax.grad(lambda lp: jnp.sum(frozen_lam._per_sample_loss(  # pylint: disable=protected-access
      lam_module, lp, frames, z, batch["frame_tk"][0, :3]))),
                      compiler_options=FAST_COMPILE)(frozen.params)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree_util.tree_leaves(lam_grads))


def test_reconstruction_on_sampled_positions_equals_full_window():
  """The K-positions form (what the trainer feeds) gives the full-window value on the same pairs."""
  lam_config = lam.LAMConfig.tiny(**MICRO_LAM)
  frozen = lam.FrozenLAM(lam.LatentActionModel(lam_config),
                         lam.init_params(lam_config, jax.random.key(3), (16, 16)), frame_gap=1,
                         image_size=(16, 16))
  module = skill_model.SkillModel(CONFIG)
  rng = np.random.RandomState(5)
  batch_size, length = 2, 6
  latents, mask = random_batch(6, batch=batch_size, length=length, pad=(0, 2))
  frames = rng.randint(0, 256, (batch_size, length + 1, 16, 16, 3)).astype(np.uint8)
  full = {"latents": latents, "mask": mask, "frame_t": frames[:, :-1], "frame_tk": frames[:, 1:]}
  positions = np.tile(np.arange(1, length, dtype=np.int32), (batch_size, 1))  # all t >= 1
  rows = np.arange(batch_size)[:, None]
  subset = {"latents": latents, "mask": mask, "frame_positions": positions,
            "frame_t": frames[rows, positions], "frame_tk": frames[rows, positions + 1],
            "frame_mask": np.ones(positions.shape, bool)}
  params = tiny_params()
  values = [skill_losses.skill_loss(params, module, b, jax.random.key(0), frozen_lam=frozen,
                                    lambda_rec=1.0, lambda_ratio=0.0)[1]["rec"]
            for b in (full, subset)]
  np.testing.assert_allclose(values[0], values[1], rtol=1e-5)
  # Masked rows do not count: duplicating a pair into a masked slot leaves the value unchanged.
  padded = dict(subset)
  padded["frame_positions"] = np.concatenate([positions, positions[:, :1]], 1)
  padded["frame_t"] = np.concatenate([subset["frame_t"], subset["frame_tk"][:, :1]], 1)
  padded["frame_tk"] = np.concatenate([subset["frame_tk"], subset["frame_t"][:, :1]], 1)
  padded["frame_mask"] = np.concatenate([subset["frame_mask"], np.zeros((batch_size, 1), bool)],
                                        1)
  value = skill_losses.skill_loss(params, module, padded, jax.random.key(0), frozen_lam=frozen,
                                  lambda_rec=1.0, lambda_ratio=0.0)[1]["rec"]
  np.testing.assert_allclose(value, values[0], rtol=1e-5)


def test_pallas_chunking_end_to_end_matches_fused():
  """The whole skill model with the Pallas kernels (interpret mode on CPU) = the fused default:
  same outputs and same gradients of the training loss. Both jitted (op-by-op dispatch of the
  interpreted kernels' loops cost minutes); the fused side is the file's shared forward and
  training gradient (`run`, `loss_and_grad_fn`: same shapes, compiled once)."""
  import dataclasses
  pallas_config = dataclasses.replace(CONFIG, chunk_impl="pallas")
  latents, mask = random_batch(3)
  params = tiny_params()
  fused = run(latents, mask)
  pallas = jax.jit(skill_model.SkillModel(pallas_config).apply, compiler_options=FAST_COMPILE)(
      {"params": params}, jnp.asarray(latents), jnp.asarray(mask))
  np.testing.assert_allclose(pallas.prediction, fused.prediction, rtol=1e-5, atol=1e-5)
  for a, b in zip(pallas.stages, fused.stages):
    np.testing.assert_array_equal(a.frame_boundary, b.frame_boundary)
    np.testing.assert_allclose(a.skill, b.skill, rtol=1e-5, atol=1e-5)

  batch = {"latents": jnp.asarray(latents), "mask": jnp.asarray(mask)}

  def pallas_loss(p):  # `train_loss` with the Pallas kernels
    return skill_losses.skill_loss(p, skill_model.SkillModel(pallas_config), batch,
                                   jax.random.key(0), lambda_rec=0.0, lambda_ratio=0.03)[0]

  _, g_fused = loss_and_grad_fn()(params, batch, jax.random.key(0))
  g_pallas = jax.jit(jax.grad(pallas_loss), compiler_options=FAST_COMPILE)(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               g_pallas, g_fused)


@pytest.mark.parametrize("length", [1, 2])
def test_default_config_tiny_lengths(length):
  """Windows of 1 and 2 frames with the default config: stage 2 then routes over one chunk.

  init, forward, loss and gradient work with finite values and the right shapes, and the fused
  and Pallas chunking agree. Rows: all frames valid, only frame 0 valid, no frame valid.
  """
  import dataclasses
  config = skill_model.SkillModelConfig()
  assert config.capacities(length) == (1, 1)
  params = skill_model.init_params(config, jax.random.key(0), length)
  rng = np.random.RandomState(7)
  latents = jnp.asarray(rng.randn(3, length, config.latent_dim), jnp.float32)
  mask = jnp.asarray(np.arange(length)[None] < np.array([length, 1, 0])[:, None])
  batch = {"latents": latents, "mask": mask}

  def loss(impl, p):
    module = skill_model.SkillModel(dataclasses.replace(config, chunk_impl=impl))
    return skill_losses.skill_loss(p, module, batch, jax.random.key(0), lambda_rec=0.0,
                                   lambda_ratio=0.03, return_output=True)

  results = {impl: jax.jit(jax.value_and_grad(functools.partial(loss, impl), has_aux=True),
                           compiler_options=FAST_COMPILE)(params)
             for impl in ("fused", "pallas")}
  (value, (metrics, out)), grads = results["fused"]
  assert out.prediction.shape == (3, length, config.latent_dim)
  assert np.all(np.isfinite(out.prediction)) and np.isfinite(value)
  np.testing.assert_array_equal(np.asarray(out.prediction)[~np.asarray(mask)], 0.0)
  for stage, seq_len, width in zip(out.stages, (length, 1), config.widths):
    assert stage.routing.boundary_prob.shape == (3, seq_len)
    assert stage.chunks.chunks.shape == (3, 1, width)
    assert stage.skill.shape == (3, length, width) and np.all(np.isfinite(stage.skill))
    # One chunk, starting at frame 0, on every row with a valid frame; later frames join it.
    np.testing.assert_array_equal(stage.chunks.num_chunks, [1, 1, 0])
    np.testing.assert_array_equal(stage.frame_boundary[:, 0], [True, True, False])
    assert not np.any(np.asarray(stage.frame_boundary)[:, 1:])
    np.testing.assert_array_equal(stage.segment_id, np.asarray(mask, np.int32))
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  zero = {jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
          if float(jnp.max(jnp.abs(g))) == 0.0}
  if length == 1:
    # No (t, t+1) pair to predict and p = (1) at both stages: ratio loss N^1 + N^2, no gradient.
    assert float(metrics["latent_l1"]) == 0.0
    np.testing.assert_allclose(value, 0.03 * sum(config.target_ratios), rtol=1e-6)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in leaves)
  else:
    assert float(metrics["latent_l1"]) > 0
    # Every parameter gets a gradient, stage 1's router included (its p_1 is learned), except
    # stage 2's router: it sees one chunk per row, whose only probability is the fixed p_0 = 1.
    assert zero == {"['stage']['main']['routing']['k']['kernel']",
                    "['stage']['main']['routing']['q']['kernel']"}
  (p_value, (_, p_out)), p_grads = results["pallas"]
  np.testing.assert_allclose(p_value, value, rtol=1e-5)
  np.testing.assert_allclose(p_out.prediction, out.prediction, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               p_grads, grads)
  with pytest.raises(ValueError, match="L >= 1"):
    skill_model.SkillModel(config).apply({"params": params}, latents[:, :0], mask[:, :0])


def test_extractor_one_frame_windows():
  """A 1-frame window (default hop then 1, not 0): every frame is its own window, so it starts a
  chunk at both stages and its skill is read off that window."""
  from hilam_jax.skill import extract  # pylint: disable=g-import-not-at-top
  extractor = extract.SkillExtractor(skill_model.SkillModel(CONFIG), tiny_params(), window=1,
                                     batch_size=4)
  assert extractor.hop == 1
  latents = np.random.RandomState(8).randn(3, CONFIG.latent_dim).astype(np.float32)
  result = extractor.extract({"episode": latents})["episode"]
  for stage in (1, 2):
    np.testing.assert_array_equal(result[f"boundary/s{stage}"], [True, True, True])
  single = run(latents[:, None], np.ones((3, 1), bool))
  for stage in (1, 2):
    np.testing.assert_allclose(result[f"skill/s{stage}"], single.stages[stage - 1].skill[:, 0],
                               atol=1e-6)


def test_reconstruction_term_one_frame_window():
  """L = 1 has no (t - 1, t) pair: L_rec is 0 (not a reshape error) and the gradient is finite."""
  lam_config = lam.LAMConfig.tiny(**MICRO_LAM)
  frozen = lam.FrozenLAM(lam.LatentActionModel(lam_config),
                         lam.init_params(lam_config, jax.random.key(3), (16, 16)), frame_gap=1,
                         image_size=(16, 16))
  module = skill_model.SkillModel(CONFIG)
  rng = np.random.RandomState(9)
  frames = rng.randint(0, 256, (2, 1, 16, 16, 3)).astype(np.uint8)
  batch = {"latents": rng.randn(2, 1, CONFIG.latent_dim).astype(np.float32),
           "mask": np.ones((2, 1), bool), "frame_t": frames, "frame_tk": frames}

  def loss(p):
    return skill_losses.skill_loss(p, module, batch, jax.random.key(0), frozen_lam=frozen,
                                   lambda_rec=1.0, lambda_ratio=0.0)

  (value, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True),
                                    compiler_options=FAST_COMPILE)(tiny_params())
  assert float(metrics["rec"]) == 0.0 and float(value) == 0.0
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))



@functools.lru_cache(maxsize=None)
def bottleneck_model(residual: bool = True):
  cfg = skill_model.SkillModelConfig.tiny(bottleneck_heads=True, residual=residual)
  params = skill_model.init_params(cfg, jax.random.key(0), LENGTH)
  # Non-zero W_res (it starts at zero), so that the main path really reads x̂_t.
  if residual:
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (jax.random.normal(jax.random.key(5), x.shape) * 0.5
                         if "residual" in jax.tree_util.keystr(path) else x), params)
  apply = jax.jit(skill_model.SkillModel(cfg).apply, compiler_options=FAST_COMPILE)
  return cfg, params, apply


def test_bottleneck_heads_see_the_frames_only_through_the_chunks():
  """Changing z at a frame u strictly inside a chunk [a, b) (boundaries unchanged) leaves that
  stage's bottleneck prediction at every t < b unchanged (it reads z_{<= a} only), while the
  main prediction at u (through the residual x̂_u) and at later chunks does change."""
  cfg, params, apply = bottleneck_model()
  latents, mask = random_batch(7, batch=1, pad=(0,))
  base = apply({"params": params}, jnp.asarray(latents), jnp.asarray(mask))
  checked = 0
  for index, stage in enumerate(base.stages):
    starts = np.flatnonzero(np.asarray(stage.frame_boundary[0]))
    ends = list(starts[1:]) + [LENGTH]
    for a, b in zip(starts, ends):
      if b - a < 2:
        continue
      u = a + 1
      perturbed = latents.copy()
      perturbed[0, u] += 0.05 * np.random.RandomState(index).randn(cfg.latent_dim)
      out = apply({"params": params}, jnp.asarray(perturbed), jnp.asarray(mask))
      if not all(np.array_equal(o.frame_boundary, s.frame_boundary)
                 for o, s in zip(out.stages, base.stages)):
        continue  # the perturbation moved a boundary: not this property's case
      np.testing.assert_allclose(out.bottleneck_predictions[index][0, :b],
                                 base.bottleneck_predictions[index][0, :b], atol=1e-5)
      assert not np.allclose(out.prediction[0, u], base.prediction[0, u], atol=1e-6)
      checked += 1
  assert checked >= 2


def test_bottleneck_loss_trains_the_router():
  """The bottleneck heads' l1 alone has a non-zero gradient on both stages' routing weights
  (through the EMA and the confidence STE), and on nothing of the main head."""
  cfg, params, apply = bottleneck_model(residual=False)
  latents, mask = random_batch(8)
  module = skill_model.SkillModel(cfg)

  def aux_only(p):
    out = module.apply({"params": p}, jnp.asarray(latents), jnp.asarray(mask))
    return sum(skill_losses.latent_l1(a, jnp.asarray(latents), jnp.asarray(mask))
               for a in out.bottleneck_predictions)

  grads = jax.grad(aux_only)(params)
  assert "residual" not in params["stage"]
  routing = [grads["stage"]["routing"], grads["stage"]["main"]["routing"]]
  for g in routing:
    assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree_util.tree_leaves(g))
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree_util.tree_leaves(grads["head"]))


def test_bottleneck_weight_needs_bottleneck_heads():
  latents, mask = random_batch(9)
  batch = {"latents": jnp.asarray(latents), "mask": jnp.asarray(mask)}
  with pytest.raises(ValueError, match="bottleneck_heads"):
    skill_losses.skill_loss(tiny_params(), skill_model.SkillModel(CONFIG), batch,
                            jax.random.key(0), lambda_rec=0.0, lambda_ratio=0.03, lambda_aux=1.0)
  cfg, params, _ = bottleneck_model()
  loss, metrics = skill_losses.skill_loss(params, skill_model.SkillModel(cfg), batch,
                                          jax.random.key(0), lambda_rec=0.0, lambda_ratio=0.03,
                                          lambda_aux=0.5)
  without = skill_losses.skill_loss(params, skill_model.SkillModel(cfg), batch,
                                    jax.random.key(0), lambda_rec=0.0, lambda_ratio=0.03)[0]
  np.testing.assert_allclose(loss, without + 0.5 * (metrics["aux_l1/s1"] + metrics["aux_l1/s2"]),
                             rtol=1e-5)


@functools.lru_cache(maxsize=None)
def segment_model(code_dim: int = 0):
  """The non-causal segment-reconstruction variant (SkillModelConfig.causal=False)."""
  cfg = skill_model.SkillModelConfig.tiny(causal=False, bottleneck_heads=True,
                                          bottleneck_target="current",
                                          bottleneck_code_dim=code_dim)
  params = skill_model.init_params(cfg, jax.random.key(0), LENGTH)
  apply = jax.jit(skill_model.SkillModel(cfg).apply, compiler_options=FAST_COMPILE)
  return cfg, params, apply


def test_segment_variant_validation():
  with pytest.raises(ValueError, match="causal=False"):
    skill_model.SkillModelConfig.tiny(bottleneck_heads=True, bottleneck_target="current")
  with pytest.raises(ValueError, match="bottleneck_target"):
    skill_model.SkillModelConfig.tiny(causal=False, bottleneck_target="previous")
  with pytest.raises(ValueError, match="bottleneck_code_dim"):
    skill_model.SkillModelConfig.tiny(bottleneck_code_dim=-1)
  cfg, params, _ = segment_model()
  assert skill_model.SkillModelConfig.from_dict(cfg.to_dict()) == cfg
  latents, mask = random_batch(10)
  batch = {"latents": jnp.asarray(latents), "mask": jnp.asarray(mask)}
  # The next-latent loss of a model that sees z_{t+1} at t would train a copy: refused.
  with pytest.raises(ValueError, match="lambda_latent"):
    skill_losses.skill_loss(params, skill_model.SkillModel(cfg), batch, jax.random.key(0),
                            lambda_rec=0.0, lambda_ratio=0.03, lambda_aux=1.0)


def test_non_causal_variant_sees_the_future_and_the_causal_one_does_not():
  """Changing only the last frames moves the non-causal model's routing probabilities and
  reconstructions at the first frames; the causal model's (test_causality_through_chunking)
  stay put."""
  _, _, apply = segment_model()
  params = segment_model()[1]
  latents, mask = random_batch(11, batch=1, pad=(0,))
  perturbed = latents.copy()
  perturbed[:, -3:] += 2.0
  base = apply({"params": params}, jnp.asarray(latents), jnp.asarray(mask))
  out = apply({"params": params}, jnp.asarray(perturbed), jnp.asarray(mask))
  assert not np.allclose(out.stages[0].routing.boundary_prob[:, 1:3],
                         base.stages[0].routing.boundary_prob[:, 1:3], atol=1e-6)
  assert not np.allclose(out.bottleneck_predictions[0][:, :3],
                         base.bottleneck_predictions[0][:, :3], atol=1e-6)
  causal = run(latents, mask), run(perturbed, mask)
  np.testing.assert_allclose(causal[0].stages[0].routing.boundary_prob[:, :LENGTH - 3],
                             causal[1].stages[0].routing.boundary_prob[:, :LENGTH - 3],
                             atol=1e-6)


@pytest.mark.parametrize("code_dim", [0, 3])
def test_segment_reconstruction_loss_targets_the_current_frame_and_trains_the_router(code_dim):
  """With bottleneck_target="current" and lambda_latent=0 the loss is exactly lambda_ratio *
  sum of ratio losses + lambda_aux * sum_s mean_t |ẑ^s_t - z_t| over valid frames (the frame
  itself, not t + 1); its gradient reaches both stages' routers and nothing of the unused main
  head; code_dim squeezes the chunk vector to that many dimensions."""
  cfg, params, apply = segment_model(code_dim)
  module = skill_model.SkillModel(cfg)
  latents, mask = random_batch(12)
  batch = {"latents": jnp.asarray(latents), "mask": jnp.asarray(mask)}

  def loss(p):
    return skill_losses.skill_loss(p, module, batch, jax.random.key(0), lambda_rec=0.0,
                                   lambda_ratio=0.03, lambda_aux=0.7, lambda_latent=0.0)

  (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params)
  out = apply({"params": params}, batch["latents"], batch["mask"])
  expected = 0.03 * (metrics["ratio/s1"] + metrics["ratio/s2"])
  for index, reconstruction in enumerate(out.bottleneck_predictions):
    error = np.abs(np.asarray(reconstruction) - latents).mean(-1)[mask].mean()
    np.testing.assert_allclose(metrics[f"aux_l1/s{index + 1}"], error, rtol=1e-5)
    expected += 0.7 * error
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  for g in (grads["stage"]["routing"], grads["stage"]["main"]["routing"]):
    assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree_util.tree_leaves(g))
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree_util.tree_leaves(grads["head"]))
  if code_dim:
    assert params["bottleneck_1_code"]["kernel"].shape == (cfg.widths[0], code_dim)
    assert params["bottleneck_2_code"]["kernel"].shape == (cfg.widths[1], code_dim)
  else:
    assert "bottleneck_1_code" not in params


def test_ratio_per_sequence_reaches_the_loss():
  """skill_loss(ratio_per_sequence=True) logs and adds the per-window ratio loss of each stage
  (chunking.ratio_loss with per_sequence) on the sequence that stage ran on."""
  module = skill_model.SkillModel(CONFIG)
  latents, mask = random_batch(13)
  batch = {"latents": jnp.asarray(latents), "mask": jnp.asarray(mask)}
  out = run(latents, mask)
  values = {}
  for per_sequence in (False, True):
    value, metrics = skill_losses.skill_loss(tiny_params(), module, batch, jax.random.key(0),
                                             lambda_rec=0.0, lambda_ratio=0.5,
                                             ratio_per_sequence=per_sequence)
    ratios = [chunking.ratio_loss(s.routing, s.mask, n, per_sequence=per_sequence)
              for s, n in zip(out.stages, CONFIG.target_ratios)]
    for index, want in enumerate(ratios):
      np.testing.assert_allclose(metrics[f"ratio/s{index + 1}"], want, rtol=1e-5)
    np.testing.assert_allclose(value, metrics["latent_l1"] + 0.5 * sum(ratios), rtol=1e-5)
    values[per_sequence] = float(value)
  assert values[False] != values[True]


def test_level_lr_multipliers_scale_each_levels_updates():
  """`level_lr_multipliers` (the H-Net recipe's per-stage rates): every parameter gets its
  level's multiplier — the frame-rate stage 0, stage 2's chunk sequence 1, the innermost main
  network 2 — and an AdamW step with "1,0,0" moves the outer level only."""
  from hilam_jax import training  # pylint: disable=g-import-not-at-top
  from hilam_jax.skill import trainer  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  params = tiny_params()
  levels = jax.tree_util.tree_map_with_path(lambda p, _: trainer.parameter_level(p), params)
  by_level = {}
  for path, level in jax.tree_util.tree_flatten_with_path(levels)[0]:
    by_level.setdefault(level, []).append(jax.tree_util.keystr(path))
  assert sorted(by_level) == [0, 1, 2]
  assert all("['main']" not in p for p in by_level[0])
  assert any("['input_proj']" in p for p in by_level[0])
  assert all(p.count("['main']") == 2 for p in by_level[2])  # the innermost transformer
  assert any("['main']['routing']" in p for p in by_level[1])  # stage 2's router: level 1
  # H-Net's modulation, sqrt(N^s D^S / D^s), innermost 1: widths (16, 24, 32), N = (2, 2).
  np.testing.assert_allclose(trainer.hnet_level_lr_multipliers(CONFIG),
                             (np.sqrt(4 * 32 / 16), np.sqrt(2 * 32 / 24), 1.0))

  def cfg(spec):
    return ml_collections.ConfigDict({
        "level_lr_multipliers": spec, "learning_rate": 1e-2, "warmup_steps": 0, "num_steps": 10,
        "weight_decay": 0.0, "grad_clip": 1e9})
  assert trainer.level_lr_multipliers(cfg(""), CONFIG) is None
  assert trainer.level_lr_multipliers(cfg("hnet"), CONFIG) == trainer.hnet_level_lr_multipliers(
      CONFIG)
  for bad in ("1,2", "1,x,2", "1,-1,1", "fast"):
    with pytest.raises(ValueError, match="level_lr_multipliers"):
      trainer.level_lr_multipliers(cfg(bad), CONFIG)
  config = cfg("1,0,0")
  multipliers = trainer.level_lr_multipliers(config, CONFIG)
  tx = training.make_optimizer(config, update_scale=trainer.level_update_scale(multipliers))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
  for path, level in jax.tree_util.tree_flatten_with_path(levels)[0]:
    leaf = functools.reduce(lambda node, key: node[key.key], path, moved)
    assert leaf == (level == 0), jax.tree_util.keystr(path)
