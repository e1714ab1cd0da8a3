"""ACT-style temporal aggregation of action chunks at evaluation time (numpy, N envs in lock-step).

At every environment step the policy predicts a chunk of the next `chunk` steps. The prediction made
i steps ago (i < chunk) still holds an entry for the current step, at offset i of its chunk. ACT
(Zhao et al. 2023, `temporal_agg` in tonyzhaozh/act `imitate_episodes.py`) averages these entries:

    all_time_actions[t, t:t+num_queries] = chunk
    actions_for_curr_step = all_time_actions[:, t]      # rows in query-time order: OLDEST first
    (keep populated rows)
    exp_weights = exp(-k * arange(n)); exp_weights /= exp_weights.sum()

so j = 0 is the OLDEST available prediction and j = n−1 the newest, with weights exp(−k·j)
normalised: with k > 0 older predictions weigh slightly more (BAKU and ACT use k = 0.01, nearly a
plain mean). We keep exactly this convention (`decay` = k), counting j over the predictions that
are available for the environment (fewer than `chunk` right after a reset).

Kinds: "continuous" and "latent" return the weighted mean [N, *shape]; "categorical" averages the
class probabilities (softmax of the logits given to `add`, unless `from_logits=False`) and returns
their argmax [N] (int). `aggregation="none"` executes the first step of the newest chunk instead.

Dimension glossary: N environments, chunk steps per prediction, shape = per-step action shape
(or (num_classes,) for categorical).
"""
from typing import Optional, Sequence, Union

import numpy as np

KINDS = ("continuous", "categorical", "latent")
AGGREGATIONS = ("temporal", "none")


class TemporalEnsembler:
  """Per-environment buffer of the last `chunk` predicted chunks.

  Usage per environment step: `add(chunk_predictions)` then `action()`. `reset(env_mask)` when
  some environments start a new episode (their buffers are cleared; the others are untouched).
  """

  def __init__(self, num_envs: int, chunk: int,
               action_shape_or_num_classes: Union[int, Sequence[int]], kind: str,
               decay: float = 0.01, aggregation: str = "temporal", from_logits: bool = True):
    """Args:
      num_envs: N.
      chunk: steps per predicted chunk.
      action_shape_or_num_classes: per-step action shape (int or tuple) for continuous/latent,
        the number of classes for categorical.
      kind: "continuous", "latent" or "categorical".
      decay: ACT's k (weights exp(−k·j), j = 0 for the oldest prediction).
      aggregation: "temporal" (ACT) or "none" (first step of the newest chunk).
      from_logits: categorical only; `add` receives logits (softmaxed here) or probabilities.
    """
    if kind not in KINDS:
      raise ValueError(f"kind {kind!r} not in {KINDS}")
    if aggregation not in AGGREGATIONS:
      raise ValueError(f"aggregation {aggregation!r} not in {AGGREGATIONS}")
    shape = action_shape_or_num_classes
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    if kind == "categorical" and len(shape) != 1:
      raise ValueError("categorical: pass the number of classes")
    self.num_envs, self.chunk, self.kind = num_envs, chunk, kind
    self.item_shape, self.decay, self.aggregation = shape, decay, aggregation
    self.from_logits = from_logits
    # _preds[n, a] is the chunk predicted a steps ago (a = age); _valid[n, a] whether it exists.
    self._preds = np.zeros((num_envs, chunk, chunk) + shape, np.float64)
    self._valid = np.zeros((num_envs, chunk), bool)

  def reset(self, env_mask: Optional[Sequence[bool]] = None) -> None:
    """Clears the buffers of the environments where env_mask is True (all if None)."""
    mask = np.ones(self.num_envs, bool) if env_mask is None else np.asarray(env_mask, bool)
    if mask.shape != (self.num_envs,):
      raise ValueError(f"env_mask shape {mask.shape} != ({self.num_envs},)")
    self._valid[mask] = False
    self._preds[mask] = 0.0

  def add(self, chunk_predictions) -> None:
    """Stores this step's predictions [N, chunk, *shape] and ages the older ones by one step."""
    preds = np.asarray(chunk_predictions, np.float64)
    expected = (self.num_envs, self.chunk) + self.item_shape
    if preds.shape != expected:
      raise ValueError(f"chunk_predictions shape {preds.shape} != {expected}")
    if self.kind == "categorical" and self.from_logits:
      preds = np.exp(preds - preds.max(-1, keepdims=True))
      preds = preds / preds.sum(-1, keepdims=True)
    # Age every stored chunk; the one of age chunk−1 wraps to slot 0 and is overwritten.
    self._preds = np.roll(self._preds, 1, axis=1)
    self._valid = np.roll(self._valid, 1, axis=1)
    self._preds[:, 0] = preds
    self._valid[:, 0] = True

  def aggregate(self) -> np.ndarray:
    """The weighted mean [N, *shape] for the current step (class probabilities if categorical)."""
    if not self._valid[:, 0].all():
      raise RuntimeError("action() needs an add() since the last reset for every environment")
    if self.aggregation == "none":
      return self._preds[:, 0, 0].copy()
    ages = np.arange(self.chunk)
    current = self._preds[:, ages, ages]  # [N, chunk(age), *shape]: age a at offset a
    oldest_first = current[:, ::-1]
    valid = self._valid[:, ::-1]
    j = np.cumsum(valid, axis=1) - 1  # rank among available predictions, oldest = 0
    weights = np.where(valid, np.exp(-self.decay * j), 0.0)
    weights = weights / weights.sum(axis=1, keepdims=True)  # [N, chunk]
    weights = weights.reshape(weights.shape + (1,) * len(self.item_shape))
    return np.sum(weights * oldest_first, axis=1)

  def action(self, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """The action to execute now: [N, *shape] (float32), or [N] class ids for categorical.

    Categorical: the argmax of the aggregated probabilities, or a sample from them if `rng` is
    given (BabyAI's convention for evaluating imitation policies; a deterministic policy can
    repeat one action forever in a state that the action does not change).
    """
    agg = self.aggregate()
    if self.kind == "categorical":
      if rng is None:
        return np.argmax(agg, axis=-1)
      cumulative = np.cumsum(agg, axis=-1)
      draws = rng.random((agg.shape[0], 1)) * cumulative[:, -1:]
      return np.minimum((cumulative < draws).sum(-1), agg.shape[-1] - 1)
    if rng is not None:
      raise ValueError(f"sampling needs a categorical head, not {self.kind!r}")
    return agg.astype(np.float32)
