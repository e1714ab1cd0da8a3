"""The world interface (`World`, `ActionSpace`): one benchmark as the main job sees it.

Static facts (dataclass fields) configure the policies the experiment trains; the methods are the
benchmark's data source and its evaluation harness. Words used by the experiment's config:

  level   what the evaluation runs in the world: a BabyAI level, Meta-World tasks, a LIBERO suite
          (each world's `check_settings` says what it accepts and checks it against the demos)
  eval    the experiment's `config.eval`: num_episodes, num_envs, seed, max_steps (None: the
          world's cap), num_videos, actions ("sample" or "argmax")
"""
from __future__ import annotations

import dataclasses
from typing import Any

ACTION_KINDS = ("categorical", "continuous")


@dataclasses.dataclass(frozen=True)
class ActionSpace:
  """A world's actions and the policy head that predicts them.

  Attributes:
    kind: "categorical" (class ids 0..dim-1) or "continuous" (float vectors of size dim).
    dim: number of actions (categorical) or action dimension (continuous).
    low, high: continuous bounds (the continuous head's tanh range is [-1, 1]); None if discrete.
    ignore: an action value that is never a target (in training and in the skill-use
      measurement), e.g. a terminal placeholder the expert never takes; None for none.
  """
  kind: str
  dim: int
  low: float | None = None
  high: float | None = None
  ignore: int | None = None

  def __post_init__(self):
    if self.kind not in ACTION_KINDS:
      raise ValueError(f"action kind {self.kind!r} not in {ACTION_KINDS}")
    if self.dim < 1:
      raise ValueError(f"action dim {self.dim} < 1")
    if self.kind == "continuous" and (self.low is None or self.high is None):
      raise ValueError("continuous actions need bounds (low, high)")
    if self.ignore is not None and self.kind != "categorical":
      raise ValueError("only categorical actions have an ignored action value")

  def heads(self) -> dict[str, dict]:
    """The fine-tuning runs' action head (`policy.config` `heads` entry)."""
    return {"action": {"kind": self.kind, "dim": self.dim, "target": "action"}}


@dataclasses.dataclass(frozen=True)
class World:
  """One benchmark. Subclasses (one module each in hilam_jax/worlds) implement the methods.

  Attributes:
    name: `config.world`.
    action: the action space and head.
    proprio_dim: size of `observation/<proprio_key>` of the standardized datasets (0: none).
    cameras: the standardized `observation/image_*` keys the policies see (`data.cameras`).
    proprio_key: observation key of the proprioception.
    instruction_key: the standardized datasets' language field.
    episode_cap: the evaluation's step limit when `eval.max_steps` is None; None: the
      simulator's own (per level or suite).
    has_generator: whether `generate` simulates the data (False: it names existing datasets).
  """
  name: str
  action: ActionSpace
  proprio_dim: int
  cameras: tuple[str, ...]
  proprio_key: str = "proprio"
  instruction_key: str = "language_instruction"
  episode_cap: int | None = None
  has_generator: bool = True

  # Python modules the evaluation harness needs (checked by `simulator_missing`), and the
  # setup.py extra that installs them.
  simulator_modules: tuple[str, ...] = ()
  simulator_extra: str = "sim"

  def simulator_missing(self) -> str | None:
    """Why this world's simulator cannot run here (a module not installed), or None."""
    import importlib.util  # pylint: disable=g-import-not-at-top
    missing = [m for m in self.simulator_modules if importlib.util.find_spec(m) is None]
    if missing:
      return (f"the {self.name} simulator is not installed (no module "
              f"{', '.join(repr(m) for m in missing)}; pip install -e \".[{self.name}]\")")
    return None

  def observation_keys(self) -> tuple[str, ...]:
    """The observation keys a policy of this world reads."""
    return self.cameras + ((self.proprio_key,) if self.proprio_dim else ())

  def generate(self, spec: Any, data_dir: str) -> dict[str, Any]:
    """Makes (or resumes) the dataset of a data spec (`config.video`, `config.demos`) under
    `data_dir`; returns at least {"dataset_dir", "episodes_per_second"}."""
    raise NotImplementedError(f"world {self.name!r} has no data generator")

  def check_settings(self, demos_dir: str, level: str) -> dict[str, Any]:
    """Raises if evaluating `level` would render differently from the demos the policies
    learnt from; returns the settings `evaluate` renders with."""
    raise NotImplementedError

  def evaluate(self, policy: Any, *, level: str, settings: dict[str, Any],
               eval_config: dict[str, Any], video_dir: str) -> dict[str, Any]:
    """Evaluates a test-time policy (`hilam_jax.evaluation.policy_api.Policy`) in the world's
    simulator; returns `stats.EvalResult.to_dict()` (success_rate, ci_low, ci_high,
    num_episodes, ...)."""
    raise NotImplementedError

  def check_eval_config(self, eval_config: dict[str, Any]) -> None:
    """Refuses evaluation settings the world's actions do not support."""
    if eval_config.get("actions") == "sample" and self.action.kind != "categorical":
      raise ValueError(f"world {self.name!r}: eval.actions='sample' needs categorical actions; "
                       f"{self.action.kind} actions are taken as predicted ('argmax')")


def policy_image_size(policy: Any) -> tuple[int, ...] | None:
  """The image size a test-time policy (flat or hierarchical) was trained on, if it says."""
  network = getattr(policy, "network", None) or getattr(policy, "low", None)
  size = getattr(network, "image_size", None)
  return tuple(size) if size is not None else None


def read_generation_config(dataset_dir: str) -> dict[str, Any]:
  """The generator config a dataset was written with (its generation_info.json)."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  with open(os.path.join(dataset_dir, "generation_info.json")) as f:
    return json.load(f)["config"]
