"""Image augmentation inside the jitted train step: random shift + colour jitter in pure JAX.

The same transforms as the tf.data ones (`data_pipeline.frame_transforms.augment`, crop="shift"),
moved to the accelerator so that the host pipeline only decodes, resizes and batches (on the
host the augmentation cost as much as JPEG decoding). Shapes are static, everything is jittable
and vmapped over the batch.

Randomness: example b draws its parameters from `fold_in(rng, b)`, where `rng` is derived from
the per-step rng `fold_in(state.rng, state.step)` (`make_train_step`), so the draw is a function
of (state rng, step, position in the global batch) only: deterministic, different per example
and per step, and the same on any number of devices. One draw per example is applied to all of
its images (both frames of a pair, every time step, every camera), as on the host.

Glossary: B batch, H/W image height/width, "..." any per-example image axes (time, frames).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline.frame_transforms import AugmentConfig

PLACEMENTS = ("device", "host")
# fold_in constant that separates the augmentation key from the step rng the loss receives
# (dropout etc.): turning augmentation on does not change the loss's random numbers.
AUGMENT_STREAM = 0x6175  # "au"

# RGB <-> YIQ, as in frame_transforms: a hue change is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = np.array([[0.299, 0.596, 0.211],
                        [0.587, -0.274, -0.523],
                        [0.114, -0.322, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ.astype(np.float64)).astype(np.float32)
_GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
_HIGHEST = jax.lax.Precision.HIGHEST  # TPUs would otherwise multiply in bfloat16


def placement(data_config: Any) -> str | None:
  """Where a trainer's augmentation runs: None (off), "device" (default) or "host".

  Reads `data_config.augment` (falsy: off) and `data_config.augment_on` (absent in configs
  written before the option existed: "device").
  """
  if not data_config.get("augment"):
    return None
  where = data_config.get("augment_on") or "device"
  if where not in PLACEMENTS:
    raise ValueError(f"data.augment_on={where!r}; expected one of {PLACEMENTS}")
  return where


def check_config(config: AugmentConfig) -> None:
  """Only the random shift exists on the device; a resized crop stays on the host."""
  if config.crop != "shift":
    raise ValueError(f"on-device augmentation implements crop='shift' only, got "
                     f"crop={config.crop!r}: set data.augment_on='host' for it")


def sample_params(rng: jax.Array, batch_size: int,
                  config: AugmentConfig = AugmentConfig()) -> dict[str, jax.Array]:
  """Per-example parameters, example b from `fold_in(rng, b)`.

  Returns the keys of `frame_transforms.sample_augment_params` (crop="shift"): "shift" int32
  [B, 2] (rows, cols) in [-shift_pad, shift_pad]; float32 [B] "brightness" (0..255 scale),
  "contrast", "saturation", "angle" (radians).
  """
  check_config(config)

  def one(key):
    k_shift, k_bright, k_contrast, k_sat, k_hue = jax.random.split(key, 5)
    uniform = lambda k, low, high: jax.random.uniform(k, (), jnp.float32, low, high)
    return {
        "shift": jax.random.randint(k_shift, (2,), -config.shift_pad, config.shift_pad + 1,
                                    jnp.int32),
        "brightness": 255.0 * uniform(k_bright, -config.brightness, config.brightness),
        "contrast": uniform(k_contrast, *config.contrast),
        "saturation": uniform(k_sat, *config.saturation),
        "angle": 2.0 * np.pi * uniform(k_hue, -config.hue, config.hue),
    }

  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch_size))
  return jax.vmap(one)(keys)


def _colour_matrix(saturation: jax.Array, angle: jax.Array) -> jax.Array:
  """[3, 3] saturation blend followed by a YIQ hue rotation (row vectors: x @ matrix)."""
  sat_matrix = saturation * jnp.eye(3) + (1.0 - saturation) * _GREY_WEIGHTS[:, None] * jnp.ones(3)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rotation = jnp.array([[1.0, 0.0, 0.0], [0.0, cos, sin], [0.0, -sin, cos]])
  hue_matrix = jnp.matmul(jnp.matmul(_RGB_TO_YIQ, rotation, precision=_HIGHEST), _YIQ_TO_RGB,
                          precision=_HIGHEST)
  return jnp.matmul(sat_matrix, hue_matrix, precision=_HIGHEST)


def _apply_one(images: jax.Array, params: Mapping[str, jax.Array]) -> jax.Array:
  """One example's images uint8 [..., H, W, 3] with its parameters (scalars, shift [2])."""
  height, width = images.shape[-3], images.shape[-2]
  # Shift with edges replicated: out[i, j] = in[clip(i + dy), clip(j + dx)].
  rows = jnp.clip(jnp.arange(height) + params["shift"][0], 0, height - 1)
  cols = jnp.clip(jnp.arange(width) + params["shift"][1], 0, width - 1)
  pixels = jnp.take(jnp.take(images, rows, axis=-3), cols, axis=-2).astype(jnp.float32)
  # Colour: x -> contrast * x @ A + (brightness + (1 - contrast) * mean) @ A, mean per image.
  colour = _colour_matrix(params["saturation"], params["angle"])               # [3, 3]
  mean = jnp.mean(pixels, axis=(-3, -2), keepdims=True)                         # [..., 1, 1, 3]
  offset = params["brightness"] + (1.0 - params["contrast"]) * mean
  offset = jnp.matmul(offset, colour, precision=_HIGHEST)
  pixels = jnp.matmul(pixels, params["contrast"] * colour, precision=_HIGHEST) + offset
  return jnp.round(jnp.clip(pixels, 0.0, 255.0)).astype(jnp.uint8)


def apply_params(images: jax.Array, params: Mapping[str, jax.Array]) -> jax.Array:
  """uint8 [B, ..., H, W, 3] -> the same shape, example b changed by params[...][b]."""
  return jax.vmap(_apply_one)(images, params)


def augment_images(images: Sequence[jax.Array], rng: jax.Array,
                   config: AugmentConfig = AugmentConfig()) -> list[jax.Array]:
  """Augments several image arrays [B, ..., H, W, 3] (cameras, frames of a pair) with one
  parameter draw per example shared by all of them."""
  params = sample_params(rng, images[0].shape[0], config)
  return [apply_params(x, params) for x in images]


def make_augment_fn(config: AugmentConfig, get: Callable[[Any], Sequence[jax.Array]],
                    put: Callable[[Any, Sequence[jax.Array]], Any]
                    ) -> Callable[[Any, jax.Array], Any]:
  """`(batch, rng) -> batch` for `make_train_step(augment_fn=...)`.

  Args:
    config: the transforms (crop="shift").
    get: batch -> the image arrays to augment together.
    put: (batch, augmented arrays in the same order) -> the new batch.
  """
  check_config(config)
  return lambda batch, rng: put(batch, augment_images(get(batch), rng, config))
