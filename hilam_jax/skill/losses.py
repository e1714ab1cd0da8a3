"""Training objective of the skill model (HiLAM, ../shared/METHOD.md section 3) and its metrics.

  L = lambda_latent * L_latent + lambda_rec * L_rec + lambda_ratio * sum_s L_ratio^s
      [+ lambda_aux * sum_s L_aux^s]      (lambda_latent = 1 in the paper's objective)

  L_latent  l1 between the prediction made at t, ẑ^0_{t+1}, and the IDM's z^0_{t+1}, averaged over
            latent dimensions and over the valid pairs (t, t+1) of the window.
  L_rec     the frozen FDM decodes I_{t+k} from I_t and the *predicted* latent ẑ^0_t (made at t-1);
            its error keeps the predicted latents "actionable". Gradients go through the frozen
            FDM into the skill model only (the `FrozenDynamicsModel` stops them at its params).
            Skipped when no frozen model is given or lambda_rec == 0.
  L_ratio   H-Net's ratio loss per stage (`chunking.ratio_loss`), target downsampling N^s.
  L_aux     with `SkillModelConfig.bottleneck_heads`: the l1 of each stage's bottleneck
            prediction (ẑ^0_{t+1} from the frames seen only through that stage's chunks), a
            segment-level objective for the router. Not part of the paper's objective. With
            `bottleneck_target="current"` the l1 of z^0_t reconstructed from the frame's own
            chunk (segment reconstruction; a non-causal model, trained with lambda_latent = 0).

Metrics (float32 scalars, log the dict as is):
  loss, latent_l1, rec (if computed), ratio/s{s}, aux_l1/s{s} (bottleneck heads)
  boundary_rate/s{s}      fraction of the stage's valid input positions that start a chunk (the
                          ratio loss pushes it towards 1 / N^s)
  frame_boundary_rate/s{s} the same at frame rate (fraction of valid frames starting a stage-s
                          chunk; about 1 / (N^1 ... N^s))
  mean_chunk_len/s{s}     valid frames per stage-s chunk (frames / frame-rate boundaries)
  overflow/s{s}           boundaries beyond the chunk capacity (they start no chunk), summed over
                          the batch
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp

from hilam_jax.skill import chunking
from hilam_jax.skill import model as skill_model
from hilam_jax.training.train_state import unwrap_params

Batch = dict[str, jax.Array]


def _masked_mean(values: jax.Array, weight: jax.Array) -> jax.Array:
  """Weighted mean of values (same shape as weight); 0 if the weight sums to 0."""
  weight = weight.astype(jnp.float32)
  return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def latent_l1(prediction: jax.Array, latents: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean |ẑ_{t+1} - z_{t+1}| over dims and valid (t, t+1) pairs; prediction[:, t] targets t+1."""
  pair_valid = mask[:, :-1] & mask[:, 1:]  # [B, L-1]
  error = jnp.mean(jnp.abs(prediction[:, :-1] - latents[:, 1:]), axis=-1)  # [B, L-1]
  return _masked_mean(error, pair_valid)


def current_latent_l1(reconstruction: jax.Array, latents: jax.Array,
                      mask: jax.Array) -> jax.Array:
  """Mean |ẑ_t - z_t| over dims and valid frames t (reconstruction[:, t] targets z_t itself)."""
  error = jnp.mean(jnp.abs(reconstruction - latents), axis=-1)  # [B, L]
  return _masked_mean(error, mask)


