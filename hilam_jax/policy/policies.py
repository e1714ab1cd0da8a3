"""Trained policies as `hilam_jax.evaluation.Policy` objects: flat (BAKU) and hierarchical (HiLAM).

  PolicyNetwork       one trained BakuPolicy (checkpoint of `policy/trainer.py`) as a jitted,
                      batched predictor: observations + instructions (+ condition) -> head chunks.
                      A network without language (HiLAM's pi^l by default) ignores instructions.
  FlatPolicy          a single network with an action head + ACT temporal aggregation.
  HierarchicalPolicy  pi^h (skill head) -> skill z̄_t -> pi^l (action head, conditioned on the skill).
                      The skill is pi^h's offset-0 prediction (`networks.high_level_skill`, the
                      definition fine-tuning conditions pi^l on), not temporally aggregated;
                      it is refreshed every `high_every` steps (1 = every step, the default;
                      OPEN in the paper) and held in between. pi^l's action chunks are
                      ACT-aggregated.

Inputs follow the evaluation protocol (`hilam_jax/evaluation/policy_api.py`): obs
{"image_primary": uint8 [N, H, W, 3], "proprio": float32 [N, P]}, N instructions, `first` [N].
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from hilam_jax.language import CachedEncoder, make_encoder
from hilam_jax.policy import aggregation
from hilam_jax.policy import networks


class PolicyNetwork:
  """A policy (module + params) as a jitted predictor of its heads' chunks."""

  def __init__(self, module: Any, params: Any, *, image_size: Sequence[int],
               encoder: CachedEncoder | None, heads: Sequence[str] | None = None,
               cameras: Sequence[str] = (networks.CAMERA,)):
    self.module, self.params, self.encoder = module, params, encoder
    self.cameras = tuple(cameras)
    self.config = module.config
    if self.config.use_lang and encoder is None:
      raise ValueError("this policy reads the instruction: pass a language `encoder`")
    self.image_size = tuple(image_size)
    self.heads = tuple(heads) if heads else tuple(self.config.head_configs)
    missing = set(self.heads) - set(self.config.head_configs)
    if missing:
      raise ValueError(f"no heads {sorted(missing)}; the policy has "
                       f"{list(self.config.head_configs)}")
    selected = self.heads
    self._apply = jax.jit(lambda p, inputs: module.apply(
        {"params": p}, inputs, train=False, heads=selected).predictions)
    self._skill = jax.jit(functools.partial(networks.high_level_skill, module),
                          static_argnames="head")

  @classmethod
  def load(cls, workdir: str, heads: Sequence[str] | None = None,
           encoder: CachedEncoder | None = None) -> "PolicyNetwork":
    """The trained policy of a `policy/trainer.py` workdir (latest checkpoint). The encoder is
    only made (from the run's `lang_encoder`) if the network reads the instruction."""
    module, params, run_config = networks.load_policy(workdir)
    if encoder is None and module.config.use_lang:
      encoder = CachedEncoder(make_encoder(run_config["lang_encoder"]))
    return cls(module, params, image_size=run_config["data"]["image_size"], encoder=encoder,
               heads=heads, cameras=networks.cameras(run_config))

  def head(self, name: str):
    return self.config.head_configs[name]

  def inputs(self, obs: Mapping[str, np.ndarray], instructions: Sequence[Any],
             condition: np.ndarray | None = None) -> dict[str, Any]:
    """The network's batch (`networks.model_inputs`); instructions are embedded only if the
    network reads them."""
    images = {}
    for camera in self.cameras:
      if camera not in obs:
        raise ValueError(f"the policy sees cameras {list(self.cameras)}; the observation has "
                         f"no {camera!r} (keys {sorted(obs)})")
      images[camera] = np.asarray(obs[camera])
      if images[camera].shape[1:3] != self.image_size:
        raise ValueError(f"observation {camera} images are {images[camera].shape[1:3]}, the "
                         f"policy was trained on {self.image_size}")
    if self.config.condition_dim and condition is None:
      raise ValueError("this policy is conditioned on a skill: pass `condition`")
    return networks.model_inputs(
        self.config, images,
        lang=self.encoder.embed(instructions) if self.config.use_lang else None,
        proprio=obs.get("proprio"),
        condition=condition if self.config.condition_dim else None)

  def predict(self, obs: Mapping[str, np.ndarray], instructions: Sequence[Any],
              condition: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Head name -> chunk predictions [N, chunk, ...] for N observations."""
    out = jax.device_get(self._apply(self.params, self.inputs(obs, instructions, condition)))
    return {name: np.asarray(v[:, 0]) for name, v in out.items()}

  def skill(self, obs: Mapping[str, np.ndarray], instructions: Sequence[Any],
            head: str) -> np.ndarray:
    """[N, Cz]: this network as pi^h, the skill pi^l is conditioned on
    (`networks.high_level_skill`: the offset-0 prediction of `head`)."""
    if head not in self.heads:
      raise ValueError(f"head {head!r} not among this network's heads {list(self.heads)}")
    out = self._skill(self.params, self.inputs(obs, instructions), head=head)
    return np.asarray(jax.device_get(out))[:, 0]


def _ensembler(network: PolicyNetwork, head: str, num_envs: int, decay: float,
               temporal: bool) -> aggregation.TemporalEnsembler:
  cfg = network.head(head)
  return aggregation.TemporalEnsembler(
      num_envs, cfg.chunk, cfg.dim, cfg.kind, decay=decay,
      aggregation="temporal" if temporal else "none")


def _rng(sample_seed: int | None) -> np.random.Generator | None:
  """None: argmax actions; a seed: categorical actions sampled (aggregation.TemporalEnsembler)."""
  return None if sample_seed is None else np.random.default_rng(sample_seed)


class FlatPolicy:
  """One network's action head, ACT-aggregated; `sample_seed` samples categorical actions."""

  def __init__(self, network: PolicyNetwork, head: str = "action", decay: float = 0.01,
               temporal_aggregation: bool = True, sample_seed: int | None = None):
    self.network, self.head = network, head
    self.decay, self.temporal = decay, temporal_aggregation
    self.sample_seed = sample_seed
    self._ensembler = None

  def reset(self, num_envs: int) -> None:
    self._ensembler = _ensembler(self.network, self.head, num_envs, self.decay, self.temporal)
    self._rng = _rng(self.sample_seed)

  def act(self, obs, instructions, first) -> np.ndarray:
    self._ensembler.reset(np.asarray(first, bool))
    self._ensembler.add(self.network.predict(obs, instructions)[self.head])
    return self._ensembler.action(self._rng)


class HierarchicalPolicy:
  """HiLAM at test time: pi^h predicts the skill, pi^l acts on (observation, skill).

  `decay` and `temporal_aggregation` apply to pi^l's action chunks only; the skill is pi^h's
  offset-0 prediction at the last refresh (as in fine-tuning).
  """

  def __init__(self, high: PolicyNetwork, low: PolicyNetwork, *, high_head: str = "skill",
               low_head: str = "action", high_every: int = 1, decay: float = 0.01,
               temporal_aggregation: bool = True, sample_seed: int | None = None):
    if high_every < 1:
      raise ValueError(f"high_every must be >= 1, got {high_every}")
    self.high, self.low = high, low
    self.high_head, self.low_head, self.high_every = high_head, low_head, high_every
    self.decay, self.temporal = decay, temporal_aggregation
    self.sample_seed = sample_seed  # None: argmax actions; else sampled (the skill never is)

  def reset(self, num_envs: int) -> None:
    self._rng = _rng(self.sample_seed)
    self._actions = _ensembler(self.low, self.low_head, num_envs, self.decay, self.temporal)
    self._skill = None  # [N, Cz], the skill each env's pi^l is conditioned on
    self._age = np.zeros(num_envs, np.int64)  # steps since each env's skill was refreshed

  def act(self, obs, instructions, first) -> np.ndarray:
    first = np.asarray(first, bool)
    self._actions.reset(first)
    refresh = first | (self._age % self.high_every == 0)
    if self._skill is None or refresh.any():
      # One batched pi^h call for all envs (static shapes); only refreshed rows are taken.
      skill = self.high.skill(obs, instructions, self.high_head)
      self._skill = skill if self._skill is None else np.where(refresh[:, None], skill,
                                                                self._skill)
    self._age = np.where(first, 1, self._age + 1)
    self._actions.add(self.low.predict(obs, instructions, condition=self._skill)[self.low_head])
    return self._actions.action(self._rng)
