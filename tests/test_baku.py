"""BAKU policy: shapes, jit, causality, conditioning, language (or none), masked losses, temporal
aggregation, overfit."""
import functools
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hilam_jax.policy import (BakuConfig, BakuPolicy, HeadConfig, TemporalEnsembler, head_loss,
                              heads_loss, init_params)
from hilam_jax.policy.baku import GridEncoder, ImageEncoder

ALL_HEADS = (HeadConfig("action", "continuous", dim=3, chunk=4, hidden=(16,)),
             HeadConfig("discrete", "categorical", dim=5, chunk=4, hidden=()),
             HeadConfig("latent", "latent", dim=6, chunk=4, hidden=(16, 16), loss="l1"))


def tiny_config(**overrides) -> BakuConfig:
  base = dict(encoder_channels=(8, 8, 16), stem_kernel=3, stem_stride=1, stem_maxpool=False,
              norm_groups=4, num_keypoints=8, repr_dim=32, lang_dim=12, gpt_layers=1, gpt_heads=2,
              gpt_width=16, max_tokens=32, dropout=0.1, heads=ALL_HEADS)
  base.update(overrides)
  return BakuConfig(**base)


def make_batch(cfg: BakuConfig, batch=2, hist=1, cameras=("front",), seed=0):
  rng = np.random.RandomState(seed)
  sizes = {"front": 16, "wrist": 12}  # cameras may differ in resolution
  out = {"images": {c: rng.randint(0, 256, (batch, hist, sizes.get(c, 16), sizes.get(c, 16), 3),
                                   dtype=np.uint8) for c in cameras},
         "lang": rng.randn(batch, cfg.lang_dim).astype(np.float32)}
  if cfg.proprio_dim:
    out["proprio"] = rng.randn(batch, hist, cfg.proprio_dim).astype(np.float32)
  if cfg.condition_dim:
    out["condition"] = rng.randn(batch, hist, cfg.condition_dim).astype(np.float32)
  return out


@functools.partial(jax.jit, static_argnums=0, static_argnames=("train", "heads"))
def forward(cfg, params, batch, train=False, heads=None, rng=None):
  rngs = {"dropout": rng} if train else None
  return BakuPolicy(cfg).apply({"params": params}, batch, train=train, heads=heads, rngs=rngs)


@functools.lru_cache(maxsize=None)
def setup(cfg, hist=1, cameras=("front",)):
  """(batch, params) per config, shared by tests (init compiles are the slow part on CPU)."""
  batch = make_batch(cfg, hist=hist, cameras=cameras)
  return batch, init_params(cfg, jax.random.PRNGKey(0), batch)


def perturb(params, scale=0.3, seed=1):
  """Adds Gaussian noise to every parameter (numpy noise: no per-shape PRNG compiles)."""
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda x: x + scale * rng.randn(*x.shape).astype(np.float32), params)


# One config with every input enabled, used by the jit, causality and FiLM tests.
FULL = tiny_config(proprio_dim=4, condition_dim=5, condition_mode="token")
FULL_SETUP = dict(hist=2, cameras=("front", "wrist"))

CASES = [  # (condition_mode or None, hist, cameras, proprio_dim)
    (None, 1, ("front",), 0),
    ("token", 1, ("front", "wrist"), 4),
    ("token", 2, ("front",), 0),
    ("film", 2, ("front", "wrist"), 0),
    ("film", 1, ("front",), 4),
    ("concat", 1, ("front",), 0),
    ("concat", 2, ("front", "wrist"), 4),
]


@pytest.mark.parametrize("mode,hist,cameras,proprio_dim", CASES)
def test_shapes_all_heads(mode, hist, cameras, proprio_dim):
  """Shapes by abstract evaluation of init and the jitted forward (no compile); values are
  checked on the full config in test_jit_values_and_no_recompile."""
  cfg = tiny_config(condition_dim=5 if mode else 0, condition_mode=mode or "token",
                    proprio_dim=proprio_dim)
  batch = make_batch(cfg, hist=hist, cameras=cameras)
  params = jax.eval_shape(lambda b: init_params(cfg, jax.random.PRNGKey(0), b), batch)
  assert "batch_stats" not in params
  out = jax.eval_shape(lambda p, b: forward(cfg, p, b, train=True, rng=jax.random.PRNGKey(2)),
                       params, batch)
  chex.assert_shape(out.readout, (2, hist, cfg.gpt_width))
  chex.assert_shape(out.predictions["action"], (2, hist, 4, 3))
  chex.assert_shape(out.predictions["discrete"], (2, hist, 4, 5))
  chex.assert_shape(out.predictions["latent"], (2, hist, 4, 6))
  only = jax.eval_shape(lambda p, b: forward(cfg, p, b, heads=("latent",)), params, batch)
  assert set(only.predictions) == {"latent"}  # unselected heads are not computed


