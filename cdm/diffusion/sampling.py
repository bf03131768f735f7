"""Compiled sampling loops and classifier-free guidance.

``model_fn(x_t, t_model) -> output`` everywhere, with ``t_model = diffusion.model_time(t)``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from cdm.diffusion import guidance
from cdm.diffusion.gaussian import GaussianDiffusion

SAMPLERS = ("ancestral", "ddim")


def stop_index(diffusion: GaussianDiffusion, stop_at: int) -> int:
  """Respaced index whose state has the noise level of ORIGINAL 1-indexed step ``stop_at``.

  The chain state before the step at respaced index i has ``abar = alphas_cumprod[i]``, i.e. it
  is x_s with ``s = timestep_map[i] + 1`` (1-indexed original step). Returns ``i`` with
  ``timestep_map[i] == stop_at - 1``, or -1 for ``stop_at == 0`` (run to x_0). Host-side.

  Raises:
    ValueError: ``stop_at`` outside ``[0, original T]`` or not a kept step of the respacing
      (the message lists the nearest allowed values).
  """
  stop_at = int(stop_at)
  T = diffusion.original_num_timesteps
  if stop_at == 0:
    return -1
  if not 0 < stop_at <= T:
    raise ValueError(f"stop_at={stop_at} must be in [0, {T}] (0 = run the full chain)")
  allowed = [s + 1 for s in diffusion.timestep_map]
  if stop_at not in allowed:
    nearest = sorted(allowed, key=lambda a: (abs(a - stop_at), a))[:2]
    raise ValueError(
        f"stop_at={stop_at} is not a step of this respaced schedule ({diffusion.num_timesteps} "
        f"steps); nearest allowed values: {sorted(nearest)} (allowed = timestep_map + 1)")
  return allowed.index(stop_at)


def sample_loop(diffusion: GaussianDiffusion, model_fn: Callable, shape: Sequence[int], key,
                *, sampler: str = "ancestral", eta: float = 0.0, clip_denoised: bool = True,
                dynamic_threshold: float = 0.0, stop_at: int = 0,
                x_T: Optional[jax.Array] = None, return_intermediate: bool = False,
                cond_fn: Optional[Callable] = None):
  """Runs the reverse chain in one ``lax.scan`` over the (respaced) schedule.

  Jittable end to end: pass ``diffusion`` and ``key`` (and ``x_T``) as jit arguments and close
  over ``model_fn``; ``shape``, ``sampler``, ``clip_denoised``, ``dynamic_threshold``,
  ``stop_at``, ``return_intermediate`` are static (``eta`` may be traced).

  Args:
    diffusion: the (possibly respaced) process.
    model_fn: ``model_fn(x_t, t_model) -> output``.
    shape: ``(B, H, W, C)``.
    key: PRNG key; x_T = ``normal(split(key)[0])`` unless given; the noise of respaced step i is
      ``normal(fold_in(split(key)[1], i))``.
    sampler: ``"ancestral"`` (DDPM Alg. 2 via ``p_sample``) or ``"ddim"`` (DDIM eq. 12).
    eta: DDIM eta (0 = deterministic).
    clip_denoised: clip predicted x_0 to [-1, 1].
    dynamic_threshold: if > 0, Imagen dynamic-thresholding percentile (overrides clipping).
    stop_at: 0 runs to x_0. ``s > 0`` (1-indexed ORIGINAL training step) stops as soon as the
      state is x_s, i.e. has noise level ``abar = alphas_cumprod_original[s - 1]``, marginally
      ``q(x_s | x_0)``: the truncated conditioning augmentation of CDM Sec. 4.2. ``s = T`` returns
      x_T. With respacing, ``s - 1`` must be a kept step (ValueError lists the nearest).
    x_T: optional starting noise of ``shape``.
    return_intermediate: also return the states after every step, ``(num_steps_run, *shape)``.
    cond_fn: classifier guidance, ``cond_fn(x_t, t_model) -> s * grad log p(y | x_t)`` (see
      :func:`cdm.diffusion.guidance.classifier_cond_fn`), evaluated inside the scan at every step:
      ancestral steps shift the mean by ``Sigma * cond_fn`` (ADM Algorithm 1), DDIM steps shift
      eps by ``-sqrt(1 - abar_t) * cond_fn`` (ADM Algorithm 2). None = unguided.

  Returns:
    ``x`` (the final state), or ``(x, intermediates)`` if ``return_intermediate``.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler={sampler!r}; expected one of {SAMPLERS}")
  shape = tuple(int(s) for s in shape)
  i_stop = stop_index(diffusion, stop_at)
  k_init, k_steps = jax.random.split(key)
  if x_T is None:
    x_T = jax.random.normal(k_init, shape, jnp.float32)
  elif tuple(x_T.shape) != shape:
    raise ValueError(f"x_T has shape {x_T.shape}, expected {shape}")
  B = shape[0]

  def step(x, i):
    t = jnp.full((B,), i, jnp.int32)
    out = model_fn(x, diffusion.model_time(t))
    noise = jax.random.normal(jax.random.fold_in(k_steps, i), shape, x.dtype)
    if cond_fn is not None:
      g = cond_fn(x, diffusion.model_time(t))
      if sampler == "ancestral":
        x = guidance.guided_p_sample(diffusion, out, x, t, noise, g, clip_denoised,
                                     dynamic_threshold)["sample"]
      else:
        x = guidance.guided_ddim_sample(diffusion, out, x, t, noise, g, eta, clip_denoised,
                                        dynamic_threshold)["sample"]
    elif sampler == "ancestral":
      x = diffusion.p_sample(out, x, t, noise, clip_denoised, dynamic_threshold)["sample"]
    else:
      x = diffusion.ddim_sample(out, x, t, noise, eta, clip_denoised, dynamic_threshold)["sample"]
    return x, (x if return_intermediate else None)

  indices = jnp.arange(diffusion.num_timesteps - 1, i_stop, -1, dtype=jnp.int32)
  x, xs = jax.lax.scan(step, x_T, indices)
  return (x, xs) if return_intermediate else x


