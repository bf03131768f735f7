"""Gaussian diffusion (DDPM / Improved DDPM / DDIM) as a pure-JAX pytree.

Equation numbers: DDPM = Ho et al. 2020; IDDPM = Nichol & Dhariwal 2021; DDIM = Song et al. 2020.
Timesteps are 0-indexed in code: ``t = 0..T-1``, and array entry ``[t]`` is the paper's step ``t+1``.
All schedule arrays are computed in float64 numpy, then cast to float32 ``jnp`` fields.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.scipy.special import ndtr

from cdm.diffusion import schedules

MEAN_TYPES = ("epsilon", "start_x", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
LOSS_TYPES = ("mse", "rescaled_mse", "kl", "rescaled_kl")
NOISE_CONDITIONINGS = ("index", "continuous")


def mean_flat(x: jax.Array) -> jax.Array:
  """Mean over all non-batch dimensions."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """Log-probability of [-1, 1] data under a Gaussian discretised to 256 bins (DDPM eq. 13).

  Each value ``x`` (a bin centre ``-1 + 2k/255``) owns ``[x - 1/255, x + 1/255]``; the first bin
  extends to -inf and the last to +inf, so the 256 probabilities sum to 1.

  Args:
    x: data, any shape, values on the 256-level grid of [-1, 1].
    means: Gaussian means, broadcastable to x.
    log_scales: log standard deviations, broadcastable to x.

  Returns:
    Elementwise log-likelihoods (nats), the shape of x.
  """
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  plus_in = inv_stdv * (centered + 1.0 / 255.0)
  min_in = inv_stdv * (centered - 1.0 / 255.0)
  # One (exact) ndtr call on stacked arguments keeps the compiled graph small.
  cdf_plus, cdf_min, sf_plus, sf_min = ndtr(jnp.stack([plus_in, min_in, -plus_in, -min_in]))
  # Difference of CDFs taken on the side of the mean where it does not cancel catastrophically.
  cdf_delta = jnp.where(centered > 0, sf_min - sf_plus, cdf_plus - cdf_min)
  probs = jnp.where(x < -0.999, cdf_plus, jnp.where(x > 0.999, sf_min, cdf_delta))
  return jnp.log(jnp.maximum(probs, 1e-12))


def dynamic_threshold_x0(x0: jax.Array, percentile: float) -> jax.Array:
  """Imagen dynamic thresholding (Saharia et al. 2022, Sec. 2.3).

  Per example, ``s = max(quantile_p(|x0|), 1)``; returns ``clip(x0, -s, s) / s``.
  """
  flat = jnp.abs(x0.reshape(x0.shape[0], -1))
  s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
  s = s.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
  return jnp.clip(x0, -s, s) / s


def _bcast(arr: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """``arr[t]`` reshaped to ``(B, 1, ..., 1)`` with ``ndim`` dims."""
  return arr[t].reshape((t.shape[0],) + (1,) * (ndim - 1))


@struct.dataclass
class GaussianDiffusion:
  """Schedule arrays (float32, indexed by the respaced step) plus static settings.

  Build with :func:`create_diffusion` or :meth:`from_betas`. It is a pytree: pass it as an
  argument of jitted functions. ``timestep_map`` (static tuple) maps respaced step i to the
  original training step; ``model_times`` is what the model receives (see :meth:`model_time`).
  """
  betas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  alphas_cumprod_next: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  log_one_minus_alphas_cumprod: jax.Array
  one_minus_alphas_cumprod: jax.Array
  one_minus_alphas_cumprod_prev: jax.Array
  one_minus_alphas_cumprod_next: jax.Array
  sqrt_recip_alphas_cumprod: jax.Array
  sqrt_recipm1_alphas_cumprod: jax.Array
  posterior_variance: jax.Array
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array
  log_betas: jax.Array
  fixed_large_variance: jax.Array
  fixed_large_log_variance: jax.Array
  model_times: jax.Array
  model_mean_type: str = struct.field(pytree_node=False, default="epsilon")
  model_var_type: str = struct.field(pytree_node=False, default="fixed_small")
  loss_type: str = struct.field(pytree_node=False, default="mse")
  noise_conditioning: str = struct.field(pytree_node=False, default="index")
  timestep_map: tuple = struct.field(pytree_node=False, default=())
  original_num_timesteps: int = struct.field(pytree_node=False, default=0)

  # ------------------------------------------------------------------ construction
  @classmethod
  def from_betas(cls, betas, *, model_mean_type="epsilon", model_var_type="fixed_small",
                 loss_type="mse", noise_conditioning="index",
                 use_timesteps: Optional[Sequence[int]] = None) -> "GaussianDiffusion":
    """Builds the process from the original betas, optionally respaced to ``use_timesteps``.

    Respacing (IDDPM Sec. 4): keep steps S, ``abar'_i = abar_{S_i}`` and
    ``beta'_i = 1 - abar_{S_i} / abar_{S_{i-1}}``; ``timestep_map = S``.
    """
    for name, value, allowed in (("model_mean_type", model_mean_type, MEAN_TYPES),
                                 ("model_var_type", model_var_type, VAR_TYPES),
                                 ("loss_type", loss_type, LOSS_TYPES),
                                 ("noise_conditioning", noise_conditioning, NOISE_CONDITIONINGS)):
      if value not in allowed:
        raise ValueError(f"{name}={value!r}; expected one of {allowed}")
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 1 or np.any(betas <= 0) or np.any(betas > 1):
      raise ValueError("betas must be a non-empty 1-D array with values in (0, 1]")
    T = betas.size
    abar = np.cumprod(1.0 - betas)
    if use_timesteps is None:
      kept = np.arange(T)
    else:
      kept = np.array(sorted(set(int(s) for s in use_timesteps)), dtype=np.int64)
      if kept.size == 0 or kept[0] < 0 or kept[-1] >= T:
        raise ValueError(f"use_timesteps must be a non-empty subset of 0..{T - 1}")
      if kept.size < T:
        abar = abar[kept]
        betas = 1.0 - abar / np.append(1.0, abar[:-1])
    if noise_conditioning == "index":
      model_times = kept.astype(np.float64)
    else:
      model_times = schedules.abar_to_model_time(abar)
    return cls(**_schedule_arrays(betas, abar), model_times=jnp.asarray(model_times, jnp.float32),
               model_mean_type=model_mean_type, model_var_type=model_var_type,
               loss_type=loss_type, noise_conditioning=noise_conditioning,
               timestep_map=tuple(int(s) for s in kept), original_num_timesteps=T)

  @property
  def num_timesteps(self) -> int:
    """Number of (respaced) steps of this process."""
    return len(self.timestep_map)

  def model_time(self, t: jax.Array) -> jax.Array:
    """The float32 ``(B,)`` time input of the model for respaced steps ``t``.

    ``"index"``: the original training step ``float(timestep_map[t])`` (IDDPM respacing: the model
    always sees the step it was trained on). ``"continuous"``:
    :func:`schedules.abar_to_model_time` of ``abar_t``, in [0, 1000], identical for any respacing.
    """
    return self.model_times[t]

  # ------------------------------------------------------------------ forward process
  def q_mean_variance(self, x_start, t):
    """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM eq. 4); returns mean, var, log var."""
    mean = _bcast(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
    var = _bcast(self.one_minus_alphas_cumprod, t, x_start.ndim)
    logvar = _bcast(self.log_one_minus_alphas_cumprod, t, x_start.ndim)
    return mean, jnp.broadcast_to(var, x_start.shape), jnp.broadcast_to(logvar, x_start.shape)

  def q_sample(self, x_start, t, noise):
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (DDPM eq. 4)."""
    return (_bcast(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
            + _bcast(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise)

  def q_posterior_mean_variance(self, x_start, x_t, t):
    """q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I) (DDPM eqs. 6-7).

    Returns mean, variance and the *clipped* log-variance (at t=0, where beta_tilde = 0, the
    log-variance of step 1 is used, as in the reference code).
    """
    nd = x_t.ndim
    mean = _bcast(self.posterior_mean_coef1, t, nd) * x_start + _bcast(
        self.posterior_mean_coef2, t, nd) * x_t
    var = jnp.broadcast_to(_bcast(self.posterior_variance, t, nd), x_t.shape)
    logvar = jnp.broadcast_to(_bcast(self.posterior_log_variance_clipped, t, nd), x_t.shape)
    return mean, var, logvar

  # ------------------------------------------------------------------ parameterisations
  def predict_xstart_from_eps(self, x_t, t, eps):
    """x_0 = x_t / sqrt(abar) - sqrt(1/abar - 1) eps (inverse of DDPM eq. 4)."""
    return (_bcast(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
            - _bcast(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps)

  def predict_eps_from_xstart(self, x_t, t, pred_xstart):
    """eps = (x_t / sqrt(abar) - x_0) / sqrt(1/abar - 1)."""
    return ((_bcast(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - pred_xstart)
            / _bcast(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))

  def predict_xstart_from_v(self, x_t, t, v):
    """x_0 = sqrt(abar) x_t - sqrt(1 - abar) v, with v = sqrt(abar) eps - sqrt(1-abar) x_0."""
    return (_bcast(self.sqrt_alphas_cumprod, t, x_t.ndim) * x_t
            - _bcast(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * v)

  def v_target(self, x_start, t, noise):
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, Sec. 4)."""
    return (_bcast(self.sqrt_alphas_cumprod, t, x_start.ndim) * noise
            - _bcast(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * x_start)

  def _split_output(self, model_output, x_t):
    c = x_t.shape[-1]
    learned = self.model_var_type in ("learned", "learned_range")
    want = 2 * c if learned else c
    if model_output.shape[-1] != want:
      raise ValueError(
          f"model_var_type={self.model_var_type!r} needs {want} output channels for {c} image "
          f"channels, got {model_output.shape[-1]} (check model.learn_sigma)")
    if learned:
      return model_output[..., :c], model_output[..., c:]
    return model_output, None

  def p_mean_variance(self, model_output, x_t, t, clip_denoised: bool = True,
                      dynamic_threshold: float = 0.0):
    """p(x_{t-1} | x_t) from the model OUTPUT (not the model function).

    Mean: q-posterior mean at the predicted x_0 (DDPM eq. 7; for eps this equals DDPM eq. 11
    without clipping). Variance: ``fixed_small`` = beta_tilde (clipped log), ``fixed_large`` =
    beta_t (beta_tilde_1 at t=0), ``learned`` = exp(v), ``learned_range`` = IDDPM eq. 15,
    ``log Sigma = frac log beta_t + (1 - frac) log beta_tilde_t``, ``frac = (v + 1) / 2``.

    Args:
      model_output: ``(B, ..., C)`` or ``(B, ..., 2C)`` (learned variances; mean part first).
      x_t: ``(B, ..., C)``.
      t: int ``(B,)`` respaced steps.
      clip_denoised: clip predicted x_0 to [-1, 1].
      dynamic_threshold: static float; if > 0, Imagen dynamic thresholding at this percentile
        (replaces clipping).

    Returns:
      dict ``mean``, ``variance``, ``log_variance``, ``pred_xstart``, ``eps`` (eps implied by the
      processed ``pred_xstart``).
    """
    nd = x_t.ndim
    mean_out, var_out = self._split_output(model_output, x_t)
    if self.model_var_type == "fixed_small":
      log_var = jnp.broadcast_to(_bcast(self.posterior_log_variance_clipped, t, nd), x_t.shape)
    elif self.model_var_type == "fixed_large":
      log_var = jnp.broadcast_to(_bcast(self.fixed_large_log_variance, t, nd), x_t.shape)
    elif self.model_var_type == "learned":
      log_var = var_out
    else:
      frac = (var_out + 1.0) / 2.0
      log_var = (frac * _bcast(self.log_betas, t, nd)
                 + (1.0 - frac) * _bcast(self.posterior_log_variance_clipped, t, nd))
    if self.model_mean_type == "epsilon":
      pred_xstart = self.predict_xstart_from_eps(x_t, t, mean_out)
    elif self.model_mean_type == "start_x":
      pred_xstart = mean_out
    else:
      pred_xstart = self.predict_xstart_from_v(x_t, t, mean_out)
    if dynamic_threshold > 0:
      pred_xstart = dynamic_threshold_x0(pred_xstart, dynamic_threshold)
    elif clip_denoised:
      pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
    mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
    return {"mean": mean, "variance": jnp.exp(log_var), "log_variance": log_var,
            "pred_xstart": pred_xstart, "eps": self.predict_eps_from_xstart(x_t, t, pred_xstart)}

  # ------------------------------------------------------------------ sampling steps
  def p_sample(self, model_output, x_t, t, noise, clip_denoised: bool = True,
               dynamic_threshold: float = 0.0):
    """Ancestral step x_{t-1} = mu + sigma noise (DDPM Alg. 2); no noise at t = 0.

    Returns dict ``sample``, ``pred_xstart``.
    """
    out = self.p_mean_variance(model_output, x_t, t, clip_denoised, dynamic_threshold)
    nonzero = (t != 0).astype(x_t.dtype).reshape((-1,) + (1,) * (x_t.ndim - 1))
    sample = out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise
    return {"sample": sample, "pred_xstart": out["pred_xstart"]}

  def ddim_sample(self, model_output, x_t, t, noise, eta: float = 0.0, clip_denoised: bool = True,
                  dynamic_threshold: float = 0.0):
    """DDIM step (DDIM eq. 12 with sigma of eq. 16):

    ``x_{t-1} = sqrt(abar_{t-1}) x0 + sqrt(1 - abar_{t-1} - sigma^2) eps + sigma noise``,
    ``sigma = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1})``;
    eps is re-derived from the (clipped) x0. eta = 0: deterministic; eta = 1: DDPM posterior.
    Returns dict ``sample``, ``pred_xstart``.
    """
    nd = x_t.ndim
    out = self.p_mean_variance(model_output, x_t, t, clip_denoised, dynamic_threshold)
    # sigma^2 = eta^2 (1 - abar_{t-1}) / (1 - abar_t) (1 - abar_t / abar_{t-1}) = eta^2 beta_tilde_t.
    sigma = eta * jnp.sqrt(_bcast(self.posterior_variance, t, nd))
    one_minus_prev = _bcast(self.one_minus_alphas_cumprod_prev, t, nd)
    mean = (out["pred_xstart"] * jnp.sqrt(_bcast(self.alphas_cumprod_prev, t, nd))
            + jnp.sqrt(jnp.maximum(one_minus_prev - sigma ** 2, 0.0)) * out["eps"])
    nonzero = (t != 0).astype(x_t.dtype).reshape((-1,) + (1,) * (nd - 1))
    return {"sample": mean + nonzero * sigma * noise, "pred_xstart": out["pred_xstart"]}

  def ddim_reverse_sample(self, model_output, x_t, t, clip_denoised: bool = True,
                          dynamic_threshold: float = 0.0):
    """Deterministic DDIM inversion step x_t -> x_{t+1} (DDIM eq. 12 run forward, eta = 0, Sec. 4.3).

    ``x_{t+1} = sqrt(abar_{t+1}) x0 + sqrt(1 - abar_{t+1}) eps`` with x0, eps predicted at t.
    Returns dict ``sample``, ``pred_xstart``.
    """
    out = self.p_mean_variance(model_output, x_t, t, clip_denoised, dynamic_threshold)
    abar_next = _bcast(self.alphas_cumprod_next, t, x_t.ndim)
    one_minus_next = _bcast(self.one_minus_alphas_cumprod_next, t, x_t.ndim)
    sample = out["pred_xstart"] * jnp.sqrt(abar_next) + jnp.sqrt(one_minus_next) * out["eps"]
    return {"sample": sample, "pred_xstart": out["pred_xstart"]}

  # ------------------------------------------------------------------ likelihood terms
  def vb_terms_bpd(self, model_output, x_start, x_t, t, clip_denoised: bool = True):
    """One term of the variational bound, per example, in bits/dim (DDPM eq. 5).

    ``L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))`` for t > 0 and the discretised Gaussian
    decoder NLL ``L_0 = -log p(x_0|x_1)`` (DDPM eq. 13, 256 bins, open ends) at t = 0.
    Takes the model OUTPUT. Returns dict ``output`` (B,) and ``pred_xstart``.
    """
    true_mean, _, true_logvar = self.q_posterior_mean_variance(x_start, x_t, t)
    out = self.p_mean_variance(model_output, x_t, t, clip_denoised)
    kl = normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"])
    kl = mean_flat(kl) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
    nll = mean_flat(nll) / math.log(2.0)
    return {"output": jnp.where(t == 0, nll, kl), "pred_xstart": out["pred_xstart"]}

  def prior_bpd(self, x_start):
    """KL(q(x_T | x_0) || N(0, I)) per example in bits/dim (DDPM eq. 5, L_T)."""
    t = jnp.full((x_start.shape[0],), self.num_timesteps - 1, jnp.int32)
    mean, _, logvar = self.q_mean_variance(x_start, t)
    return mean_flat(normal_kl(mean, logvar, 0.0, 0.0)) / math.log(2.0)

  def calc_bpd_loop(self, model_fn: Callable, x_start, key, clip_denoised: bool = True):
    """Full variational bound (bits/dim) with one ``lax.scan`` over every step.

    Args:
      model_fn: ``model_fn(x_t, t_model) -> output``.
      x_start: ``(B, ...)`` data in [-1, 1].
      key: PRNG key; the noise of step t is ``normal(fold_in(key, t))``.
      clip_denoised: clip predicted x_0.

    Returns:
      dict ``total_bpd`` (B,), ``prior_bpd`` (B,), ``vb`` (B, T), ``xstart_mse`` (B, T),
      ``mse`` (B, T) (eps MSE).
    """
    B = x_start.shape[0]

    def step(_, i):
      t = jnp.full((B,), i, jnp.int32)
      noise = jax.random.normal(jax.random.fold_in(key, i), x_start.shape, x_start.dtype)
      x_t = self.q_sample(x_start, t, noise)
      terms = self.vb_terms_bpd(model_fn(x_t, self.model_time(t)), x_start, x_t, t, clip_denoised)
      eps = self.predict_eps_from_xstart(x_t, t, terms["pred_xstart"])
      return None, (terms["output"], mean_flat((terms["pred_xstart"] - x_start) ** 2),
                    mean_flat((eps - noise) ** 2))

    _, (vb, xmse, mse) = jax.lax.scan(step, None, jnp.arange(self.num_timesteps))
    vb, xmse, mse = vb.T, xmse.T, mse.T
    prior = self.prior_bpd(x_start)
    return {"total_bpd": vb.sum(axis=1) + prior, "prior_bpd": prior, "vb": vb,
            "xstart_mse": xmse, "mse": mse}

  # ------------------------------------------------------------------ training
  def training_losses(self, model_fn: Callable, x_start, t, noise):
    """Per-example training losses at steps ``t`` (call on the un-respaced process).

    ``mse``: mean-flat squared error of the mean branch against its target (eps: DDPM eq. 14
    L_simple; start_x: x_0; v: v). ``vb``: the bound term (bits/dim); with learned variances it
    is computed with a stop-gradient on the mean branch, so it only trains the variance (IDDPM
    eq. 16, L_hybrid = L_simple + lambda L_vlb, lambda = 0.001, applied as a factor
    ``num_timesteps / 1000`` on the per-term vb for ``rescaled_mse``). With fixed variances
    ``vb`` is reported (no gradient) but not added.
    ``kl``: loss = vb (rescaled_kl: times num_timesteps; IDDPM L_vlb).

    Args:
      model_fn: ``model_fn(x_t, t_model) -> output``.
      x_start: ``(B, ..., C)`` data in [-1, 1].
      t: int ``(B,)`` steps.
      noise: standard normal, shape of x_start.

    Returns:
      dict ``loss``, ``mse``, ``vb``, each ``(B,)``.
    """
    x_t = self.q_sample(x_start, t, noise)
    model_output = model_fn(x_t, self.model_time(t))
    mean_out, var_out = self._split_output(model_output, x_t)
    if self.model_mean_type == "epsilon":
      target = noise
    elif self.model_mean_type == "start_x":
      target = x_start
    else:
      target = self.v_target(x_start, t, noise)
    mse = mean_flat((target - mean_out) ** 2)
    if self.loss_type in ("kl", "rescaled_kl"):
      vb = self.vb_terms_bpd(model_output, x_start, x_t, t, clip_denoised=False)["output"]
      scale = self.num_timesteps if self.loss_type == "rescaled_kl" else 1.0
      return {"loss": vb * scale, "mse": jax.lax.stop_gradient(mse), "vb": vb}
    if var_out is not None:
      frozen = jnp.concatenate([jax.lax.stop_gradient(mean_out), var_out], axis=-1)
      vb = self.vb_terms_bpd(frozen, x_start, x_t, t, clip_denoised=False)["output"]
      if self.loss_type == "rescaled_mse":
        vb = vb * (self.num_timesteps / 1000.0)
      loss = mse + vb
    else:
      vb = jax.lax.stop_gradient(
          self.vb_terms_bpd(model_output, x_start, x_t, t, clip_denoised=False)["output"])
      loss = mse
    return {"loss": loss, "mse": mse, "vb": vb}


def _schedule_arrays(betas: np.ndarray, abar: np.ndarray) -> dict:
  """All float64 schedule quantities from (betas, abar), cast to float32 jnp arrays."""
  n = betas.size
  alphas = 1.0 - betas
  abar_prev = np.append(1.0, abar[:-1])
  abar_next = np.append(abar[1:], 0.0)
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  # beta_tilde_0 = 0: use beta_tilde_1 for its log (reference-code "clipped" log variance).
  first = post_var[1] if n > 1 else betas[0]
  post_logvar = np.log(np.append(first, post_var[1:]))
  large_var = np.append(first, betas[1:])
  arrays = {
      "betas": betas,
      "alphas_cumprod": abar,
      "alphas_cumprod_prev": abar_prev,
      "alphas_cumprod_next": abar_next,
      "sqrt_alphas_cumprod": np.sqrt(abar),
      "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
      "log_one_minus_alphas_cumprod": np.log(1.0 - abar),
      "one_minus_alphas_cumprod": 1.0 - abar,
      "one_minus_alphas_cumprod_prev": 1.0 - abar_prev,
      "one_minus_alphas_cumprod_next": 1.0 - abar_next,
      "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
      "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
      "posterior_variance": post_var,
      "posterior_log_variance_clipped": post_logvar,
      "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
      "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
      "log_betas": np.log(betas),
      "fixed_large_variance": large_var,
      "fixed_large_log_variance": np.log(large_var),
  }
  return {k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()}


def create_diffusion(diffusion_config, timestep_respacing: Union[str, int, Sequence[int]] = ""
                     ) -> GaussianDiffusion:
  """Builds a :class:`GaussianDiffusion` from the ``c.diffusion`` config.

  Args:
    diffusion_config: ConfigDict with ``num_timesteps``, ``beta_schedule``, ``model_mean_type``,
      ``model_var_type``, ``loss_type``, ``noise_conditioning``.
    timestep_respacing: ``""`` (no respacing, for training), or anything
      :func:`schedules.space_timesteps` accepts (``"250"``, ``"ddim50"``, ``"10,15,20"``, an int,
      a list of section counts).
  """
  T = int(diffusion_config.num_timesteps)
  betas = schedules.get_named_beta_schedule(diffusion_config.beta_schedule, T)
  use = None
  if not (isinstance(timestep_respacing, str) and timestep_respacing.strip() == ""):
    use = schedules.space_timesteps(T, timestep_respacing)
  return GaussianDiffusion.from_betas(
      betas, model_mean_type=diffusion_config.model_mean_type,
      model_var_type=diffusion_config.model_var_type, loss_type=diffusion_config.loss_type,
      noise_conditioning=diffusion_config.get("noise_conditioning", "index"), use_timesteps=use)