def test_jit_values_and_no_recompile():
  batch, params = setup(FULL, **FULL_SETUP)
  traces = []

  @jax.jit
  def fwd(p, b, rng):
    traces.append(1)
    return BakuPolicy(FULL).apply({"params": p}, b, train=True, rngs={"dropout": rng})

  first = fwd(params, make_batch(FULL, seed=1, **FULL_SETUP), jax.random.PRNGKey(0))
  second = fwd(params, make_batch(FULL, seed=2, **FULL_SETUP), jax.random.PRNGKey(1))
  jax.block_until_ready(second)
  assert len(traces) == 1
  chex.assert_shape(second.readout, (2, 2, FULL.gpt_width))
  chex.assert_shape(second.predictions["discrete"], (2, 2, 4, 5))
  chex.assert_tree_all_finite(second)
  # The continuous head by hand from the readout: tanh(relu(x W0 + b0) W1 + b1), per chunk step.
  head = params["head_action"]
  x = np.asarray(second.readout, np.float64)
  hidden = np.maximum(x @ head["hidden_0"]["kernel"] + head["hidden_0"]["bias"], 0.0)
  by_hand = np.tanh(hidden @ head["out"]["kernel"] + head["out"]["bias"]).reshape(2, 2, 4, 3)
  np.testing.assert_allclose(second.predictions["action"], by_hand, rtol=1e-4, atol=1e-5)
  assert not np.allclose(first.predictions["action"], second.predictions["action"])


def test_causality_across_history():
  batch, params = setup(FULL, **FULL_SETUP)
  params = perturb(params)
  changed = jax.tree.map(np.copy, batch)
  for name in changed["images"]:
    changed["images"][name][:, 1] = 255 - changed["images"][name][:, 1]
  changed["proprio"][:, 1] += 1.0
  changed["condition"][:, 1] += 1.0
  a, b = forward(FULL, params, batch), forward(FULL, params, changed)
  np.testing.assert_allclose(a.readout[:, 0], b.readout[:, 0], atol=1e-6)
  assert np.abs(a.readout[:, 1] - b.readout[:, 1]).max() > 1e-4


@pytest.mark.parametrize("mode", ["token", "film", "concat"])
def test_condition_reaches_output(mode):
  cfg = FULL if mode == "token" else tiny_config(proprio_dim=4, condition_dim=5,
                                                 condition_mode=mode)
  batch, params = setup(cfg, **FULL_SETUP)
  other = dict(batch, condition=batch["condition"] + 1.0)
  diff = lambda p: np.abs(forward(cfg, p, batch).predictions["latent"]
                          - forward(cfg, p, other).predictions["latent"]).max()
  if mode == "film":  # zero-initialised FiLM is the identity: no effect at init (documented)
    assert diff(params) == 0.0
    params = perturb(params)
  assert diff(params) > 1e-5


def test_film_identity_at_init_and_language_modulates_after_perturbation():
  batch, params = setup(FULL, **FULL_SETUP)
  images = batch["images"]["front"][:, 0]
  film_a = np.zeros((2, FULL.repr_dim), np.float32)
  film_b = np.ones((2, FULL.repr_dim), np.float32)
  encode = jax.jit(lambda p, f: ImageEncoder(FULL).apply({"params": p["image_encoder"]}, images, f))
  np.testing.assert_array_equal(encode(params, film_a), encode(params, film_b))
  params = perturb(params)
  assert np.abs(encode(params, film_a) - encode(params, film_b)).max() > 1e-4
  # End to end: changing the language changes the prediction.
  other = dict(batch, lang=batch["lang"] + 1.0)
  assert np.abs(forward(FULL, params, batch).predictions["action"]
                - forward(FULL, params, other).predictions["action"]).max() > 1e-5


# pi^l without language: hist 2 x (2 cameras, proprio, condition, ACTION) = 10 tokens, no prompt.
NO_LANG = tiny_config(proprio_dim=4, condition_dim=5, use_lang=False, max_tokens=10)


