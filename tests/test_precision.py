"""Mixed precision (`hilam_jax.training.precision`): bfloat16 compute, float32 state.

For each trainer's model and loss at a tiny size (LAM, skill model, BAKU policy), a few
`make_train_step` steps with compute_dtype="bfloat16" against float32 from the same init: the
lowered step really multiplies in bfloat16, parameters and optimizer state stay float32, the
losses stay finite and within a few percent of float32's. The skill trainer's
`config.compute_dtype` end to end: tests/test_skill_pipeline.py.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hilam_jax import lam
from hilam_jax import training
from hilam_jax.lam import losses as lam_losses
from hilam_jax.policy import BakuPolicy, HeadConfig, heads_loss, init_params
from hilam_jax.skill import losses as skill_losses
from hilam_jax.skill import model as skill_model
from hilam_jax.training import precision
from tests import test_baku

STEPS = 5


def lam_case():
  config = lam.LAMConfig.tiny(stem_stride=2, idm_widths=(8, 16), fdm_widths=(8, 16),
                              idm_mlp_width=16, fdm_cond_width=16, norm_groups=4, latent_dim=4)
  module = lam.LatentActionModel(config)
  rng = np.random.RandomState(0)
  batch = {"frame_t": rng.randint(0, 256, (4, 16, 16, 3), dtype=np.uint8),
           "frame_tk": rng.randint(0, 256, (4, 16, 16, 3), dtype=np.uint8)}
  params = lam.init_params(config, jax.random.key(0), (16, 16))
  return params, batch, lambda p, b, r: lam_losses.lam_loss(p, module, b, r)


def skill_case():
  config = skill_model.SkillModelConfig.tiny()
  module = skill_model.SkillModel(config)
  rng = np.random.RandomState(1)
  batch = {"latents": rng.randn(4, 12, config.latent_dim).astype(np.float32),
           "mask": np.arange(12)[None] < np.array([[12], [12], [9], [7]])}
  params = skill_model.init_params(config, jax.random.key(0), 12)
  return params, batch, lambda p, b, r: skill_losses.skill_loss(
      p, module, b, r, lambda_rec=0.0, lambda_ratio=0.03)


def policy_case():
  head = HeadConfig("action", "categorical", dim=5, chunk=2, hidden=(16,))
  config = test_baku.tiny_config(heads=(head,), dropout=0.0)
  module = BakuPolicy(config)
  inputs = test_baku.make_batch(config, batch=4)
  rng = np.random.RandomState(2)
  batch = {"inputs": inputs, "targets": {"action": rng.randint(0, 5, (4, 1, 2))},
           "masks": {"action": np.ones((4, 1, 2), bool)}}
  params = init_params(config, jax.random.key(0), inputs)

  def loss(p, b, r):
    out = module.apply({"params": p}, b["inputs"], train=True, heads=("action",),
                       rngs={"dropout": r})
    return heads_loss((head,), out.predictions, b["targets"], b["masks"])
  return params, batch, loss


CASES = {"lam": lam_case, "skill": skill_case, "policy": policy_case}


def _train(params, batch, loss_fn, dtype):
  mesh = training.make_mesh(jax.devices()[:1])
  tx = training.make_optimizer(ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=1, num_steps=STEPS, weight_decay=1e-4, grad_clip=1.0)))
  state = training.create_train_state(lambda _: params, tx, jax.random.key(1), mesh)
  step = training.make_train_step(loss_fn, tx, mesh, compute_dtype=dtype)
  sharded = training.shard_batch(batch, mesh)
  lowered = step.lower(state, sharded)
  # XLA's CPU backend optimisation is most of the compile time of these tiny steps.
  compiled = lowered.compile(compiler_options=(
      {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None))
  hlo = lowered.as_text()
  losses = []
  for _ in range(STEPS):
    state, metrics = compiled(state, sharded)
    losses.append(float(metrics["loss"]))
  return state, np.asarray(losses), hlo


def _bf16_products(hlo: str) -> int:
  """Matmuls / convolutions of the lowered step whose operands are bfloat16."""
  lines = [l for l in hlo.splitlines() if "dot_general" in l or "convolution" in l]
  return sum("bf16" in l.split("->")[0].split(":")[-1] for l in lines)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_steps_stay_close_to_float32_with_float32_state(name):
  params, batch, loss_fn = CASES[name]()
  state32, losses32, hlo32 = _train(params, batch, loss_fn, "float32")
  state16, losses16, hlo16 = _train(params, batch, loss_fn, "bfloat16")
  assert _bf16_products(hlo32) == 0
  assert _bf16_products(hlo16) >= 3, name  # the model's layers multiply in bfloat16
  for tree in (state16.params, state16.opt_state):
    for leaf in jax.tree.leaves(tree):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32
  assert np.all(np.isfinite(losses16)), losses16
  np.testing.assert_allclose(losses16, losses32, rtol=0.05, err_msg=name)
  assert losses32[-1] < losses32[0]  # training did move (a frozen loss would compare trivially)
  # The parameters moved alike: bfloat16 rounds the gradients (Adam then flips the sign of the
  # update of a few near-zero components), it does not make another update.
  delta = lambda state: np.concatenate([
      (np.asarray(a) - np.asarray(b)).ravel()
      for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params))])
  d16, d32 = delta(state16), delta(state32)
  cosine = d16 @ d32 / (np.linalg.norm(d16) * np.linalg.norm(d32))
  assert cosine > 0.9, (name, cosine)


def test_float32_is_the_loss_itself_and_unknown_dtypes_are_refused():
  fn = lambda p, b, r: (0.0, {})
  assert precision.compute_in("float32", fn) is fn
  with pytest.raises(ValueError, match="float16"):
    precision.compute_in("float16", fn)
  with pytest.raises(ValueError, match="compute_dtype"):
    training.check_run_config(ml_collections.ConfigDict(
        dict(num_steps=1, log_every=1, batch_size=1, compute_dtype="fp8")))

