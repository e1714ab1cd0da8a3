"""The jitted skill-model train step lowers for TPU and GPU from this CPU (`jax.export`).

Both chunking paths: "fused" (plain JAX with a hand-written custom_vjp) and "pallas" (the kernels
of chunking_pallas: Mosaic on TPU, Triton on GPU, chosen per platform at lowering time). Only
lowering is checked here: compiling the Mosaic / Triton kernels and running them needs libtpu or
a GPU (docs/scale.md, "Accelerator kernels"). The fused path must export without any custom call that
lacks export compatibility guarantees; the Pallas path must contain its kernels as the
platform's kernel custom calls, and no interpreted fallback.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import export

from hilam_jax import training
from hilam_jax.skill import losses as skill_losses
from hilam_jax.skill import model as skill_model

LENGTH, BATCH = 12, 2
KERNEL_CALL = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}


@functools.lru_cache(maxsize=None)
def exported(impl: str, platform: str) -> str:
  """The StableHLO text of the skill-model train step lowered for `platform`."""
  config = skill_model.SkillModelConfig.tiny(chunk_impl=impl, bottleneck_heads=True)
  module = skill_model.SkillModel(config)
  optim = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=1, num_steps=10,
                                         weight_decay=0.0, grad_clip=1.0))
  tx = training.make_optimizer(optim)
  mesh = training.make_mesh(jax.devices()[:1])
  init = lambda rng: module.init(rng, jnp.zeros((1, LENGTH, config.latent_dim)),
                                 jnp.ones((1, LENGTH), bool))["params"]
  state = training.abstract_train_state(init, tx, mesh)
  loss_fn = functools.partial(skill_losses.skill_loss, module=module, lambda_rec=0.0,
                              lambda_ratio=0.03, lambda_aux=1.0)
  step = training.make_train_step(lambda p, b, r: loss_fn(p, batch=b, rng=r), tx, mesh)
  batch = {"latents": jax.ShapeDtypeStruct((BATCH, LENGTH, config.latent_dim), jnp.float32),
           "mask": jax.ShapeDtypeStruct((BATCH, LENGTH), jnp.bool_)}
  checks = ([export.DisabledSafetyCheck.custom_call(KERNEL_CALL["cuda"])]
            if impl == "pallas" else [])
  result = export.export(step, platforms=(platform,), disabled_checks=checks)(state, batch)
  assert result.platforms == (platform,)
  return result.mlir_module()


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_fused_train_step_lowers_with_no_custom_kernels(platform):
  text = exported("fused", platform)
  assert "stablehlo.dot_general" in text  # the gathers as one-hot matmuls, the model's layers
  assert KERNEL_CALL[platform] not in text


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_pallas_train_step_lowers_to_the_platforms_kernels(platform):
  text = exported("pallas", platform)
  # Two stages x (chunk fwd + bwd, dechunk fwd + bwd) = 8 kernels; the dechunk forward runs a
  # second time in the backward pass's residual computation at most, so >= 8.
  assert text.count(KERNEL_CALL[platform]) >= 8, text.count(KERNEL_CALL[platform])
  other = KERNEL_CALL["cuda" if platform == "tpu" else "tpu"]
  assert other not in text


def test_pallas_paths_pad_to_aligned_tiles():
  """Kernel block sizes: powers of two, at least 16 (Triton's constraints), for any length."""
  from hilam_jax.skill import chunking_pallas  # pylint: disable=g-import-not-at-top
  assert [chunking_pallas.tile(n) for n in (1, 2, 15, 16, 17, 96, 128, 129)] == [
      16, 16, 16, 16, 32, 128, 128, 256]
  text = exported("pallas", "cuda")
  # The tiny model's levels: L = 12 -> 16, widths 16 / 24 -> 16 / 32, capacities 9 / 7 -> 16.
  for shape in ("tensor<2x16x16xf32>", "tensor<2x16x32xf32>"):
    assert shape in text, shape
  assert np.all([chunking_pallas.tile(n) & (chunking_pallas.tile(n) - 1) == 0
                 for n in range(1, 300)])