def test_without_language_there_is_no_language_input():
  batch, params = setup(NO_LANG, **FULL_SETUP)
  assert "lang_mlp" not in params
  assert not any(k.startswith("film_") for k in params["image_encoder"])  # FiLM had only lang
  params = perturb(params)
  out = forward(NO_LANG, params, batch)
  other_lang = forward(NO_LANG, params, dict(batch, lang=batch["lang"] + 1.0))
  no_lang = forward(NO_LANG, params, {k: v for k, v in batch.items() if k != "lang"})
  for other in (other_lang, no_lang):
    np.testing.assert_array_equal(out.predictions["action"], other.predictions["action"])
  # The condition still reaches the output (ACTION readout read at the right tokens) ...
  moved = forward(NO_LANG, params, dict(batch, condition=batch["condition"] + 1.0))
  assert np.abs(out.predictions["action"] - moved.predictions["action"]).max() > 1e-5
  # ... and the sequence has no prompt token: 10 tokens fit max_tokens=10 only without language.
  with_lang = tiny_config(proprio_dim=4, condition_dim=5, use_lang=True, max_tokens=10)
  with pytest.raises(ValueError, match="max_tokens"):
    jax.eval_shape(lambda b: init_params(with_lang, jax.random.PRNGKey(0), b), batch)


def test_without_language_film_mode_modulates_with_the_condition_alone():
  cfg = tiny_config(condition_dim=5, condition_mode="film", use_lang=False)
  batch = make_batch(cfg)
  params = jax.eval_shape(lambda b: init_params(cfg, jax.random.PRNGKey(0), b), batch)
  assert "lang_mlp" not in params
  film = params["image_encoder"]["film_0"]["Dense_0"]["kernel"]
  assert film.shape[0] == 5  # FiLM input = the condition (Cz), no language part


def test_config_round_trip():
  for cfg in (tiny_config(condition_dim=3, condition_mode="concat"), BakuConfig.small(),
              BakuConfig.paper(), tiny_config(use_lang=False)):
    assert BakuConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
  # Checkpoints written before `use_lang` existed were trained with language.
  older = {k: v for k, v in tiny_config().to_dict().items() if k != "use_lang"}
  assert BakuConfig.from_dict(older).use_lang
  with pytest.raises(ValueError, match="film"):
    tiny_config(condition_dim=3, condition_mode="film", film=False)
  as_mapping = dict(tiny_config().to_dict(), heads={"a": {"kind": "latent", "dim": 2}})
  assert BakuConfig.from_dict(as_mapping).head_configs["a"].kind == "latent"
  with pytest.raises(ValueError):
    BakuConfig.from_dict({"nope": 1})
  with pytest.raises(ValueError):
    tiny_config(condition_mode="cross_attention")


@pytest.mark.parametrize("head", ALL_HEADS, ids=lambda h: h.kind)
def test_masked_loss_ignores_padded_steps(head):
  rng = np.random.RandomState(0)
  shape = (2, 2, head.chunk)
  prediction = jnp.asarray(rng.randn(*shape, head.dim), jnp.float32)
  if head.kind == "categorical":
    target = rng.randint(0, head.dim, shape)
    garbage = np.where(rng.rand(*shape) < 0.5, target, (target + 1) % head.dim)
  else:
    target = rng.randn(*shape, head.dim).astype(np.float32)
    garbage = target.copy()
  mask = np.ones(shape, bool)
  mask[0, 1, 2:] = False
  mask[1, 0, 1:] = False
  if head.kind != "categorical":
    garbage[~mask] = np.nan  # NaN padding must not leak either
  garbage[mask] = target[mask]
  loss_and_grad = jax.value_and_grad(lambda p, t: head_loss(head, p, t, mask)[0])
  loss_a, grad_a = loss_and_grad(prediction, target)
  loss_b, grad_b = loss_and_grad(prediction, garbage)
  assert np.isfinite(loss_b)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  np.testing.assert_allclose(grad_a, grad_b, rtol=1e-6)
  assert np.all(np.asarray(grad_a)[~mask] == 0.0)


