"""Image preprocessing of the paper: crop, pad, anti-aliased resize, low-res from hi-res, flip.

All functions are TensorFlow graph functions on uint8 images (they run inside tf.data) and return
uint8. Resizing happens in float32 and is rounded to the nearest integer.

* Hi-res: optional zero pad to ``data.pad_to_square`` (centered; ``tf.image.resize_with_crop_or_pad``,
  so a larger image is center-cropped to that size), then the largest central square
  (``data.crop == "center"``; ``"none"`` keeps the whole image, squashing its aspect ratio), then an
  anti-aliased resize to ``data.image_size`` (``bilinear`` with ``antialias=True``: a triangle filter
  as wide as the scale factor when downsampling, plain bilinear when upsampling).
* Low-res: ``area`` (box-filter) downsampling of the *emitted uint8 hi-res image* by the integer
  factor ``image_size // low_res_size`` (as guided-diffusion's ``F.interpolate(mode="area")``), so
  ``downsample(batch["image"], h) == batch["low_res"]`` holds exactly.
* Channels: 1-channel data is expanded to 3 when ``data.channels == 3``; 3-channel TFDS data with
  ``data.channels == 1`` is an error (see :func:`check_channels`). Image folders decode straight to
  ``data.channels`` (the image decoder converts RGB to luminance, grayscale to RGB).
* Flip: a random left-right flip of each hi-res image (the low-res is derived afterwards, so the pair
  is always flipped together), drawn per batch with ``tf.random.stateless_uniform`` from an explicit
  seed.

The per-example work is decoding (and, for images whose size is only known after decoding, the
crop/resize); everything else runs on whole batches.
"""

from __future__ import annotations

import numpy as np

from cdm.data._tf import tf


def check_data_config(data) -> None:
  """Raises ``ValueError`` with the fix for an invalid ``config.data`` block."""
  if data.image_size <= 0:
    raise ValueError(f"data.image_size={data.image_size} must be positive.")
  if data.low_res_size < 0:
    raise ValueError(f"data.low_res_size={data.low_res_size} must be 0 (base stage) or positive.")
  if data.low_res_size > 0 and (data.low_res_size >= data.image_size
                                or data.image_size % data.low_res_size):
    raise ValueError(
        f"data.low_res_size={data.low_res_size} must divide data.image_size={data.image_size} and be "
        f"smaller (an SR stage upsamples by an integer factor), e.g. "
        f"--config.data.low_res_size={data.image_size // 2}; use 0 for a base stage.")
  if data.channels not in (1, 3):
    raise ValueError(f"data.channels={data.channels} must be 1 (grayscale) or 3 (RGB).")
  if data.crop not in ("center", "none"):
    raise ValueError(f"data.crop={data.crop!r} must be 'center' or 'none'.")
  if data.pad_to_square < 0:
    raise ValueError(f"data.pad_to_square={data.pad_to_square} must be >= 0 (0 = no padding).")
  if data.shuffle_buffer < 1:
    raise ValueError(f"data.shuffle_buffer={data.shuffle_buffer} must be >= 1.")
  if data.prefetch < 0:
    raise ValueError(f"data.prefetch={data.prefetch} must be >= 0.")


def check_channels(dataset: str, source_channels: int | None, channels: int) -> None:
  """Raises ``ValueError`` when ``dataset``'s channels cannot be converted to ``data.channels``."""
  if source_channels not in (None, 1, 3):
    raise ValueError(f"Dataset {dataset!r} has {source_channels} channels; cdm supports 1 or 3.")
  if source_channels == 3 and channels == 1:
    raise ValueError(f"Dataset {dataset!r} is RGB but data.channels=1; set "
                     f"--config.data.channels=3 (RGB to grayscale is not done implicitly).")


def to_uint8(x: tf.Tensor) -> tf.Tensor:
  """Rounds float pixel values to uint8 (clipped to [0, 255])."""
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def center_crop_square(image: tf.Tensor) -> tf.Tensor:
  """The largest central square of (..., H, W, C) images."""
  shape = tf.shape(image)
  h, w = shape[-3], shape[-2]
  s = tf.minimum(h, w)
  return tf.image.crop_to_bounding_box(image, (h - s) // 2, (w - s) // 2, s, s)


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Anti-aliased (bilinear, ``antialias=True``) resize of (..., H, W, C) uint8 to ``size``; uint8."""
  x = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear", antialias=True)
  return to_uint8(x)


def downsample(images, size: int):
  """Area (box-filter) downsampling of uint8 (..., H, W, C) images to ``size``; uint8.

  Accepts numpy arrays (returns numpy) or tensors. ``H`` must be a multiple of ``size``.
  """
  is_numpy = isinstance(images, np.ndarray)
  x = tf.image.resize(tf.cast(images, tf.float32), [size, size], method="area")
  out = to_uint8(x)
  return out.numpy() if is_numpy else out


def hi_res(image: tf.Tensor, data) -> tf.Tensor:
  """Decoded uint8 (..., H, W, C) -> uint8 (..., S, S, data.channels) (pad, crop, resize)."""
  if data.pad_to_square:
    image = tf.image.resize_with_crop_or_pad(image, data.pad_to_square, data.pad_to_square)
  if data.crop == "center":
    image = center_crop_square(image)
  size = data.image_size
  if not (image.shape[-3] == size and image.shape[-2] == size):
    image = resize(image, size)
  lead = image.shape[:-3]
  image = tf.ensure_shape(image, lead + [size, size, None])
  if data.channels == 3 and image.shape[-1] == 1:
    image = tf.concat([image] * 3, axis=-1)
  return tf.ensure_shape(image, lead + [size, size, data.channels])


def random_flip_batch(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Flips each of (B, H, W, C) left-right with probability 1/2, drawn from the stateless ``seed``."""
  flip = tf.random.stateless_uniform(tf.shape(images)[:1], seed=seed) < 0.5
  return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def finish_batch(images: tf.Tensor, labels: tf.Tensor, data, flip_seed: tf.Tensor | None) -> dict:
  """Hi-res uint8 (B, S, S, C) + labels -> the emitted batch (optional flip, low-res, int32 labels).

  The low-res images are computed from the (flipped) hi-res ones, so the pair is always consistent.
  """
  if flip_seed is not None:
    images = random_flip_batch(images, flip_seed)
  batch = {"image": images, "label": tf.cast(labels, tf.int32)}
  if data.low_res_size > 0:
    batch["low_res"] = downsample(images, data.low_res_size)
  return batch
