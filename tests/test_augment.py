"""Conditioning augmentation: Gaussian noise levels and blur."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from cdm import config_base
from cdm.diffusion import augment

AUG_T = 100


def _aug(gaussian=True, blur=False, blur_prob=0.5, max_level=AUG_T, smin=0.4, smax=0.6):
  a = config_base.stage_config().augment
  a.gaussian, a.blur, a.blur_prob, a.max_level = gaussian, blur, blur_prob, max_level
  a.num_timesteps, a.beta_schedule = AUG_T, "cosine"
  a.blur_sigma_min, a.blur_sigma_max = smin, smax
  return a


def _cosine_abar(s):
  """Independent closed form of the cosine schedule's abar at 1-indexed level s (unclipped)."""
  f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
  return f(s / AUG_T) / f(0.0)


def _key(seed):
  return jax.random.key(seed, impl="unsafe_rbg")


def test_sampling_levels_and_no_blur():
  """train=False: level 0 is the identity (even with blur on), level s has q(z_s|z_0) statistics."""
  cfg = _aug(gaussian=True, blur=True, blur_prob=1.0)
  f = jax.jit(lambda k, x, level: augment.augment_low_res(k, x, cfg, train=False, level=level))
  rng = np.random.default_rng(0)
  img = jnp.asarray(rng.uniform(-1, 1, (2, 5, 5, 3)), jnp.float32)
  out, lvl = f(_key(0), img, 0)
  np.testing.assert_array_equal(out, img)
  np.testing.assert_array_equal(lvl, [0.0, 0.0])
  assert lvl.dtype == jnp.float32
  c = 0.6
  flat = jnp.full((4000, 2, 2, 1), c)
  for s in (1, 25, 60):
    out, lvl = f(_key(s), flat, s)
    np.testing.assert_allclose(lvl, s * 1000 / AUG_T)
    x = np.asarray(out, np.float64)
    a = _cosine_abar(s)
    np.testing.assert_allclose(x.mean(), math.sqrt(a) * c, atol=4 / math.sqrt(x.size))
    np.testing.assert_allclose(x.std(), math.sqrt(1 - a), rtol=0.03)
  with pytest.raises(ValueError, match="fixed level"):
    augment.augment_low_res(_key(0), img, cfg, train=False)
  with pytest.raises(ValueError, match="must be in"):
    augment.augment_low_res(_key(0), img, cfg, train=False, level=AUG_T + 1)
  with pytest.raises(ValueError, match="gaussian is False"):
    augment.augment_low_res(_key(0), img, _aug(gaussian=False), train=False, level=3)


def test_training_random_levels():
  cfg = _aug(gaussian=True, blur=False, max_level=40)
  rng = np.random.default_rng(1)
  img = jnp.asarray(rng.uniform(-1, 1, (600, 3, 3, 1)), jnp.float32)
  out, lvl = jax.jit(lambda k, x: augment.augment_low_res(k, x, cfg, train=True))(_key(1), img)
  s = np.asarray(lvl) * AUG_T / 1000
  np.testing.assert_allclose(s, np.round(s), atol=1e-4)
  s = np.round(s).astype(int)
  assert s.min() == 0 and s.max() == 40 and len(np.unique(s)) == 41
  clean = s == 0
  np.testing.assert_array_equal(np.asarray(out)[clean], np.asarray(img)[clean])
  assert np.all(np.any(np.asarray(out)[~clean] != np.asarray(img)[~clean], axis=(1, 2, 3)))


def test_blur_kernel_and_reflect_padding():
  sigma = jnp.asarray([0.4, 0.5, 0.6, 3.0])
  k = np.asarray(jax.jit(augment.blur_kernel)(sigma))
  np.testing.assert_allclose(k.sum((1, 2)), 1.0, rtol=1e-6)
  for kb, sb in zip(k, np.asarray(sigma)):
    d2 = np.add.outer(np.arange(-1, 2) ** 2, np.arange(-1, 2) ** 2)
    g = np.exp(-d2 / (2 * sb ** 2))
    np.testing.assert_allclose(kb, g / g.sum(), rtol=1e-5)
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, (4, 6, 5, 2)).astype(np.float32)
  blur = jax.jit(augment.gaussian_blur)
  got = np.asarray(blur(jnp.asarray(x), sigma))
  for b in range(4):
    for ch in range(2):  # scipy's "mirror" is reflection without repeating the edge pixel
      want = ndimage.correlate(x[b, :, :, ch].astype(np.float64), k[b].astype(np.float64),
                               mode="mirror")
      np.testing.assert_allclose(got[b, :, :, ch], want, rtol=1e-5, atol=1e-6)
  const = jnp.full((4, 6, 5, 2), 0.37)
  np.testing.assert_allclose(blur(const, sigma), const, rtol=1e-6)


def test_training_blur_probability_then_noise():
  rng = np.random.default_rng(3)
  img = jnp.asarray(rng.uniform(-1, 1, (400, 4, 4, 1)), jnp.float32)
  same = jnp.broadcast_to(img[:1], img.shape)
  s = 20
  half = _aug(gaussian=False, blur=True, blur_prob=0.5)
  always = _aug(gaussian=False, blur=True, blur_prob=1.0, smin=0.5, smax=0.5)
  noisy = _aug(gaussian=True, blur=True, blur_prob=1.0, smin=0.5, smax=0.5)

  @jax.jit
  def run(k):
    return (augment.augment_low_res(k, img, half, train=True),
            augment.augment_low_res(k, img, always, train=True)[0],
            augment.augment_low_res(k, same, noisy, train=True, level=s),
            augment.gaussian_blur(img, jnp.full((400,), 0.5)))

  (h, lvl), a, (z, zl), ref = run(_key(3))
  np.testing.assert_array_equal(lvl, 0.0)
  changed = np.any(np.asarray(h) != np.asarray(img), axis=(1, 2, 3))
  assert 0.4 < changed.mean() < 0.6
  np.testing.assert_array_equal(np.asarray(h)[~changed], np.asarray(img)[~changed])
  np.testing.assert_allclose(a, ref, rtol=1e-6, atol=1e-7)
  # Blur then noise at level s: E[z_s] = sqrt(abar_s) blur(x).
  np.testing.assert_allclose(zl, s * 1000 / AUG_T)
  want = math.sqrt(_cosine_abar(s)) * np.asarray(ref[0])
  np.testing.assert_allclose(np.asarray(z).mean(0), want, atol=4 * 0.6 / math.sqrt(400))