def reconstruction_term(frozen_lam, prediction: jax.Array, frame_t: jax.Array,
                        frame_tk: jax.Array, valid: jax.Array,
                        rng: Optional[jax.Array] = None,
                        positions: Optional[jax.Array] = None) -> jax.Array:
  """Frozen-FDM loss of I_t -> I_{t+k} with the predicted latent ẑ^0_t (made at t - 1).

  Args:
    frozen_lam: a `hilam_jax.lam.FrozenDynamicsModel`.
    prediction: [B, L, Dz], prediction[:, t - 1] is ẑ^0_t.
    frame_t, frame_tk: uint8 [B, L, H, W, 3], the pair (I_t, I_{t+k}) of every frame t; or, with
      `positions`, [B, K, H, W, 3] for the K window positions listed there.
    valid: [B, L] bool, frames t whose pair is real; t = 0 has no prediction and is skipped. With
      `positions`: [B, K], pairs that are real and whose t >= 1 has a valid t - 1.
    rng: passed on for stochastic (diffusion) FDMs.
    positions: optional int [B, K] window positions t >= 1 of the given pairs (a random subset:
      the FDM then runs on B * K pairs instead of B * L).

  Returns:
    Scalar mean of the per-pair loss over valid pairs t >= 1 with a valid t - 1.
  """
  if positions is not None:
    batch, num = positions.shape
    previous = jnp.maximum(positions - 1, 0)[..., None]  # [B, K, 1]
    z = jnp.take_along_axis(prediction, previous, axis=1)  # [B, K, Dz]
    z = z.reshape(batch * num, prediction.shape[-1])  # [N, Dz]; explicit Dz: N may be 0
    per_pair = frozen_lam.reconstruction_loss(
        frame_t.reshape(batch * num, *frame_t.shape[2:]), z,
        frame_tk.reshape(batch * num, *frame_tk.shape[2:]), rng=rng, per_sample=True)  # [N]
    return _masked_mean(per_pair, (valid & (positions >= 1)).reshape(batch * num))
  batch, length = valid.shape
  pair_valid = valid[:, 1:] & valid[:, :-1]  # [B, L-1]: ẑ_t exists and the pair is real
  n = batch * (length - 1)
  # Explicit Dz: reshape(0, -1) is ambiguous (L = 1 has no pair).
  z = prediction[:, :-1].reshape(n, prediction.shape[-1])  # [N, Dz]
  images_t = frame_t[:, 1:].reshape(n, *frame_t.shape[2:])  # [N, H, W, 3]
  images_tk = frame_tk[:, 1:].reshape(n, *frame_tk.shape[2:])
  per_pair = frozen_lam.reconstruction_loss(images_t, z, images_tk, rng=rng,
                                            per_sample=True)  # [N]
  return _masked_mean(per_pair, pair_valid.reshape(n))


