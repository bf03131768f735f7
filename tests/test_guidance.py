"""Classifier guidance (ADM Algorithms 1 and 2) against closed forms.

A linear classifier ``logits = W flat(x) + b`` has ``grad_x log p(y | x) = W_y - sum_k p_k W_k``
(``p = softmax(logits)``), so the guided steps can be checked against float64 numpy.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm.diffusion import gaussian, guidance, sampling, schedules

SHAPE = (4, 4, 4, 1)  # B, H, W, C
K = 3


def _linear_classifier(seed=0):
  rng = np.random.default_rng(seed)
  d = int(np.prod(SHAPE[1:]))
  W = rng.normal(size=(K, d)) * 0.5
  b = rng.normal(size=(K,))

  def logits_fn(x, t_model):
    del t_model
    return x.reshape(x.shape[0], -1) @ jnp.asarray(W.T, jnp.float32) + jnp.asarray(b, jnp.float32)

  def grad_np(x, y):  # closed form, float64
    z = x.reshape(x.shape[0], -1).astype(np.float64) @ W.T + b
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    g = W[y] - p @ W
    return g.reshape(x.shape)

  return logits_fn, grad_np


def _diffusion(var_type="fixed_small", steps=None, T=20):
  betas = schedules.get_named_beta_schedule("cosine", T)
  use = None if steps is None else schedules.space_timesteps(T, str(steps))
  return gaussian.GaussianDiffusion.from_betas(betas, model_var_type=var_type,
                                               use_timesteps=use)


def _np(a, t, nd=4):
  return np.asarray(a, np.float64)[t].reshape((-1,) + (1,) * (nd - 1))


def test_cond_fn_is_the_closed_form_gradient():
  logits_fn, grad_np = _linear_classifier()
  x = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
  y = jnp.array([0, 1, 2, 1])
  g = guidance.classifier_cond_fn(logits_fn, y, 2.5)(x, jnp.zeros((4,)))
  np.testing.assert_allclose(np.asarray(g), 2.5 * grad_np(np.asarray(x), np.asarray(y)),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("var_type", ["fixed_small", "learned_range"])
def test_ancestral_mean_shift_is_scale_sigma_grad(var_type):
  """ADM Algorithm 1: guided - unguided sample (same noise) = s * Sigma * grad log p(y|x_t)."""
  logits_fn, grad_np = _linear_classifier()
  diff = _diffusion(var_type)
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(2), 3)
  x = jax.random.normal(k1, SHAPE)
  ch = 2 if var_type == "learned_range" else 1
  out = jax.random.normal(k2, SHAPE[:-1] + (ch,)) * 0.3
  noise = jax.random.normal(k3, SHAPE)
  y = np.array([2, 0, 1, 2])
  t = jnp.array([0, 5, 11, 19])
  s = 3.0
  g = guidance.classifier_cond_fn(logits_fn, y, s)(x, t.astype(jnp.float32))
  guided = guidance.guided_p_sample(diff, out, x, t, noise, g)["sample"]
  plain = diff.p_sample(out, x, t, noise)["sample"]
  var = np.asarray(diff.p_mean_variance(out, x, t)["variance"], np.float64)
  expect = s * var * grad_np(np.asarray(x), y)
  np.testing.assert_allclose(np.asarray(guided - plain, np.float64), expect, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_eps_shift_matches_algorithm_2(eta):
  """ADM Algorithm 2 in float64: eps_hat = eps - sqrt(1-abar) s g, then the DDIM update."""
  logits_fn, grad_np = _linear_classifier(3)
  diff = _diffusion("fixed_small", steps="ddim10")
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(4), 3)
  x = jax.random.normal(k1, SHAPE)
  eps = jax.random.normal(k2, SHAPE) * 0.5
  noise = jax.random.normal(k3, SHAPE)
  y = np.array([1, 1, 0, 2])
  t = jnp.array([1, 3, 6, 9])
  s = 1.7
  g = guidance.classifier_cond_fn(logits_fn, y, s)(x, diff.model_time(t))
  got = guidance.guided_ddim_sample(diff, eps, x, t, noise, g, eta=eta, clip_denoised=False)
  xn, en, tn = np.asarray(x, np.float64), np.asarray(eps, np.float64), np.asarray(t)
  abar, abar_prev = _np(diff.alphas_cumprod, tn), _np(diff.alphas_cumprod_prev, tn)
  eps_hat = en - np.sqrt(1 - abar) * s * grad_np(xn, y)
  x0_hat = (xn - np.sqrt(1 - abar) * eps_hat) / np.sqrt(abar)
  sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
  expect = (np.sqrt(abar_prev) * x0_hat + np.sqrt(1 - abar_prev - sigma ** 2) * eps_hat
            + sigma * np.asarray(noise, np.float64) * (tn != 0).reshape(-1, 1, 1, 1))
  np.testing.assert_allclose(np.asarray(got["sample"], np.float64), expect, rtol=1e-4, atol=2e-5)
  np.testing.assert_allclose(np.asarray(got["pred_xstart"], np.float64), x0_hat, rtol=1e-4,
                             atol=2e-5)


def test_guided_sample_loop_matches_numpy_recursion():
  """The whole compiled chain (one lax.scan, gradient inside) against a float64 recursion."""
  logits_fn, grad_np = _linear_classifier(5)
  diff = _diffusion("fixed_small", steps=5)
  y = np.array([0, 1, 2, 0])
  s = 2.0
  model_fn = lambda x, t: 0.1 * x  # eps = 0.1 x_t
  key = jax.random.PRNGKey(7)
  cond_fn = guidance.classifier_cond_fn(logits_fn, y, s)
  got = jax.jit(lambda d, k: sampling.sample_loop(d, model_fn, SHAPE, k, clip_denoised=False,
                                                  cond_fn=cond_fn))(diff, key)
  k_init, k_steps = jax.random.split(key)
  x = np.asarray(jax.random.normal(k_init, SHAPE, jnp.float32), np.float64)
  for i in reversed(range(diff.num_timesteps)):
    t = np.full((4,), i)
    eps = 0.1 * x
    x0 = np.sqrt(1 / _np(diff.alphas_cumprod, t)) * x - np.sqrt(
        1 / _np(diff.alphas_cumprod, t) - 1) * eps
    mean = _np(diff.posterior_mean_coef1, t) * x0 + _np(diff.posterior_mean_coef2, t) * x
    var = np.exp(_np(diff.posterior_log_variance_clipped, t))
    mean = mean + var * s * grad_np(x, y)
    z = np.asarray(jax.random.normal(jax.random.fold_in(k_steps, i), SHAPE, jnp.float32))
    x = mean + (i > 0) * np.sqrt(var) * z
  np.testing.assert_allclose(np.asarray(got, np.float64), x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_scale_zero_is_unguided_bit_for_bit(sampler):
  """The guided chain with a (traced) scale of 0 reproduces the unguided chain exactly."""
  logits_fn, _ = _linear_classifier(6)
  diff = _diffusion("learned_range", steps="ddim5" if sampler == "ddim" else 5)
  y = jnp.array([0, 1, 2, 0])
  w = jax.random.normal(jax.random.PRNGKey(8), (1, 1, 1, 2)) * 0.5
  model_fn = lambda x, t: jnp.tanh(x * w + 0.01 * t[:, None, None, None])  # eps and v channels

  @functools.partial(jax.jit, static_argnames="guided")
  def run(d, key, scale, guided):
    cond = guidance.classifier_cond_fn(logits_fn, y, scale) if guided else None
    return sampling.sample_loop(d, model_fn, SHAPE, key, sampler=sampler, eta=0.5,
                                cond_fn=cond)

  key = jax.random.PRNGKey(9)
  plain = np.asarray(run(diff, key, 0.0, False))
  zero = np.asarray(run(diff, key, 0.0, True))
  np.testing.assert_array_equal(zero, plain)
  assert not np.array_equal(np.asarray(run(diff, key, 1.0, True)), plain)


def test_stage_sampler_scale_zero_is_the_unguided_sampler():
  """classifier_scale = 0 builds the unguided sampler itself (the classifier is never run)."""
  from cdm import cascade_config, stage_sampler
  from cdm import models
  cfg = cascade_config.load_stage_config("configs/mnist/base16.py", "tiny")
  clf = cascade_config.load_stage_config("configs/mnist/classifier16.py", "tiny")
  model = models.create_model(cfg)
  plain = stage_sampler.make_stage_sampler(cfg, model)
  assert stage_sampler.make_stage_sampler(cfg, model, classifier_config=clf,
                                          classifier_scale=0.0) is plain
  assert stage_sampler.make_stage_sampler(cfg, model, classifier_config=clf,
                                          classifier_scale=1.0) is not plain


def test_stage_sampler_rejects_a_mismatched_classifier():
  from cdm import cascade_config, stage_sampler
  from cdm import models
  cfg = cascade_config.load_stage_config("configs/mnist/base16.py", "tiny")
  clf = cascade_config.load_stage_config("configs/mnist/classifier16.py", "tiny")
  clf.unlock()
  clf.diffusion.num_timesteps = 500
  with pytest.raises(ValueError, match="num_timesteps"):
    stage_sampler.make_stage_sampler(cfg, models.create_model(cfg), classifier_config=clf,
                                     classifier_scale=1.0)
  with pytest.raises(ValueError, match="needs a classifier"):
    stage_sampler.make_stage_sampler(cfg, models.create_model(cfg), classifier_scale=1.0)
