"""A small CNN classifier for small images: CAS and "classifier-FID" where no standard network exists.

For datasets such as MNIST (16 / 32 px, 1 or 3 channels) the FID Inception network is a poor feature
extractor, so cdm trains this classifier on the real training set and uses its penultimate layer
(``feature_dim`` = 128) in place of Inception's pool features: the Frechet distance on those features is
"classifier-FID". It is only comparable between runs that use the same trained classifier (same data,
architecture, steps and seed) and is *not* comparable to Inception FID or to numbers in papers.

Architecture (NHWC, input in [-1, 1]): three stages of two 3x3 conv + GroupNorm + SiLU (widths
``width``, ``2 width``, ``4 width``; 2x2 average pooling between stages), global average pooling, a
dense ``feature_dim`` layer with SiLU (the features), a dense ``num_classes`` layer (the logits).
Trained with Adam on softmax cross-entropy, one jitted step per batch (batches drawn with replacement
by a seeded numpy generator).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cdm import fileio


class SmallCNN(nn.Module):
  """``__call__(x) -> (logits (B, num_classes), features (B, feature_dim))``; x float in [-1, 1]."""
  num_classes: int
  width: int = 32
  feature_dim: int = 128

  @nn.compact
  def __call__(self, x):
    h = x
    for stage, mult in enumerate((1, 2, 4)):
      if stage:
        h = nn.avg_pool(h, (2, 2), strides=(2, 2), padding="SAME")
      for _ in range(2):
        h = nn.Conv(self.width * mult, (3, 3), padding="SAME")(h)
        h = nn.silu(nn.GroupNorm(num_groups=min(8, self.width * mult))(h))
    h = jnp.mean(h, axis=(1, 2))
    features = nn.silu(nn.Dense(self.feature_dim)(h))
    logits = nn.Dense(self.num_classes)(features)
    return logits, features


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """What is needed to rebuild the network of a saved classifier."""
  num_classes: int
  image_shape: tuple[int, int, int]
  width: int = 32
  feature_dim: int = 128


def to_float(images) -> jnp.ndarray:
  """uint8 (B, H, W[, C]) in [0, 255] -> float32 (B, H, W, C) in [-1, 1]."""
  x = jnp.asarray(images)
  if x.ndim == 3:
    x = x[..., None]
  return x.astype(jnp.float32) / 127.5 - 1.0


def _as_nhwc(images) -> np.ndarray:
  x = np.asarray(images)
  return x[..., None] if x.ndim == 3 else x


@functools.lru_cache(maxsize=32)
def make_apply_fn(cfg: ClassifierConfig) -> Callable:
  """Jitted ``apply_fn(params, images_uint8) -> (logits, features)`` for the classifier of ``cfg``."""
  model = SmallCNN(cfg.num_classes, cfg.width, cfg.feature_dim)
  jitted = jax.jit(lambda params, images: model.apply({"params": params}, to_float(images)))

  def apply_fn(params, images):
    return jitted(params, images)

  apply_fn.config = cfg  # type: ignore[attr-defined]
  return apply_fn


def init_params(model: SmallCNN, image_shape, seed: int):
  """LeCun-normal kernels, zero biases, unit norm scales, drawn with numpy.

  (Equivalent in distribution to Flax's defaults, but compiles nothing: on XLA:CPU every
  ``jax.random`` draw inside ``model.init`` costs seconds of compilation.)
  """
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1,) + tuple(image_shape), jnp.float32))["params"]
  rng = np.random.default_rng(seed)

  def init(path, s):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, np.sqrt(1.0 / fan_in), s.shape).astype(np.float32))
    if name == "scale":
      return jnp.ones(s.shape, jnp.float32)
    return jnp.zeros(s.shape, jnp.float32)

  return jax.tree_util.tree_map_with_path(init, shapes)


@functools.lru_cache(maxsize=32)
def _train_fns(model: SmallCNN, lr: float):
  """``(optimizer, jitted step)``, cached so that classifiers of one config share one compilation."""
  tx = optax.adam(lr)

  @jax.jit
  def step(params, opt_state, xb, yb):
    def loss_fn(p):
      logits, _ = model.apply({"params": p}, to_float(xb))
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return tx, step


def train_classifier(images_uint8, labels, num_classes: int, *, steps: int = 2000,
                     batch_size: int = 128, seed: int = 0, lr: float = 1e-3, width: int = 32,
                     feature_dim: int = 128, log_every: int = 0) -> tuple[Any, Callable]:
  """Trains :class:`SmallCNN` on (images, labels).

  Args:
    images_uint8: (N, H, W[, C]) uint8.
    labels: (N,) int class ids in [0, num_classes).
    num_classes: number of classes.
    steps, batch_size, seed, lr: Adam steps, batch size, seed (numpy init and batch order), learning
      rate.
    width, feature_dim: network size (see the module docstring).
    log_every: print the running loss every this many steps (0 = silent).

  Returns:
    ``(params, apply_fn)`` with ``apply_fn(params, images_uint8) -> (logits, features)`` (jitted);
    ``apply_fn.config`` is the :class:`ClassifierConfig` used by :func:`save_classifier`.
  """
  x = _as_nhwc(images_uint8)
  y = np.asarray(labels).astype(np.int32)
  if x.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {x.dtype}")
  if x.shape[0] != y.shape[0] or y.ndim != 1:
    raise ValueError(f"{x.shape[0]} images but labels of shape {y.shape}")
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(f"labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}]")
  cfg = ClassifierConfig(num_classes, tuple(int(s) for s in x.shape[1:]), width, feature_dim)
  model = SmallCNN(num_classes, width, feature_dim)
  params = init_params(model, cfg.image_shape, seed)
  tx, step = _train_fns(model, float(lr))
  opt_state = tx.init(params)

  rng = np.random.default_rng(seed)
  bs = min(batch_size, x.shape[0])
  for i in range(steps):
    idx = rng.integers(0, x.shape[0], bs)
    params, opt_state, loss = step(params, opt_state, x[idx], y[idx])
    if log_every and (i + 1) % log_every == 0:
      print(f"classifier step {i + 1}/{steps}: loss {float(loss):.4f}")
  return params, make_apply_fn(cfg)


def _batched(apply_fn, params, images_uint8, batch_size: int, index: int) -> np.ndarray:
  x = _as_nhwc(images_uint8)
  n = x.shape[0]
  out = []
  for start in range(0, n, batch_size):
    xb = x[start:start + batch_size]
    pad = batch_size - xb.shape[0] if n > batch_size else 0  # Keep one compiled shape.
    if pad:
      xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
    res = np.asarray(apply_fn(params, xb)[index])
    out.append(res[:res.shape[0] - pad])
  return np.concatenate(out)


def predict_logits(apply_fn, params, images_uint8, *, batch_size: int = 500) -> np.ndarray:
  """(N, num_classes) float32 logits, computed in batches."""
  return _batched(apply_fn, params, images_uint8, batch_size, 0)


def features(apply_fn, params, images_uint8, *, batch_size: int = 500) -> np.ndarray:
  """(N, feature_dim) float32 penultimate-layer features (classifier-FID), computed in batches."""
  return _batched(apply_fn, params, images_uint8, batch_size, 1)


def make_feature_fn(apply_fn, params) -> Callable:
  """``fn(images_uint8) -> {"features", "logits"}`` for :func:`cdm.evaluation.pipeline.evaluate_samples`."""

  def fn(images):
    logits, feats = apply_fn(params, images)
    return {"features": feats, "logits": logits}

  return fn


def save_classifier(path: str, params, apply_fn) -> None:
  """Writes params and config to one .npz (keys ``params/<a>/<b>/...`` and ``config`` as JSON)."""
  cfg = apply_fn.config
  flat = {"params/" + "/".join(str(getattr(k, "key", k)) for k in kp): np.asarray(v)
          for kp, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  fileio.save_npz(path, config=np.asarray(json.dumps(dataclasses.asdict(cfg))), **flat)  # atomic


def load_classifier(path: str) -> tuple[Any, Callable]:
  """Reads a classifier written by :func:`save_classifier` -> ``(params, apply_fn)``."""
  f = fileio.load_npz(path)
  cfg_dict = json.loads(str(f["config"]))
  params: dict = {}
  for k, v in f.items():
    if not k.startswith("params/"):
      continue
    node = params
    *parents, leaf = k.split("/")[1:]
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(v)
  cfg_dict["image_shape"] = tuple(cfg_dict["image_shape"])
  return params, make_apply_fn(ClassifierConfig(**cfg_dict))


def train_or_load_classifier(path: str, images_uint8, labels, num_classes: int,
                             **train_kwargs) -> tuple[Any, Callable]:
  """Loads the classifier cached at ``path`` (e.g. in a workdir) or trains and saves it there.

  A cached classifier whose ``num_classes`` or image shape differs from the data raises ``ValueError``.
  """
  if path and fileio.exists(path):
    params, apply_fn = load_classifier(path)
    shape = tuple(_as_nhwc(images_uint8).shape[1:])
    cfg = apply_fn.config
    if cfg.num_classes != num_classes or cfg.image_shape != shape:
      raise ValueError(f"cached classifier {path} is for {cfg.num_classes} classes / {cfg.image_shape}"
                       f" images, the data has {num_classes} / {shape}; delete it to retrain")
    return params, apply_fn
  params, apply_fn = train_classifier(images_uint8, labels, num_classes, **train_kwargs)
  if path:
    save_classifier(path, params, apply_fn)
  return params, apply_fn