def ddim_reverse_loop(diffusion: GaussianDiffusion, model_fn: Callable, x_0, *,
                      clip_denoised: bool = False):
  """Encodes x_0 into x_T with deterministic DDIM inversion steps (DDIM Sec. 4.3), one scan."""
  B = x_0.shape[0]

  def step(x, i):
    t = jnp.full((B,), i, jnp.int32)
    out = model_fn(x, diffusion.model_time(t))
    return diffusion.ddim_reverse_sample(out, x, t, clip_denoised)["sample"], None

  x, _ = jax.lax.scan(step, x_0, jnp.arange(diffusion.num_timesteps, dtype=jnp.int32))
  return x


def classifier_free_guidance(model_fn_y: Callable, y, null_label: int, scale, channels: int
                             ) -> Callable:
  """Wraps a class-conditional model with classifier-free guidance (Ho & Salimans 2022, eq. 6).

  ``out_guided = (1 + w) out(y) - w out(null)`` on the first ``channels`` output channels (eps,
  or x_0 / v for those parameterisations); the remaining (variance) channels come from the
  conditional pass. Both passes run as ONE batched call on ``2B`` examples
  ``[conditional; unconditional]``: anything ``model_fn_y`` closes over per example (low-res
  images, aug levels) must therefore be tiled to ``2B`` (``jnp.concatenate([a, a])``).

  Args:
    model_fn_y: ``model_fn_y(x_t, t_model, y) -> output``.
    y: int ``(B,)`` labels.
    null_label: the null class id (``data.num_classes``).
    scale: guidance weight w (0 = conditional model).
    channels: image channels C.

  Returns:
    ``model_fn(x_t, t_model) -> output``.
  """
  y = jnp.asarray(y)

  def model_fn(x_t, t_model):
    y2 = jnp.concatenate([y, jnp.full_like(y, null_label)])
    out = model_fn_y(jnp.concatenate([x_t, x_t]), jnp.concatenate([t_model, t_model]), y2)
    cond, uncond = jnp.split(out, 2, axis=0)
    guided = (1.0 + scale) * cond[..., :channels] - scale * uncond[..., :channels]
    return jnp.concatenate([guided, cond[..., channels:]], axis=-1)

  return model_fn
