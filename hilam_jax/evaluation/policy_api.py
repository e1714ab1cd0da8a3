"""The interface every evaluated policy implements, and the observation preprocessing it sees.

Dimensions: N environments evaluated together, H x W images, P proprio size, A action size.

Observations reach a policy as the training batches of our data pipeline name them, without the
`observation/` prefix:

  image_primary  uint8 [N, H, W, 3]  the main camera, preprocessed as in the RLDS data
  image_wrist    uint8 [N, H, W, 3]  (LIBERO only) the wrist camera
  proprio        float32 [N, P]      BabyAI: one-hot facing direction (P=4); Meta-World: hand xyz +
                                     gripper opening (P=4); LIBERO: EEF pos 3, axis-angle 3,
                                     gripper qpos 2 (P=8)

The training images were stored as JPEG by tfds (`tfds.features.Image(encoding_format="jpeg")`
encodes with `tf.image.encode_jpeg` defaults: quality 95, 4:2:0 chroma subsampling), so by default
the harnesses send every frame through the same JPEG round trip (`jpeg_round_trip`, PIL at quality
95 with 4:2:0 subsampling; on a BabyAI frame it differs from TensorFlow's round trip by at most 4
and on average 0.3 grey levels, against 0.7 between the raw and the round-tripped frame).
"""
from __future__ import annotations

import io
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

# tf.image.encode_jpeg's default quality, which tfds' JPEG Image feature uses.
TFDS_JPEG_QUALITY = 95


class Policy(Protocol):
  """A batched closed-loop policy."""

  def reset(self, num_envs: int) -> None:
    """Called before a batch of episodes on `num_envs` environments (the rows of every `act`)."""

  def act(self, obs: Mapping[str, np.ndarray], instructions: Sequence[str],
          first: np.ndarray) -> np.ndarray:
    """One action per environment.

    Args:
      obs: the module docstring's keys, each with leading dimension N (= reset's num_envs).
      instructions: the N language instructions.
      first: bool [N], True where the environment has just started a new episode (reset
        per-environment state such as temporal aggregation there).

    Returns:
      N actions: int [N] for BabyAI, float32 [N, A] for Meta-World / LIBERO. Row i drives
      environment i; rows of environments with no episode left are ignored.
    """


@runtime_checkable
class EpisodeStartHook(Protocol):
  """Optional: policies that need the simulator object itself (BabyAI's expert bot).

  In-process harnesses (BabyAI) call `on_episode_start(env_index, env)` right after resetting
  environment `env_index` for a new episode, before the `act` call whose `first[env_index]` is
  True.
  """

  def on_episode_start(self, env_index: int, env: Any) -> None:
    ...


@runtime_checkable
class PrivilegedExpert(Protocol):
  """Optional: a scripted expert that needs the full simulator state (Meta-World's experts).

  Harnesses whose simulators run in worker processes compute the scripted action inside the
  worker and, before each `act` call, hand the N actions to `set_expert_actions`; `act` returns
  them, so experts go through the same episode and statistics code as learned policies.
  """
  privileged_expert: bool

  def set_expert_actions(self, actions: np.ndarray) -> None:
    ...


def jpeg_round_trip(image: np.ndarray, quality: int = TFDS_JPEG_QUALITY) -> np.ndarray:
  """uint8 [H, W, 3] -> the same frame after JPEG encoding and decoding (as stored by tfds)."""
  buffer = io.BytesIO()
  # subsampling=2 is 4:2:0, what tf.image.encode_jpeg does by default (chroma_downsampling=True).
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="JPEG", quality=quality,
                                                    subsampling=2)
  buffer.seek(0)
  return np.asarray(Image.open(buffer).convert("RGB"))


def preprocess_image(image: np.ndarray, jpeg: bool = True) -> np.ndarray:
  return jpeg_round_trip(image) if jpeg else np.asarray(image, np.uint8)


def stack_observations(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Per-environment observation dicts -> one dict of [N, ...] arrays (keys of the first row)."""
  out = {}
  for key in rows[0]:
    dtype = np.uint8 if key.startswith("image") else np.float32
    out[key] = np.stack([np.asarray(row[key]) for row in rows]).astype(dtype, copy=False)
  return out


class RandomPolicy:
  """Uniform random actions: discrete in [0, num_actions) or continuous in [-1, 1]^action_dim."""

  def __init__(self, num_actions: int | None = None, action_dim: int | None = None,
               seed: int = 0):
    if (num_actions is None) == (action_dim is None):
      raise ValueError("give exactly one of num_actions (discrete) and action_dim (continuous)")
    self.num_actions, self.action_dim = num_actions, action_dim
    self._rng = np.random.default_rng(seed)

  def reset(self, num_envs: int) -> None:
    del num_envs

  def act(self, obs, instructions, first):
    n = len(instructions)
    if self.num_actions is not None:
      return self._rng.integers(0, self.num_actions, size=n)
    return self._rng.uniform(-1.0, 1.0, size=(n, self.action_dim)).astype(np.float32)


class ConstantPolicy:
  """The same action in every environment (e.g. zeros: a policy that does nothing)."""

  def __init__(self, action: Any):
    self.action = np.asarray(action)

  def reset(self, num_envs: int) -> None:
    del num_envs

  def act(self, obs, instructions, first):
    return np.repeat(self.action[None], len(instructions), axis=0)
