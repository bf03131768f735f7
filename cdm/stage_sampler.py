"""Sampling one stage of a cascade: the compiled function shared by training grids and the cascade.

A stage sampler maps ``(params, key, labels, low_res, aug_level)`` to images in [-1, 1]. For an SR
stage, ``low_res`` is the previous stage's output in [-1, 1]:
  * non-truncated conditioning augmentation: ``aug_level = s`` and ``low_res`` is a clean z_0, which
    is corrupted here with q(z_s | z_0) of the augmentation schedule;
  * truncated: the previous stage stopped its chain at step s, so ``low_res`` already is z_s and only
    the level is embedded (``low_res_is_noisy=True``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cdm import xla_options
from cdm.diffusion import augment as augment_lib
from cdm.diffusion import gaussian
from cdm.diffusion import guidance
from cdm.diffusion import sampling


def null_label(config) -> int:
  """Class id of the classifier-free-guidance null class (one past the dataset's classes)."""
  return int(config.data.num_classes)


_CACHE = {}


def make_stage_sampler(config, model, *, num_steps=None, sampler=None, eta=None, clip_denoised=None,
                       dynamic_threshold=None, guidance_scale=None, stop_at=0,
                       low_res_is_noisy=False, classifier_config=None, classifier_scale=0.0):
  """Returns a jitted ``sample(params, key, labels, low_res=None, aug_level=0) -> images``.

  Classifier guidance (ADM Algorithms 1 / 2, :mod:`cdm.diffusion.guidance`): with
  ``classifier_scale > 0`` and a ``kind = "classifier"`` stage config ``classifier_config``, the
  sampler takes ``classifier_params=`` as well and shifts every step by the classifier's gradient
  ``s * grad log p(y | x_t)`` (computed inside the compiled scan). ``classifier_scale = 0`` builds the
  unguided sampler (the classifier is not evaluated at all).

  Unset keyword arguments default to the stage's ``config.sample`` fields. ``stop_at`` (1-indexed
  step of the stage's training schedule, 0 = full chain) returns z_s instead of x_0 (truncated
  augmentation). The output has the stage's shape ``(B, image_size, image_size, channels)``.
  Samplers are memoised per (stage config, model, arguments), so rebuilding a cascade or sweeping a
  level does not recompile.
  """
  key = (config.to_json_best_effort(sort_keys=True), repr(model), num_steps, sampler, eta,
         clip_denoised, dynamic_threshold, guidance_scale, stop_at, low_res_is_noisy)
  if classifier_scale:
    key += (None if classifier_config is None else
            classifier_config.to_json_best_effort(sort_keys=True), float(classifier_scale))
  if key not in _CACHE:
    _CACHE[key] = _make_stage_sampler(
        config, model, num_steps=num_steps, sampler=sampler, eta=eta, clip_denoised=clip_denoised,
        dynamic_threshold=dynamic_threshold, guidance_scale=guidance_scale, stop_at=stop_at,
        low_res_is_noisy=low_res_is_noisy, classifier_config=classifier_config,
        classifier_scale=classifier_scale)
  return _CACHE[key]


def _make_stage_sampler(config, model, *, num_steps, sampler, eta, clip_denoised,
                        dynamic_threshold, guidance_scale, stop_at, low_res_is_noisy,
                        classifier_config=None, classifier_scale=0.0):
  s = config.sample
  num_steps = s.num_steps if num_steps is None else num_steps
  sampler = s.sampler if sampler is None else sampler
  eta = s.eta if eta is None else eta
  clip_denoised = s.clip_denoised if clip_denoised is None else clip_denoised
  dynamic_threshold = s.dynamic_threshold if dynamic_threshold is None else dynamic_threshold
  guidance_scale = s.guidance_scale if guidance_scale is None else guidance_scale
  respacing = str(num_steps)
  if sampler == "ddim" and not respacing.startswith("ddim"):
    respacing = f"ddim{num_steps}"
  diffusion = gaussian.create_diffusion(config.diffusion, timestep_respacing=respacing)
  if stop_at:
    sampling.stop_index(diffusion, stop_at)  # a step the respaced chain can stop at, or a clear error
  size, channels = config.data.image_size, config.data.channels
  is_sr = bool(config.data.low_res_size)
  conditional = bool(config.model.class_conditional)
  classifier = None
  if classifier_scale:
    classifier = _guidance_classifier(config, classifier_config)

  def sample(params, key, labels, low_res=None, aug_level=0, classifier_params=None):
    k_aug, k_sample = jax.random.split(key)
    batch = labels.shape[0]
    level = None
    if is_sr:
      if low_res is None:
        raise ValueError(f"stage {config.stage_name!r} is super-resolution: pass low_res.")
      low_res = low_res.astype(jnp.float32)
      levels = jnp.full((batch,), aug_level, jnp.int32)
      if low_res_is_noisy:
        level = augment_lib.aug_level_for_model(levels, config.augment)
      else:
        low_res, level = augment_lib.augment_low_res(
            k_aug, low_res, config.augment, train=False, level=levels)
      if not config.model.aug_level_embedding:
        level = None

    def model_fn_y(x, t, y):
      reps = x.shape[0] // batch  # 2 under classifier-free guidance (cond + null passes).
      tile = lambda a: None if a is None else jnp.concatenate([a] * reps, axis=0)
      return model.apply({"params": params}, x, t, y=y if conditional else None,
                         low_res=tile(low_res), aug_level=tile(level), train=False)

    if guidance_scale:
      model_fn = sampling.classifier_free_guidance(
          model_fn_y, labels, null_label(config), guidance_scale, channels)
    else:
      model_fn = functools.partial(_with_labels, model_fn_y, labels)
    cond_fn = None
    if classifier is not None:
      if classifier_params is None:
        raise ValueError(f"stage {config.stage_name!r} samples with classifier_scale="
                         f"{classifier_scale}: pass classifier_params.")
      logits_fn = lambda x, t: classifier.apply({"params": classifier_params}, x, t, train=False)
      cond_fn = guidance.classifier_cond_fn(logits_fn, labels, classifier_scale)
    return sampling.sample_loop(
        diffusion, model_fn, (batch, size, size, channels), k_sample, sampler=sampler, eta=eta,
        clip_denoised=clip_denoised, dynamic_threshold=dynamic_threshold, stop_at=stop_at,
        cond_fn=cond_fn)

  return xla_options.jit(sample, config)


def _with_labels(model_fn_y, labels, x, t):
  return model_fn_y(x, t, labels)


def _guidance_classifier(config, classifier_config):
  """The noisy classifier guiding ``config``'s stage; checks that both see the same x_t and t."""
  from cdm.models import noisy_classifier  # pylint: disable=import-outside-toplevel
  if classifier_config is None:
    raise ValueError(f"stage {config.stage_name!r}: classifier_scale > 0 needs a classifier "
                     "(the cascade entry's 'classifier', a kind = 'classifier' stage config).")
  d, k = config.data, classifier_config.data
  if (k.image_size, k.channels) != (d.image_size, d.channels):
    raise ValueError(f"classifier {classifier_config.stage_name!r} takes {k.image_size}px x "
                     f"{k.channels} images; stage {config.stage_name!r} samples {d.image_size}px x "
                     f"{d.channels}.")
  if k.num_classes < d.num_classes:
    raise ValueError(f"classifier {classifier_config.stage_name!r} has {k.num_classes} classes; "
                     f"stage {config.stage_name!r} samples labels of {d.num_classes}.")
  for f in ("num_timesteps", "beta_schedule", "noise_conditioning"):
    if classifier_config.diffusion.get(f) != config.diffusion.get(f):
      raise ValueError(
          f"classifier {classifier_config.stage_name!r} was trained with diffusion.{f}="
          f"{classifier_config.diffusion.get(f)!r}, stage {config.stage_name!r} samples with "
          f"{config.diffusion.get(f)!r}: the classifier must see the stage's x_t and timesteps.")
  return noisy_classifier.create_classifier(classifier_config)
