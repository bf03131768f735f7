"""Samplers with oracle models for known data distributions, truncation (stop_at), guidance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm import config_base
from cdm.diffusion import sampling, schedules
from cdm.diffusion.gaussian import create_diffusion

T = 200
SHAPE = (1024, 2, 2, 1)  # 4096 scalar samples
ABAR = np.cumprod(1.0 - schedules.get_named_beta_schedule("cosine", T))  # original schedule, float64


def _cfg(var="fixed_small"):
  c = config_base.stage_config().diffusion
  c.num_timesteps, c.beta_schedule, c.model_mean_type = T, "cosine", "epsilon"
  c.model_var_type, c.loss_type, c.noise_conditioning = var, "mse", "index"
  return c


def _key(seed):
  return jax.random.key(seed, impl="unsafe_rbg")  # cheapest to compile


def _abar_of(t_model):
  """The oracle reads abar of the ORIGINAL step it is given (index conditioning)."""
  return jnp.asarray(ABAR, jnp.float32)[t_model.astype(jnp.int32)].reshape(-1, 1, 1, 1)


def point_mass_eps(c):
  """Optimal eps for x0 = c: eps = (x_t - sqrt(abar) c) / sqrt(1 - abar)."""
  def model(x, t_model):
    a = _abar_of(t_model)
    return (x - jnp.sqrt(a) * c) / jnp.sqrt(1 - a)
  return model


def gaussian_eps(mu, s):
  """Optimal eps for x0 ~ N(mu, s^2).

  E[eps | x_t] = sqrt(1-a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a).
  """
  def model(x, t_model):
    a = _abar_of(t_model)
    return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * s * s + 1 - a)
  return model


def gaussian_eps_and_true_logvar(mu, s, diffusion):
  """eps oracle plus the exact log-variance of p(x_{t-1} | x_t) for Gaussian data ("learned").

  For Gaussian data the reverse kernel is Gaussian with variance
  beta_tilde_t + coef1_t^2 Var[x0 | x_t], Var[x0 | x_t] = s^2 (1 - a) / (a s^2 + 1 - a),
  with the respaced process' coefficients (located from the original step the model receives).
  """
  kept = jnp.asarray(diffusion.timestep_map)
  eps = gaussian_eps(mu, s)

  def model(x, t_model):
    i = jnp.searchsorted(kept, t_model.astype(jnp.int32))
    a = _abar_of(t_model)
    bt = diffusion.posterior_variance[i].reshape(-1, 1, 1, 1)
    c1 = diffusion.posterior_mean_coef1[i].reshape(-1, 1, 1, 1)
    var = bt + c1 ** 2 * s * s * (1 - a) / (a * s * s + 1 - a)
    return jnp.concatenate([eps(x, t_model), jnp.broadcast_to(jnp.log(var), x.shape)], -1)

  return model


def _stats(x):
  x = np.asarray(x, np.float64)
  return x.mean(), x.std()


def test_point_mass_full_chain_and_stop_at():
  c = 0.5
  d = create_diffusion(_cfg(), "ddim20")  # kept steps 0, 10, ..., 190
  model = point_mass_eps(c)

  @jax.jit
  def run(d, key):
    full = sampling.sample_loop(d, model, SHAPE, key)
    return full, sampling.sample_loop(d, model, SHAPE, key, stop_at=101)

  full, trunc = run(d, _key(0))
  np.testing.assert_allclose(full, c, atol=1e-4)
  # x_s ~ q(x_s | x_0 = c) with abar = ABAR[s - 1] of the ORIGINAL schedule.
  m, sd = _stats(trunc)
  np.testing.assert_allclose(m, np.sqrt(ABAR[100]) * c, atol=4 * sd / 64)
  np.testing.assert_allclose(sd, np.sqrt(1 - ABAR[100]), rtol=0.04)


def test_stop_at_validation():
  d = create_diffusion(_cfg(), "ddim20")
  assert sampling.stop_index(d, 0) == -1
  assert sampling.stop_index(d, 1) == 0
  assert sampling.stop_index(d, 191) == 19
  with pytest.raises(ValueError, match=r"nearest allowed values: \[91, 101\]"):
    sampling.stop_index(d, 95)
  with pytest.raises(ValueError, match="must be in"):
    sampling.stop_index(d, T + 1)
  full = create_diffusion(_cfg())
  assert sampling.stop_index(full, T) == T - 1  # x_T: no step is run


def test_gaussian_data_exact_ancestral_on_respaced_schedule():
  mu, s = 0.3, 0.5
  d = create_diffusion(_cfg("learned"), "10")
  model = gaussian_eps_and_true_logvar(mu, s, d)
  x = jax.jit(lambda d, k: sampling.sample_loop(d, model, SHAPE, k, clip_denoised=False))(d, _key(1))
  m, sd = _stats(x)
  np.testing.assert_allclose(m, mu, atol=4 * s / 64)
  np.testing.assert_allclose(sd, s, rtol=0.035)


def test_gaussian_data_ddim_deterministic_and_inverted():
  mu, s = 0.3, 0.5
  model = gaussian_eps(mu, s)
  d = create_diffusion(_cfg(), "100")  # stride 2 of T = 200
  x_T = jnp.asarray(np.random.default_rng(3).normal(size=SHAPE), jnp.float32)
  f = jax.jit(lambda d, k: sampling.sample_loop(d, model, SHAPE, k, sampler="ddim",
                                                clip_denoised=False, x_T=x_T))
  a, b = f(d, _key(4)), f(d, _key(5))
  np.testing.assert_array_equal(a, b)  # eta = 0: the key is irrelevant
  m, sd = _stats(a)
  np.testing.assert_allclose(m, mu, atol=4 * s / 64)
  np.testing.assert_allclose(sd, s, rtol=0.035)  # ODE discretisation error ~1% here
  back = jax.jit(lambda d, x: sampling.ddim_reverse_loop(d, model, x))(d, a[:64])
  np.testing.assert_allclose(back, x_T[:64], rtol=0.05, atol=0.01)


def test_classifier_free_guidance():
  calls = []

  def model_fn_y(x, t, y):
    calls.append(x.shape[0])
    yy = y.astype(jnp.float32).reshape(-1, 1, 1, 1)
    return jnp.concatenate([x * yy + t.reshape(-1, 1, 1, 1), x + 2 * yy], -1)

  B, C = 3, 2
  x = jnp.asarray(np.random.default_rng(0).normal(size=(B, 2, 2, C)), jnp.float32)
  t = jnp.asarray([1.0, 5.0, 9.0])
  y = jnp.asarray([1, 2, 3])
  null = 10
  run = jax.jit(lambda x, t: [sampling.classifier_free_guidance(model_fn_y, y, null, w, C)(x, t)
                              for w in (0.0, 2.0)])
  g0, g2 = run(x, t)
  assert calls == [2 * B, 2 * B]  # one batched call per guided evaluation
  cond = np.asarray(model_fn_y(x, t, y))
  uncond = np.asarray(model_fn_y(x, t, jnp.full_like(y, null)))
  np.testing.assert_array_equal(g0, cond)
  np.testing.assert_allclose(g2[..., :C], 3 * cond[..., :C] - 2 * uncond[..., :C], rtol=1e-6)
  np.testing.assert_array_equal(g2[..., C:], cond[..., C:])


def test_sample_loop_guided_intermediates_threshold():
  d = create_diffusion(_cfg("learned_range"), "ddim10")
  model_fn_y = lambda x, t, y: jnp.concatenate([0.1 * x, jnp.zeros_like(x)], -1)
  y = jnp.zeros((4,), jnp.int32)
  model = sampling.classifier_free_guidance(model_fn_y, y, 10, 1.5, 1)
  x, xs = jax.jit(lambda d, k: sampling.sample_loop(
      d, model, (4, 3, 3, 1), k, dynamic_threshold=0.995, return_intermediate=True, eta=0.5,
      sampler="ddim"))(d, _key(6))
  assert xs.shape == (10, 4, 3, 3, 1)
  np.testing.assert_array_equal(xs[-1], x)
  assert np.all(np.isfinite(x)) and np.abs(x).max() <= 1.0 + 1e-6
  with pytest.raises(ValueError, match="sampler"):
    sampling.sample_loop(d, model, (4, 3, 3, 1), _key(0), sampler="euler")
