"""Frame transforms: decode, resize and augment images — the CPU-heavy part, applied last.

They work on one element (a frame, a frame pair or a window) whose image keys hold encoded
strings of any shape [...]; decoding gives uint8 [..., H, W, 3]. Augmentation draws its random
parameters once per element from an explicit seed [2] (stateless ops), and applies them to every
image of the element: all cameras and all time steps of a pair or window get the same crop and
colour change (a crop that differed between t and t+k would look like motion to a latent action
model). The same seed gives the same result eagerly and inside tf.data.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import tensorflow as tf

from data_pipeline.schema import flatten_keys


def is_image_key(path: str) -> bool:
  """Image keys are the ones named `image_*` (observation/image_primary, next_observation/...)."""
  return path.rsplit("/", 1)[-1].startswith("image_")


def decode_images(encoded: tf.Tensor, size: tuple[int, int] | None) -> tf.Tensor:
  """Encoded JPEG/PNG strings [...] -> uint8 [..., H, W, 3], resized to `size` if given.

  Without `size`, all images must share one shape (map_fn stacks them).
  """
  flat = tf.reshape(encoded, [-1])

  def decode_one(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    if size is not None:
      image = resize(image, size)
    return image

  spec = tf.TensorSpec([size[0], size[1], 3] if size else [None, None, 3], tf.uint8)
  images = tf.map_fn(decode_one, flat, fn_output_signature=spec)
  return tf.reshape(images, tf.concat([tf.shape(encoded), tf.shape(images)[1:]], 0))


def resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
  """uint8 [..., H, W, 3] -> uint8 [..., size[0], size[1], 3]; no-op if already that size."""
  if image.shape[-3:-1] == tuple(size):
    return image
  resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Random resized crop + colour jitter; the defaults follow common BC / LAM practice."""
  crop_scale: tuple[float, float] = (0.8, 1.0)    # area fraction of the crop
  crop_ratio: tuple[float, float] = (0.9, 1.1)    # aspect ratio (w/h) of the crop
  brightness: float = 0.1                          # max additive delta on [0, 1] images
  contrast: tuple[float, float] = (0.9, 1.1)
  saturation: tuple[float, float] = (0.9, 1.1)
  hue: float = 0.05


def augment(images: tf.Tensor, seed: tf.Tensor, config: AugmentConfig = AugmentConfig()
            ) -> tf.Tensor:
  """Applies one random crop + colour jitter, drawn from `seed` [2], to all of `images`.

  Args:
    images: uint8 [..., H, W, 3].
    seed: int32/int64 [2] stateless seed.
  Returns:
    uint8, same shape.
  """
  shape = tf.shape(images)
  height, width = images.shape[-3], images.shape[-2]
  flat = tf.reshape(tf.cast(images, tf.float32) / 255.0, [-1, height, width, 3])
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 6)

  # Random resized crop, in normalised box coordinates.
  area = tf.random.stateless_uniform([], seeds[0], *config.crop_scale)
  log_ratio = tf.random.stateless_uniform(
      [], seeds[1], tf.math.log(config.crop_ratio[0]), tf.math.log(config.crop_ratio[1]))
  ratio = tf.exp(log_ratio)
  crop_h = tf.minimum(tf.sqrt(area / ratio), 1.0)
  crop_w = tf.minimum(tf.sqrt(area * ratio), 1.0)
  offset = tf.random.stateless_uniform([2], seeds[2]) * tf.stack([1.0 - crop_h, 1.0 - crop_w])
  box = tf.stack([offset[0], offset[1], offset[0] + crop_h, offset[1] + crop_w])
  num = tf.shape(flat)[0]
  flat = tf.image.crop_and_resize(flat, tf.tile(box[None], [num, 1]), tf.range(num),
                                  [height, width])

  # Colour jitter: one draw per element, the same change on every image.
  flat = tf.image.stateless_random_brightness(flat, config.brightness, seeds[3])
  flat = tf.image.stateless_random_contrast(flat, *config.contrast, seeds[4])
  sat_seed, hue_seed = tf.unstack(tf.random.experimental.stateless_split(seeds[5], 2))
  flat = tf.image.stateless_random_saturation(flat, *config.saturation, sat_seed)
  flat = tf.image.stateless_random_hue(flat, config.hue, hue_seed)
  out = tf.cast(tf.round(tf.clip_by_value(flat, 0.0, 1.0) * 255.0), tf.uint8)
  return tf.reshape(out, shape)


def apply_frame_transforms(
    element: Mapping[str, Any],
    resize_to: tuple[int, int] | None,
    augment_config: AugmentConfig | None = None,
    seed: tf.Tensor | None = None,
) -> dict:
  """Decodes (and resizes) every image key of `element`; augments them all with one `seed`."""
  flat = flatten_keys(element)
  image_keys = sorted(k for k in flat if is_image_key(k))
  for key in image_keys:
    flat[key] = decode_images(flat[key], resize_to)
  if augment_config is not None:
    if seed is None:
      raise ValueError("augmentation needs a seed")
    # Parameters depend on the seed only, so every camera gets the same crop and colour change.
    for key in image_keys:
      flat[key] = augment(flat[key], seed, augment_config)
  return unflatten_keys(flat)


def unflatten_keys(flat: Mapping[str, Any]) -> dict:
  """{'a/b': x} -> {'a': {'b': x}}."""
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    parts = path.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return tree
