"""Optimizer, learning-rate schedule and EMA from ``config.train``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(train_config) -> optax.Schedule:
  """Linear warmup to ``learning_rate``, then constant or cosine decay to 0 at ``num_steps``."""
  lr, warmup, total = train_config.learning_rate, train_config.warmup_steps, train_config.num_steps
  if train_config.lr_schedule == "constant":
    after = optax.constant_schedule(lr)
  elif train_config.lr_schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, max(1, total - warmup))
  else:
    raise ValueError(
        f"train.lr_schedule={train_config.lr_schedule!r}: expected 'constant' or 'cosine'.")
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(train_config) -> optax.GradientTransformation:
  """Global-norm clipping followed by Adam (or AdamW when weight_decay > 0)."""
  schedule = learning_rate_schedule(train_config)
  parts = []
  if train_config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(train_config.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=train_config.beta1, b2=train_config.beta2,
                           weight_decay=train_config.weight_decay))
  return optax.chain(*parts)


def ema_decay(train_config, step):
  """EMA decay at ``step``: ``min(decay, (1 + n) / (10 + n))`` with warmup, else the constant."""
  decay = jnp.asarray(train_config.ema_decay, jnp.float32)
  if train_config.ema_warmup:
    n = jnp.asarray(step, jnp.float32)
    decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
  return decay


def ema_update(ema_params, params, decay):
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