def test_categorical_loss_by_hand():
  head = HeadConfig("d", "categorical", dim=3, chunk=2, hidden=())
  logits = jnp.asarray([[[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]]])  # [1, 1, 2, 3]
  target = np.array([[[2, 0]]])
  log_z = math.log(1 + math.e + math.e ** 2)
  loss, metrics = head_loss(head, logits, target, np.array([[[True, True]]]))
  np.testing.assert_allclose(loss, ((log_z - 2.0) + math.log(3.0)) / 2, rtol=1e-6)
  np.testing.assert_allclose(metrics["accuracy"], 1.0)  # argmax 2 is right; a tie → class 0, right
  loss, metrics = head_loss(head, logits, target, np.array([[[True, False]]]))
  np.testing.assert_allclose(loss, log_z - 2.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["accuracy"], 1.0)


def test_heads_loss_weights_and_prefixes():
  heads = (HeadConfig("a", "latent", dim=2, chunk=1), HeadConfig("b", "latent", dim=2, chunk=1,
                                                                 loss_weight=0.5))
  preds = {"a": jnp.ones((1, 1, 1, 2)), "b": jnp.ones((1, 1, 1, 2))}
  targets = {"a": jnp.zeros((1, 1, 1, 2)), "b": jnp.zeros((1, 1, 1, 2))}
  masks = {k: jnp.ones((1, 1, 1), bool) for k in preds}
  total, metrics = heads_loss(heads, preds, targets, masks)
  np.testing.assert_allclose(total, 1.5)
  # Per-head metrics are unweighted: both heads have MSE 1; "loss" is the weighted total.
  for key in ("a/loss", "a/mse", "b/loss", "b/mse"):
    np.testing.assert_allclose(metrics[key], 1.0)
  np.testing.assert_allclose(metrics["loss"], 1.5)


def test_temporal_ensembler_by_hand():
  # decay = ln 2: weights 1, 1/2, 1/4 for the oldest, second-oldest, newest available prediction.
  ens = TemporalEnsembler(num_envs=2, chunk=3, action_shape_or_num_classes=1, kind="continuous",
                          decay=math.log(2))
  chunks = [np.array([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]]),
            np.array([[10.0, 20.0, 30.0], [-10.0, -20.0, -30.0]]),
            np.array([[100.0, 200.0, 300.0], [-100.0, -200.0, -300.0]]),
            np.array([[1000.0, 2000.0, 3000.0], [-1000.0, -2000.0, -3000.0]])]
  expected = [1.0,                               # step 0: only chunk 0, offset 0
              (2.0 * 1 + 10.0 * 0.5) / 1.5,      # step 1: chunk 0 @1 (oldest), chunk 1 @0
              (3.0 + 20.0 * 0.5 + 100.0 * 0.25) / 1.75,
              (30.0 + 200.0 * 0.5 + 1000.0 * 0.25) / 1.75]  # chunk 0 has expired
  for chunk, value in zip(chunks, expected):
    ens.add(chunk[..., None])
    np.testing.assert_allclose(ens.action(), [[value], [-value]], rtol=1e-6)
  # Reset env 0 only: it restarts from its new chunk, env 1 keeps aggregating.
  ens.reset(np.array([True, False]))
  ens.add(np.array([[7.0, 8.0, 9.0], [-4.0, -5.0, -6.0]])[..., None])
  np.testing.assert_allclose(ens.action()[0], [7.0])
  np.testing.assert_allclose(ens.action()[1], [-(300.0 + 2000.0 * 0.5 + 4.0 * 0.25) / 1.75])
  # Without aggregation: the first step of the newest chunk.
  plain = TemporalEnsembler(2, 3, 1, "latent", aggregation="none")
  for chunk in chunks:
    plain.add(chunk[..., None])
    np.testing.assert_allclose(plain.action()[:, 0], chunk[:, 0])


def test_temporal_ensembler_categorical():
  # decay 0: plain mean of probabilities. Env 0: the old chunk is confident about class 2 at the
  # current step, the new one mildly prefers class 1 → 2 wins; alone, the new chunk picks 1.
  ens = TemporalEnsembler(num_envs=2, chunk=2, action_shape_or_num_classes=3, kind="categorical",
                          decay=0.0, from_logits=False)
  ens.add(np.array([[[1.0, 0, 0], [0, 0, 1.0]], [[0, 1.0, 0], [0, 1.0, 0]]]))
  np.testing.assert_array_equal(ens.action(), [0, 1])
  ens.add(np.array([[[0.3, 0.4, 0.3], [1.0, 0, 0]], [[0.5, 0.2, 0.3], [0, 0, 1.0]]]))
  np.testing.assert_allclose(ens.aggregate()[0], [0.15, 0.2, 0.65])
  np.testing.assert_array_equal(ens.action(), [2, 1])
  ens.reset(np.array([True, False]))
  with pytest.raises(RuntimeError):
    ens.action()  # env 0 has no prediction since its reset
  ens.add(np.array([[[0.3, 0.4, 0.3], [1.0, 0, 0]], [[0.1, 0.1, 0.8], [1.0, 0, 0]]]))
  np.testing.assert_array_equal(ens.action(), [1, 2])  # env 1: mean(0,0,1 ; .1,.1,.8) → 2
  # Logits are softmaxed: equal-weight logits (0, log 3) vs (log 3, 0) cancel → tie → class 0.
  logit = TemporalEnsembler(1, 2, 2, "categorical", decay=0.0)
  logit.add(np.array([[[0.0, 0.0], [0.0, math.log(3)]]]))
  logit.add(np.array([[[math.log(3), 0.0], [0.0, 0.0]]]))
  np.testing.assert_allclose(logit.aggregate(), [[0.5, 0.5]])


