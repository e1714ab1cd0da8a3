"""Policy heads (MLP → action chunk) and their masked losses.

A head reads the trunk's ACTION-token readout and predicts a chunk of `chunk` future steps. Several
heads share one trunk (e.g. a `latent` head for pretraining on pseudo-labels and a `continuous`
action head added for fine-tuning), so heads are configured as a tuple of named `HeadConfig`s.

Dimension glossary:
  B      batch
  H      history length (one ACTION token, hence one prediction, per history step)
  F      head input width (trunk width, + condition_dim in `concat` condition mode)
  chunk  action-chunk length (`HeadConfig.chunk`)
  A      per-step output size: action dim (continuous), number of classes (categorical), latent dim

Kinds:
  continuous   tanh output [B, H, chunk, A]. Loss: MSE (default) or L1. BAKU trains its
               deterministic head with a Gaussian NLL of fixed std σ = 0.1; that NLL is
               0.5·(a − μ)²/σ² + const = MSE / (2σ²) + const per element, i.e. the MSE up to a
               constant factor (absorbed by the learning rate), so we use the plain MSE.
  categorical  logits [B, H, chunk, A]; targets are integer class ids [B, H, chunk]. Loss:
               cross-entropy; metrics also report accuracy.
  latent       plain linear regression [B, H, chunk, A] (no squashing: latent actions z⁰ and skills
               z̄² are unbounded). Loss: MSE (default) or L1. With target statistics
               (`target_mean`, `target_std`, e.g. the training labels' per-dimension z-score) the
               head predicts mean + std · out and its loss is taken on (prediction − target) / std:
               the regression is fitted in z-score units (every dimension weighs the same however
               small its spread), while predictions stay in the targets' own units (a skill π^h
               predicts is the skill π^l was trained on).

Masks: every loss takes a bool mask [B, H, chunk] (False for chunk steps padded past the end of an
episode) and returns the mean over valid steps (and over A for regression); masked targets are
replaced by a constant before use so that they influence neither the loss nor its gradient, even if
they hold NaN padding.
"""
import dataclasses
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from hilam_jax import config_io

HEAD_KINDS = ("continuous", "categorical", "latent")
_LOSSES = {"continuous": ("mse", "l1"), "latent": ("mse", "l1"), "categorical": ("cross_entropy",)}


@dataclasses.dataclass(frozen=True)
class HeadConfig(config_io.DictConfig):
  """One named head on the ACTION-token readout.

  Attributes:
    name: key of the head's prediction, target and mask (e.g. "action", "latent").
    kind: "continuous", "categorical" or "latent" (see the module docstring).
    dim: A, the action dimension, number of classes, or latent dimension.
    chunk: number of future steps predicted per ACTION token (BAKU: 10).
    hidden: widths of the ReLU hidden layers of the head MLP (empty: a linear head).
    loss: None for the kind's default ("mse", or "cross_entropy" for categorical); "l1" is
      accepted for continuous and latent heads.
    loss_weight: factor of this head's loss in `heads_loss`.
    target_mean, target_std: per-dimension statistics of the targets (latent heads; both empty,
      the default, for none): the head predicts target_mean + target_std * out, and the loss is
      taken in units of target_std.
  """
  name: str
  kind: str
  dim: int
  chunk: int = 10
  hidden: tuple[int, ...] = (256, 256)
  loss: Optional[str] = None
  loss_weight: float = 1.0
  target_mean: tuple[float, ...] = ()
  target_std: tuple[float, ...] = ()

  def __post_init__(self):
    if self.kind not in HEAD_KINDS:
      raise ValueError(f"HeadConfig {self.name!r}: kind {self.kind!r} not in {HEAD_KINDS}")
    if self.loss is not None and self.loss not in _LOSSES[self.kind]:
      raise ValueError(f"HeadConfig {self.name!r}: loss {self.loss!r} not in {_LOSSES[self.kind]}")
    if self.dim < 1 or self.chunk < 1:
      raise ValueError(f"HeadConfig {self.name!r}: dim and chunk must be >= 1")
    object.__setattr__(self, "hidden", tuple(self.hidden))
    mean, std = tuple(map(float, self.target_mean)), tuple(map(float, self.target_std))
    if mean or std:
      if self.kind != "latent":
        raise ValueError(f"HeadConfig {self.name!r}: target statistics are for latent heads, "
                         f"not {self.kind!r}")
      if len(mean) != self.dim or len(std) != self.dim:
        raise ValueError(f"HeadConfig {self.name!r}: target_mean and target_std need {self.dim} "
                         f"values each, got {len(mean)} and {len(std)}")
      if not all(v > 0 for v in std):
        raise ValueError(f"HeadConfig {self.name!r}: target_std must be > 0, got {std}")
    object.__setattr__(self, "target_mean", mean)
    object.__setattr__(self, "target_std", std)

  @property
  def loss_name(self) -> str:
    return self.loss or _LOSSES[self.kind][0]


