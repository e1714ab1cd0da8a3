"""Training loss of the latent action model and the diagnostics that reveal a collapsed latent.

A LAM can reach a decent reconstruction loss without its latent meaning anything: the FDM learns
the average future from I_t alone and z is ignored (collapse). The metrics here measure how much
of the reconstruction z is responsible for:

  recon_mse             FDM error with the IDM's own z (the training loss, before regularisers).
  recon_mse_shuffled_z  FDM error when every sample gets another sample's z (a derangement of the
                        batch): the z-ablated FDM.
  z_gain                1 - recon_mse / recon_mse_shuffled_z, the fraction of the z-ablated error
                        that the right z removes. About 0 for a collapsed latent.
  copy_mse              error of predicting I_t itself (the floor a delta-predicting FDM starts at).
  z_var/{mean,min,max}  per-dimension batch variance of z; dims with ~0 variance are dead.
  z_abs/mean            mean |z|, to watch the latent's scale.
  fsq/usage             distinct codes in the batch / codebook size K (at most B / K).
  fsq/unique_codes      distinct codes in the batch.
  fsq/perplexity        exp(entropy) of the batch's code histogram (1 = one code for everything).
  z_l2, z_std_hinge     the optional regularisers of the continuous latent, when enabled.
  loss                  the total loss (recon_mse + weighted regularisers).

Every metric is a float32 scalar so a trainer can log the dict as is. Pixel errors are means over
H, W and channels in the [-1, 1] pixel space, averaged over valid samples.
"""
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp

from hilam_jax.lam import model as lam_model
from hilam_jax.training.train_state import unwrap_params  # also losses.unwrap_params of interface

Batch = dict[str, jax.Array]


def masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean of [B] values over samples with valid > 0 (0 if none is valid)."""
  return jnp.sum(values * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def per_sample_mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """[B, H, W, 3] x2 -> [B] mean squared error over pixels and channels."""
  return jnp.mean(jnp.square(prediction - target), axis=(1, 2, 3))


@flax.struct.dataclass
class LatentStatistics:
  """Masked batch statistics of a latent z [B, D]: per-dimension mean and variance, both [D]."""
  mean: jax.Array
  var: jax.Array


def latent_statistics(z: jax.Array, valid: Optional[jax.Array] = None) -> LatentStatistics:
  """Per-dimension mean and (biased) variance of z [B, D] over valid samples."""
  valid = jnp.ones(z.shape[:1], jnp.float32) if valid is None else valid.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(valid), 1.0)
  mean = jnp.sum(z * valid[:, None], axis=0) / count  # [D]
  var = jnp.sum(jnp.square(z - mean) * valid[:, None], axis=0) / count  # [D]
  return LatentStatistics(mean=mean, var=var)


def codebook_statistics(codes: jax.Array, codebook_size: int,
                        valid: Optional[jax.Array] = None) -> dict[str, jax.Array]:
  """Usage fraction, distinct-code count and perplexity of int codes [B] over valid samples."""
  valid = jnp.ones(codes.shape, jnp.float32) if valid is None else valid.astype(jnp.float32)
  counts = jnp.bincount(codes, weights=valid, length=codebook_size)  # [K]
  unique = jnp.sum(counts > 0).astype(jnp.float32)
  probs = counts / jnp.maximum(jnp.sum(counts), 1.0)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
  return {"fsq/usage": unique / codebook_size, "fsq/unique_codes": unique,
          "fsq/perplexity": jnp.exp(entropy)}


def derangement(rng: jax.Array, batch_size: int) -> jax.Array:
  """A random permutation of range(B) without fixed points (for B > 1): sample i gets perm[i]."""
  order = jax.random.permutation(rng, batch_size)
  # order[j] takes the z of order[j + 1]: a single cycle through all samples.
  return jnp.zeros(batch_size, jnp.int32).at[order].set(jnp.roll(order, -1).astype(jnp.int32))


def lam_loss(params: Any, module: lam_model.LatentActionModel, batch: Batch, rng: jax.Array,
             *, diagnostics: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Pixel MSE of the FDM reconstruction of I_{t+k} (+ optional z L2), with collapse diagnostics.

  Args:
    params: the model's inner params dict (or {"params": ...}); the argument to differentiate.
    module: the `LatentActionModel` (static: close over it or use functools.partial under jit).
    batch: "frame_t", "frame_tk" uint8 [B, H, W, 3]; optional "valid" [B] (1 real, 0 padding).
    rng: used only for the z shuffle of the diagnostics (the model is deterministic).
    diagnostics: compute recon_mse_shuffled_z / z_gain (one extra FDM forward pass, no backward)
      and the latent statistics. Turn off for the leanest training step.

  Returns:
    (loss, metrics): scalar loss and a dict of float32 scalars (see the module docstring).
  """
  variables = {"params": unwrap_params(params)}
  frame_t, frame_tk = batch["frame_t"], batch["frame_tk"]
  batch_size = frame_t.shape[0]
  valid = batch.get("valid")
  valid = jnp.ones((batch_size,), jnp.float32) if valid is None else valid.astype(jnp.float32)

  out = module.apply(variables, frame_t, frame_tk)
  target = lam_model.normalize_frames(frame_tk)
  recon_mse = masked_mean(per_sample_mse(out.prediction, target), valid)
  loss = recon_mse
  metrics = {"recon_mse": recon_mse}
  config = module.config
  if config.bottleneck == "none" and config.z_l2_weight > 0:
    z_l2 = masked_mean(jnp.mean(jnp.square(out.latent.z_pre), axis=-1), valid)
    loss = loss + config.z_l2_weight * z_l2
    metrics["z_l2"] = z_l2
  if config.bottleneck == "none" and config.z_std_weight > 0:
    std = jnp.sqrt(latent_statistics(out.latent.z_pre, valid).var + 1e-4)  # [D]
    z_std_hinge = jnp.mean(jax.nn.relu(config.z_std_target - std))
    loss = loss + config.z_std_weight * z_std_hinge
    metrics["z_std_hinge"] = z_std_hinge
  metrics["loss"] = loss

  if diagnostics:
    frozen = jax.lax.stop_gradient(variables)
    z = jax.lax.stop_gradient(out.latent.z)
    z_shuffled = z[derangement(rng, batch_size)]  # [B, D]
    prediction_shuffled = module.apply(frozen, frame_t, z_shuffled,
                                       method=lam_model.LatentActionModel.decode)
    shuffled_mse = masked_mean(per_sample_mse(prediction_shuffled, target), valid)
    copy_mse = masked_mean(per_sample_mse(lam_model.normalize_frames(frame_t), target), valid)
    stats = latent_statistics(z, valid)
    metrics.update({
        "recon_mse_shuffled_z": shuffled_mse,
        "z_gain": 1.0 - jax.lax.stop_gradient(recon_mse) / jnp.maximum(shuffled_mse, 1e-12),
        "copy_mse": copy_mse,
        "z_var/mean": jnp.mean(stats.var),
        "z_var/min": jnp.min(stats.var),
        "z_var/max": jnp.max(stats.var),
        "z_abs/mean": masked_mean(jnp.mean(jnp.abs(z), axis=-1), valid),
    })
    if out.latent.codes is not None:
      metrics.update(codebook_statistics(out.latent.codes, module.fsq.codebook_size, valid))
  return loss, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