def test_temporal_ensembler_samples_categorical_actions_with_their_probabilities():
  probs = np.array([0.1, 0.6, 0.0, 0.3])
  ens = TemporalEnsembler(num_envs=4000, chunk=1, action_shape_or_num_classes=4,
                          kind="categorical", from_logits=False)
  ens.add(np.broadcast_to(probs, (4000, 1, 4)))
  actions = ens.action(np.random.default_rng(0))
  frequencies = np.bincount(actions, minlength=4) / 4000
  np.testing.assert_allclose(frequencies, probs, atol=0.025)  # ~3.5 binomial sd
  assert frequencies[2] == 0  # a zero-probability class is never drawn
  np.testing.assert_array_equal(ens.action(np.random.default_rng(5)),
                                ens.action(np.random.default_rng(5)))
  np.testing.assert_array_equal(ens.action(), np.ones(4000))  # argmax without an rng
  continuous = TemporalEnsembler(1, 1, 2, "continuous")
  continuous.add(np.zeros((1, 1, 2)))
  with pytest.raises(ValueError, match="categorical"):
    continuous.action(np.random.default_rng(0))


def test_small_config_overfits_fixed_batch():
  cfg = BakuConfig.small(heads=(HeadConfig("action", "categorical", dim=6, chunk=2,
                                           hidden=(128,)),))
  rng = np.random.RandomState(0)
  batch = {"images": {"front": rng.randint(0, 256, (8, 1, 56, 56, 3), dtype=np.uint8)},
           "lang": rng.randn(8, cfg.lang_dim).astype(np.float32)}
  target = rng.randint(0, 6, (8, 1, 2))
  mask = np.ones((8, 1, 2), bool)
  head = cfg.head_configs["action"]
  model = BakuPolicy(cfg)
  params = init_params(cfg, jax.random.PRNGKey(0), batch)
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    def loss_fn(p):
      out = model.apply({"params": p}, batch, train=True, rngs={"dropout": key})
      return head_loss(head, out.predictions["action"], target, mask)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  eval_acc = jax.jit(lambda p: head_loss(head, model.apply({"params": p}, batch).predictions[
      "action"], target, mask)[1]["accuracy"])
  key = jax.random.PRNGKey(1)
  acc = 0.0
  for i in range(200):
    params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i))
    if i % 10 == 9:
      acc = float(eval_acc(params))
      if acc > 0.9:
        break
  assert acc > 0.9, f"accuracy {acc} after {i + 1} steps (loss {float(loss):.3f})"


# ----------------------------------------------------------------------------- grid encoder


def grid_config(pooling="flatten", **overrides) -> BakuConfig:
  return tiny_config(encoder="grid", grid_cell=4, grid_blocks=2, pooling=pooling, **overrides)


def grid_images(batch=2, cells=4, cell=4, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (batch, cells * cell, cells * cell, 3),
                                             dtype=np.uint8)


