"""Conditioning augmentation of the low-res input of SR stages (CDM Sec. 4), on device.

Levels ``s`` are 1-indexed paper steps of the augmentation schedule: ``s = 0`` is clean and
``s = k`` means ``z_k ~ q(z_k | z_0)`` with ``abar = alphas_cumprod[k - 1]``. Images are float in
[-1, 1], NHWC.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cdm.diffusion import schedules


@functools.lru_cache(maxsize=None)
def augment_alphas_cumprod(beta_schedule: str, num_timesteps: int) -> np.ndarray:
  """``(T + 1,)`` float64 abar of the augmentation schedule indexed by level s (entry 0 = 1)."""
  betas = schedules.get_named_beta_schedule(beta_schedule, int(num_timesteps))
  return np.append(1.0, np.cumprod(1.0 - betas))


def aug_level_for_model(s, augment_config) -> jax.Array:
  """The float32 level fed to the model: ``s * 1000 / augment.num_timesteps`` (in [0, 1000])."""
  return jnp.asarray(s, jnp.float32) * (1000.0 / augment_config.num_timesteps)


def noise_low_res(x, s, noise, abar_by_level):
  """``z_s = sqrt(abar_s) x + sqrt(1 - abar_s) noise`` per example (DDPM eq. 4); x kept at s = 0.

  Args:
    x: ``(B, h, w, C)``.
    s: int ``(B,)`` levels.
    noise: standard normal, shape of x.
    abar_by_level: ``(T + 1,)`` from :func:`augment_alphas_cumprod`.
  """
  abar = jnp.asarray(abar_by_level, jnp.float32)[s].reshape((-1,) + (1,) * (x.ndim - 1))
  z = jnp.sqrt(abar) * x + jnp.sqrt(1.0 - abar) * noise
  return jnp.where((s > 0).reshape(abar.shape), z, x).astype(x.dtype)


def blur_kernel(sigma) -> jax.Array:
  """Normalised 3x3 Gaussian kernels ``(B, 3, 3)`` for per-example ``sigma`` ``(B,)`` (sums to 1)."""
  sigma = jnp.asarray(sigma, jnp.float32)
  w = jnp.exp(-0.5 / sigma ** 2)
  k1 = jnp.stack([w, jnp.ones_like(w), w], axis=-1) / (1.0 + 2.0 * w)[..., None]
  return k1[..., :, None] * k1[..., None, :]


def gaussian_blur(x, sigma) -> jax.Array:
  """Depthwise 3x3 Gaussian blur with per-example ``sigma`` and reflect padding.

  Args:
    x: ``(B, h, w, C)`` with h, w >= 2.
    sigma: ``(B,)`` standard deviations in pixels.
  """
  k = blur_kernel(sigma).astype(x.dtype)
  h, w = x.shape[1], x.shape[2]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  out = jnp.zeros_like(x)
  for i in range(3):
    for j in range(3):
      out = out + k[:, i, j, None, None, None] * xp[:, i:i + h, j:j + w, :]
  return out


def augment_low_res(key, low_res, augment_config, *, train: bool, level=None):
  """Applies the configured conditioning augmentation (blur, then Gaussian noise).

  Blur (CDM Sec. 4.3): only when ``train``; each example is blurred with probability
  ``blur_prob`` with ``sigma ~ U(blur_sigma_min, blur_sigma_max)``. Never at sampling.
  Gaussian (CDM Sec. 4.2): at training ``s ~ U{0..max_level}`` per example (unless ``level`` is
  given); at sampling the fixed ``level`` (required) is used (non-truncated augmentation).

  Args:
    key: PRNG key.
    low_res: ``(B, h, w, C)`` float in [-1, 1].
    augment_config: the ``c.augment`` ConfigDict.
    train: training (random levels, blur) or sampling (fixed level, no blur).
    level: int or int ``(B,)`` level s in ``[0, augment.num_timesteps]``; None at training means
      random levels.

  Returns:
    ``(low_res_aug, aug_level_for_model)``, the latter float32 ``(B,)``
    ``= s * 1000 / augment.num_timesteps`` (zeros without Gaussian augmentation).

  Raises:
    ValueError: a level out of range, a missing level at sampling, or a nonzero level without
      Gaussian augmentation.
  """
  a = augment_config
  B = low_res.shape[0]
  T = int(a.num_timesteps)
  is_int = isinstance(level, (int, np.integer))
  if a.blur and train and not 0.0 < a.blur_sigma_min <= a.blur_sigma_max:
    raise ValueError(
        f"need 0 < blur_sigma_min <= blur_sigma_max, got {a.blur_sigma_min}, {a.blur_sigma_max}")
  if not a.gaussian and is_int and level != 0:
    raise ValueError(f"level={level} given but augment.gaussian is False")
  if a.gaussian and level is None and not train:
    raise ValueError("augment.gaussian at sampling needs a fixed level (e.g. sample.aug_level)")
  if a.gaussian and level is None and not 0 <= a.max_level <= T:
    raise ValueError(f"augment.max_level={a.max_level} must be in [0, {T}]")
  if a.gaussian and is_int and not 0 <= level <= T:
    raise ValueError(f"level={level} must be in [0, augment.num_timesteps={T}]")
  k_apply, k_sigma, k_level, k_noise = jax.random.split(key, 4)
  x = low_res
  if a.blur and train:
    sigma = jax.random.uniform(k_sigma, (B,), minval=a.blur_sigma_min, maxval=a.blur_sigma_max)
    apply = jax.random.uniform(k_apply, (B,)) < a.blur_prob
    x = jnp.where(apply[:, None, None, None], gaussian_blur(x, sigma), x)
  if not a.gaussian:
    return x, jnp.zeros((B,), jnp.float32)
  if level is None:
    s = jax.random.randint(k_level, (B,), 0, int(a.max_level) + 1)
  else:
    s = jnp.broadcast_to(jnp.asarray(level, jnp.int32), (B,))
  noise = jax.random.normal(k_noise, x.shape, x.dtype)
  x = noise_low_res(x, s, noise, augment_alphas_cumprod(a.beta_schedule, T))
  return x, aug_level_for_model(s, a)
