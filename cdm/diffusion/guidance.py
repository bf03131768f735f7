"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", Sec. 4).

A noisy classifier ``p_phi(y | x_t)`` steers the reverse process towards class y:

* **Ancestral sampling, ADM Algorithm 1.** The reverse step ``N(mu, Sigma)`` becomes
  ``N(mu + s Sigma grad_x log p_phi(y | x_t), Sigma)``: the mean moves by ``s Sigma g`` where
  ``g = grad_{x_t} log p_phi(y | x_t)`` is evaluated at the current state and s is the
  classifier scale (:func:`condition_mean`).
* **DDIM, ADM Algorithm 2.** The score form: ``eps_hat = eps_theta(x_t) - sqrt(1 - abar_t) s g``,
  then the usual DDIM update with ``x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)``
  (:func:`condition_eps`). x0_hat is obtained by shifting the model's (clipped) x_0 by
  ``(1 - abar_t) / sqrt(abar_t) s g``, which equals the formula above and leaves x_0 untouched
  when ``s g = 0``.

Everything here is pure and jittable; :func:`classifier_cond_fn` takes the gradient with
``jax.grad`` so the sampler's ``lax.scan`` computes it on device at every step.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from cdm.diffusion.gaussian import GaussianDiffusion, _bcast


def classifier_cond_fn(logits_fn: Callable, y, scale) -> Callable:
  """``cond_fn(x_t, t_model) = s * grad_{x_t} log p_phi(y | x_t)``, one gradient per example.

  ``log p_phi(y | x_t) = log_softmax(logits_fn(x_t, t_model))[y]``. Examples are independent
  (the classifier has no cross-example layers), so the gradient of the summed log-probabilities
  gives every example its own gradient in one backward pass.

  Args:
    logits_fn: ``logits_fn(x_t, t_model) -> (B, K)`` logits of the noisy classifier.
    y: int ``(B,)`` target classes.
    scale: classifier scale s (float, may be traced).

  Returns:
    ``cond_fn(x_t, t_model) -> (B, H, W, C)`` float32, the scaled gradient.
  """
  y = jnp.asarray(y, jnp.int32)

  def log_prob(x, t_model):
    logits = logits_fn(x, t_model).astype(jnp.float32)
    lp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.sum(jnp.take_along_axis(lp, y[:, None], axis=-1))

  def cond_fn(x_t, t_model):
    x_t = jax.lax.stop_gradient(x_t).astype(jnp.float32)
    return jnp.asarray(scale, jnp.float32) * jax.grad(log_prob)(x_t, t_model)

  return cond_fn


def condition_mean(out: dict, grad: jax.Array) -> dict:
  """ADM Algorithm 1: ``mu <- mu + Sigma * grad`` (``grad`` already multiplied by s)."""
  return {**out, "mean": out["mean"] + out["variance"] * grad}


def condition_eps(diffusion: GaussianDiffusion, out: dict, x_t, t, grad: jax.Array) -> dict:
  """ADM Algorithm 2: ``eps <- eps - sqrt(1 - abar_t) grad`` and the matching x_0 and mean.

  ``x_0 = x_t / sqrt(abar) - sqrt(1/abar - 1) eps`` (DDPM eq. 4 inverted), so the eps shift moves
  x_0 by ``+ sqrt(1/abar - 1) sqrt(1 - abar) grad``; the posterior mean is recomputed from it.

  Args:
    diffusion: the (respaced) process.
    out: :meth:`GaussianDiffusion.p_mean_variance` output (``eps``, ``pred_xstart``, ...).
    x_t: ``(B, H, W, C)`` current state.
    t: int ``(B,)`` respaced steps.
    grad: ``s * grad log p(y | x_t)``.

  Returns:
    ``out`` with ``eps``, ``pred_xstart`` and ``mean`` replaced.
  """
  nd = x_t.ndim
  sqrt_one_minus = _bcast(diffusion.sqrt_one_minus_alphas_cumprod, t, nd)
  eps = out["eps"] - sqrt_one_minus * grad
  pred_xstart = out["pred_xstart"] + (
      _bcast(diffusion.sqrt_recipm1_alphas_cumprod, t, nd) * sqrt_one_minus * grad)
  mean, _, _ = diffusion.q_posterior_mean_variance(pred_xstart, x_t, t)
  return {**out, "eps": eps, "pred_xstart": pred_xstart, "mean": mean}


def guided_p_sample(diffusion: GaussianDiffusion, model_output, x_t, t, noise, grad,
                    clip_denoised: bool = True, dynamic_threshold: float = 0.0) -> dict:
  """Ancestral step with classifier guidance (ADM Algorithm 1).

  ``x_{t-1} = mu + Sigma g + sigma z`` (no noise at t = 0); the same arithmetic as
  :meth:`GaussianDiffusion.p_sample` otherwise, so ``g = 0`` reproduces it exactly.
  """
  out = condition_mean(
      diffusion.p_mean_variance(model_output, x_t, t, clip_denoised, dynamic_threshold), grad)
  nonzero = (t != 0).astype(x_t.dtype).reshape((-1,) + (1,) * (x_t.ndim - 1))
  sample = out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise
  return {"sample": sample, "pred_xstart": out["pred_xstart"]}


def guided_ddim_sample(diffusion: GaussianDiffusion, model_output, x_t, t, noise, grad,
                       eta: float = 0.0, clip_denoised: bool = True,
                       dynamic_threshold: float = 0.0) -> dict:
  """DDIM step with classifier guidance (ADM Algorithm 2, DDIM eq. 12 with the shifted eps).

  ``x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma^2) eps_hat + sigma z`` with
  ``sigma = eta sqrt(beta_tilde_t)``; the same arithmetic as :meth:`GaussianDiffusion.ddim_sample`
  otherwise, so ``g = 0`` reproduces it exactly.
  """
  nd = x_t.ndim
  out = condition_eps(
      diffusion, diffusion.p_mean_variance(model_output, x_t, t, clip_denoised,
                                           dynamic_threshold), x_t, t, grad)
  sigma = eta * jnp.sqrt(_bcast(diffusion.posterior_variance, t, nd))
  one_minus_prev = _bcast(diffusion.one_minus_alphas_cumprod_prev, t, nd)
  mean = (out["pred_xstart"] * jnp.sqrt(_bcast(diffusion.alphas_cumprod_prev, t, nd))
          + jnp.sqrt(jnp.maximum(one_minus_prev - sigma ** 2, 0.0)) * out["eps"])
  nonzero = (t != 0).astype(x_t.dtype).reshape((-1,) + (1,) * (nd - 1))
  return {"sample": mean + nonzero * sigma * noise, "pred_xstart": out["pred_xstart"]}