@pytest.mark.parametrize("pooling", ["flatten", "spatial_softmax"])
def test_grid_encoder_shapes_and_one_vector_per_cell(pooling):
  cfg = grid_config(pooling)
  images = grid_images()
  film = np.zeros((2, cfg.repr_dim), np.float32)
  encoder = GridEncoder(cfg)
  variables = encoder.init(jax.random.PRNGKey(0), images, film)
  params = variables["params"]
  assert params["cell_conv"]["kernel"].shape == (4, 4, 3, cfg.encoder_channels[0])
  assert sorted(k for k in params if k.startswith("block_")) == ["block_0", "block_1"]
  out = encoder.apply(variables, images, film)
  assert out.shape == (2, cfg.repr_dim)
  # Flatten keeps every cell: proj reads cells² · C inputs; spatial softmax reads 2K coordinates.
  expected_in = 16 * cfg.encoder_channels[0] if pooling == "flatten" else 2 * cfg.num_keypoints
  assert params["proj"]["kernel"].shape == (expected_in, cfg.repr_dim)
  # Changing one pixel inside cell (0, 0) (before the 3x3 blocks spread it) changes the output;
  # an image whose side is not a multiple of the cell is refused.
  changed = images.copy()
  changed[:, 1, 2] = 255 - changed[:, 1, 2]
  assert np.abs(encoder.apply(variables, changed, film) - out).max() > 1e-6
  with pytest.raises(ValueError, match="multiple"):
    encoder.apply(variables, grid_images()[:, :15, :15], film)


def test_grid_encoder_cells_are_aligned_and_flatten_sees_where():
  """Swapping two whole cells swaps their cell-conv vectors exactly and changes the flat code."""
  cfg = grid_config("flatten", film=False)
  images = grid_images(cells=4, cell=4)
  swapped = images.copy()
  swapped[:, 0:4, 0:4], swapped[:, 0:4, 12:16] = images[:, 0:4, 12:16], images[:, 0:4, 0:4]
  encoder = GridEncoder(cfg)
  variables = encoder.init(jax.random.PRNGKey(0), images, None)
  assert np.abs(encoder.apply(variables, swapped, None)
                - encoder.apply(variables, images, None)).max() > 1e-4
  # The cell conv (kernel = stride = cell) is per-cell: swapping two cells swaps their vectors.
  kernel = variables["params"]["cell_conv"]["kernel"]
  def conv(x):
    x = (x / 255.0 - np.asarray((0.485, 0.456, 0.406))) / np.asarray((0.229, 0.224, 0.225))
    return jax.lax.conv_general_dilated(x.astype(np.float32), kernel, (4, 4), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  a, b = np.asarray(conv(images)), np.asarray(conv(swapped))
  np.testing.assert_allclose(a[:, 0, 0], b[:, 0, 3], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(a[:, 1:], b[:, 1:], rtol=1e-5, atol=1e-5)


def test_grid_encoder_film_identity_at_init_and_effect_after_perturbation():
  cfg = grid_config("flatten")
  images = grid_images()
  film_a = np.zeros((2, cfg.repr_dim), np.float32)
  film_b = np.ones((2, cfg.repr_dim), np.float32)
  encoder = GridEncoder(cfg)
  params = encoder.init(jax.random.PRNGKey(0), images, film_a)["params"]
  encode = jax.jit(lambda p, f: encoder.apply({"params": p}, images, f))
  np.testing.assert_array_equal(encode(params, film_a), encode(params, film_b))
  params = perturb(params)
  assert np.abs(encode(params, film_a) - encode(params, film_b)).max() > 1e-4


@pytest.mark.parametrize("pooling", ["flatten", "spatial_softmax"])
def test_grid_policy_end_to_end_gradients_finite(pooling):
  """The grid encoder inside BakuPolicy (trunk + chunked heads): finite, non-zero gradients."""
  cfg = grid_config(pooling, proprio_dim=4)
  rng = np.random.RandomState(0)
  batch = {"images": {"front": grid_images()[:, None]},
           "lang": rng.randn(2, cfg.lang_dim).astype(np.float32),
           "proprio": rng.randn(2, 1, 4).astype(np.float32)}
  params = init_params(cfg, jax.random.PRNGKey(0), batch)
  assert "cell_conv" in params["image_encoder"]
  targets = {"discrete": rng.randint(0, 5, (2, 1, 4)), "action": rng.randn(2, 1, 4, 3),
             "latent": rng.randn(2, 1, 4, 6)}
  masks = {k: np.ones((2, 1, 4), bool) for k in targets}
  def loss(p):
    out = BakuPolicy(cfg).apply({"params": p}, batch)
    return heads_loss(cfg.heads, out.predictions, targets, masks)[0]
  grads = jax.jit(jax.grad(loss))(params)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert np.abs(np.asarray(grads["image_encoder"]["cell_conv"]["kernel"])).max() > 0
  with pytest.raises(ValueError):
    grid_config(pooling="mean")
  with pytest.raises(ValueError):
    tiny_config(encoder="vit")
  assert BakuConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
