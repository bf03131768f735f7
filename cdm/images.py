"""Image conversions and PNG grids (uint8 at the edges, [-1, 1] floats inside)."""

from __future__ import annotations

import io
import math

import numpy as np

from cdm import fileio


def to_float(images_uint8):
  """uint8 [0, 255] -> float32 [-1, 1] (works on numpy and jax arrays)."""
  return images_uint8.astype("float32") / 127.5 - 1.0


def to_uint8(images) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255], rounding to the nearest level."""
  x = np.asarray(images, dtype=np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images_uint8: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
  """Tiles (N, H, W, C) uint8 images into one (rows*H, cols*W, C) image with a black border."""
  n, h, w, c = images_uint8.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.uint8)
  for i in range(n):
    r, k = divmod(i, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = (
        images_uint8[i])
  return grid


def save_png(path: str, image_uint8: np.ndarray, scale: int = 1) -> str:
  """Writes an (H, W, C) uint8 image as PNG, optionally upscaled by pixel repetition."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = np.asarray(image_uint8)
  if scale > 1:
    img = img.repeat(scale, 0).repeat(scale, 1)
  if img.shape[-1] == 1:
    img = img[..., 0]
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  return fileio.write_bytes_atomic(path, buf.getvalue())