class PolicyHead(nn.Module):
  """MLP from the readout [B, H, F] to one head's chunk prediction [B, H, chunk, A]."""
  config: HeadConfig

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    cfg = self.config
    x = features
    for i, width in enumerate(cfg.hidden):
      x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
    x = nn.Dense(cfg.chunk * cfg.dim, name="out")(x)
    x = x.reshape(*features.shape[:-1], cfg.chunk, cfg.dim)  # [B, H, chunk, A]
    if cfg.kind == "continuous":
      x = jnp.tanh(x)
    if cfg.target_std:
      x = (jnp.asarray(cfg.target_mean, x.dtype) + jnp.asarray(cfg.target_std, x.dtype) * x)
    return x


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of values [B, H, chunk] over mask=True entries (0 if none are valid)."""
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def head_loss(head_cfg: HeadConfig, prediction: jax.Array, target: jax.Array,
              mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked loss of one head.

  Args:
    head_cfg: the head's config.
    prediction: [B, H, chunk, A] (tanh actions, logits or latents).
    target: [B, H, chunk, A] float for regression heads; [B, H, chunk] int for categorical.
    mask: bool [B, H, chunk]; False for padded chunk steps.

  Returns:
    (loss, metrics): the scalar masked mean loss (unweighted) and a dict of scalar metrics
    ("loss", plus "accuracy" for categorical, "mse"/"l1" and "r2" for regression heads; r2 =
    1 - SSE / SST over the valid entries, SST around the batch's per-dimension mean: the share of
    the targets' variance the head explains, 0 for predicting the mean, < 0 for worse). With
    target statistics the loss is in units of target_std; "mse", "l1" and "r2" are always in
    the targets' own units (comparable across runs with and without statistics).
  """
  mask = mask.astype(bool)
  if head_cfg.kind == "categorical":
    labels = jnp.where(mask, target, 0).astype(jnp.int32)
    ce = optax.softmax_cross_entropy_with_integer_labels(prediction.astype(jnp.float32), labels)
    loss = _masked_mean(ce, mask)
    correct = (jnp.argmax(prediction, axis=-1) == labels).astype(jnp.float32)
    return loss, {"loss": loss, "accuracy": _masked_mean(correct, mask)}
  target = jnp.where(mask[..., None], target, 0.0).astype(jnp.float32)
  err = prediction.astype(jnp.float32) - target
  mse = _masked_mean(jnp.mean(jnp.square(err), axis=-1), mask)
  l1 = _masked_mean(jnp.mean(jnp.abs(err), axis=-1), mask)
  scaled = err / jnp.asarray(head_cfg.target_std, jnp.float32) if head_cfg.target_std else err
  per_dim = jnp.abs(scaled) if head_cfg.loss_name == "l1" else jnp.square(scaled)
  loss = _masked_mean(jnp.mean(per_dim, axis=-1), mask)
  weight = mask[..., None].astype(jnp.float32)  # [B, H, chunk, 1]
  count = jnp.maximum(jnp.sum(weight), 1.0)
  mean = jnp.sum(target * weight, axis=(0, 1, 2)) / count  # [A]
  sse = jnp.sum(jnp.square(err) * weight)
  sst = jnp.sum(jnp.square(target - mean) * weight)
  r2 = 1.0 - sse / jnp.maximum(sst, 1e-12)
  return loss, {"loss": loss, "mse": mse, "l1": l1, "r2": r2}


def heads_loss(head_cfgs: Sequence[HeadConfig], predictions: Mapping[str, jax.Array],
               targets: Mapping[str, jax.Array], masks: Mapping[str, jax.Array]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of `head_loss` over the heads present in `predictions`.

  Metrics are prefixed by the head name ("action/loss", "action/accuracy", ...), plus "loss".
  """
  total = jnp.zeros((), jnp.float32)
  metrics = {}
  for cfg in head_cfgs:
    if cfg.name not in predictions:
      continue
    loss, head_metrics = head_loss(cfg, predictions[cfg.name], targets[cfg.name], masks[cfg.name])
    total = total + cfg.loss_weight * loss
    metrics.update({f"{cfg.name}/{k}": v for k, v in head_metrics.items()})
  metrics["loss"] = total
  return total, metrics