def skill_loss(params: Any, module: skill_model.SkillModel, batch: Batch, rng: jax.Array, *,
               frozen_lam=None, lambda_rec: float, lambda_ratio: float,
               lambda_aux: float = 0.0, lambda_latent: float = 1.0,
               ratio_per_sequence: bool = False, return_output: bool = False):
  """HiLAM's skill-model loss with boundary/chunk diagnostics.

  Args:
    params: the model's inner params dict (or {"params": ...}); the argument to differentiate.
    module: the `SkillModel` (static: close over it or use functools.partial under jit).
    batch: "latents" float32 [B, L, Dz], "mask" bool [B, L]; for L_rec also "frame_t" and
      "frame_tk" uint8 [B, L, H, W, 3] and optionally "frame_mask" bool [B, L] (frames t whose
      pair (I_t, I_{t+k}) is real; defaults to "mask"). Or a subset of K positions per window:
      "frame_positions" int32 [B, K] (t >= 1), "frame_t"/"frame_tk" [B, K, H, W, 3] and
      "frame_mask" [B, K] (as `trainer.sample_frame_pairs` emits).
    rng: for a stochastic frozen model's reconstruction loss (the skill model is deterministic).
    frozen_lam: a `hilam_jax.lam.FrozenDynamicsModel` whose latent_dim equals the model's Dz, or
      None to skip L_rec.
    lambda_rec: weight of L_rec (OPEN in the paper); 0 skips it.
    lambda_ratio: weight of the summed ratio losses (OPEN; H-Net uses 0.03).
    lambda_aux: weight of the summed bottleneck-head l1s (needs `bottleneck_heads`; 0 skips).
    lambda_latent: weight of L_latent (1 in the paper). A non-causal model (`causal=False`) sees
      z^0_{t+1} at t, so its L_latent says nothing: it must be 0 there (L_latent is still logged).
    ratio_per_sequence: the ratio loss per window, averaged (`chunking.ratio_loss`), instead of
      pooled over the batch as in H-Net.
    return_output: also return the `SkillModelOutput` (for logging boundaries).

  Returns:
    (loss, metrics), or (loss, (metrics, output)) with return_output; metrics as in the module
    docstring.
  """
  config = module.config
  if not config.causal and lambda_latent:
    raise ValueError(f"skill_loss: lambda_latent={lambda_latent} with a non-causal model "
                     "(SkillModelConfig.causal=False): its prediction at t sees z^0_{t+1}, so the "
                     "next-latent loss would train a copy; set lambda_latent=0")
  if not config.causal and frozen_lam is not None and lambda_rec:
    raise ValueError("skill_loss: lambda_rec > 0 needs a causal model (L_rec decodes with the "
                     "predicted next latent, which a non-causal model can copy)")
  latents, mask = batch["latents"].astype(jnp.float32), batch["mask"].astype(bool)
  output = module.apply({"params": unwrap_params(params)}, latents, mask)

  l1 = latent_l1(output.prediction, latents, mask)
  loss = lambda_latent * l1
  metrics = {"latent_l1": l1}

  if frozen_lam is not None and lambda_rec:
    if "frame_t" not in batch or "frame_tk" not in batch:
      raise ValueError("skill_loss: lambda_rec > 0 with a frozen model needs batch['frame_t'] "
                       "and batch['frame_tk'] (uint8 [B, L, H, W, 3])")
    if frozen_lam.latent_dim != config.latent_dim:
      raise ValueError(f"skill_loss: frozen model latent_dim {frozen_lam.latent_dim} != skill "
                       f"model latent_dim {config.latent_dim}")
    if "frame_positions" in batch:
      positions = batch["frame_positions"].astype(jnp.int32)  # [B, K]
      at = lambda m, p: jnp.take_along_axis(m, jnp.clip(p, 0, m.shape[1] - 1), axis=1)
      frame_valid = (batch["frame_mask"].astype(bool) & at(mask, positions)
                     & at(mask, positions - 1))
      rec = reconstruction_term(frozen_lam, output.prediction, batch["frame_t"],
                                batch["frame_tk"], frame_valid, rng, positions=positions)
    else:
      frame_valid = mask & batch.get("frame_mask", mask).astype(bool)
      rec = reconstruction_term(frozen_lam, output.prediction, batch["frame_t"],
                                batch["frame_tk"], frame_valid, rng)
    loss = loss + lambda_rec * rec
    metrics["rec"] = rec

  ratio_total = jnp.zeros((), jnp.float32)
  frames = jnp.maximum(jnp.sum(mask), 1)
  for index, (stage, ratio) in enumerate(zip(output.stages, config.target_ratios)):
    name = f"s{index + 1}"
    ratio_loss = chunking.ratio_loss(stage.routing, stage.mask, ratio,
                                     per_sequence=ratio_per_sequence)
    ratio_total = ratio_total + ratio_loss
    boundaries = stage.routing.boundary_mask & stage.mask
    frame_boundaries = jnp.sum(stage.frame_boundary)
    metrics.update({
        f"ratio/{name}": ratio_loss,
        f"boundary_rate/{name}": jnp.sum(boundaries) / jnp.maximum(jnp.sum(stage.mask), 1),
        f"frame_boundary_rate/{name}": frame_boundaries / frames,
        f"mean_chunk_len/{name}": jnp.sum(mask) / jnp.maximum(frame_boundaries, 1),
        f"overflow/{name}": jnp.sum(stage.chunks.overflow),
    })
  loss = loss + lambda_ratio * ratio_total
  if lambda_aux:
    if not output.bottleneck_predictions:
      raise ValueError("skill_loss: lambda_aux > 0 needs SkillModelConfig.bottleneck_heads=True")
    aux_l1_fn = current_latent_l1 if config.bottleneck_target == "current" else latent_l1
    for index, aux in enumerate(output.bottleneck_predictions):
      aux_l1 = aux_l1_fn(aux, latents, mask)
      metrics[f"aux_l1/s{index + 1}"] = aux_l1
      loss = loss + lambda_aux * aux_l1
  metrics["loss"] = loss
  metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
  if return_output:
    return loss, (metrics, output)
  return loss, metrics
