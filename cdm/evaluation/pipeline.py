"""Sample-quality metrics of a set of generated images given a feature network.

:func:`evaluate_samples` runs a feature function (Inception: :func:`cdm.evaluation.inception.make_feature_fn`;
the small classifier: :func:`cdm.evaluation.classifier.make_feature_fn`) over generated and real
images in fixed-size batches, then computes

  * ``fid``: Frechet distance of the feature statistics (:mod:`cdm.evaluation.frechet`);
  * ``is_mean`` / ``is_std``: Inception Score in ``num_splits`` splits, when the function returns logits
    (:mod:`cdm.evaluation.inception_score`);
  * ``precision`` / ``recall``: k-NN manifold precision and recall on at most ``pr_max_samples`` of each
    set (:mod:`cdm.evaluation.precision_recall`);
  * ``accuracy`` / ``real_accuracy`` (``label_accuracy=True``): top-1 agreement of the logits with the
    labels, meaningful when the logits are over the dataset's own classes (the small classifier).

CAS needs a classifier trained on the samples and a held-out real set: see :mod:`cdm.evaluation.cas`.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import numpy as np

from cdm.evaluation import frechet
from cdm.evaluation import inception_score as is_lib
from cdm.evaluation import precision_recall as pr_lib


def _as_dict(out) -> Mapping[str, np.ndarray]:
  if isinstance(out, Mapping):
    if "features" not in out:
      raise KeyError(f"feature_fn must return 'features' (and optionally 'logits'), got {list(out)}")
    return out
  if isinstance(out, (tuple, list)):
    return {"features": out[0], "logits": out[1]} if len(out) > 1 else {"features": out[0]}
  return {"features": out}


def extract_features(feature_fn: Callable, images, *, batch_size: int = 200,
                     shard: bool = False) -> dict[str, np.ndarray]:
  """Applies ``feature_fn`` to ``images`` in batches and concatenates the outputs on the host.

  Args:
    feature_fn: ``fn(batch) -> {"features": (b, D)[, "logits": (b, K)]}`` (or an array, or a
      ``(features, logits)`` tuple). It should be jitted (the cdm constructors are); every batch has
      exactly ``batch_size`` rows (the last one is zero-padded) so it compiles once.
    images: (N, ...) array (uint8 for the cdm constructors' default), N >= 1.
    batch_size: rows per call.
    shard: split each batch over the local devices (``batch_size`` must be divisible by their count).

  Returns:
    ``{"features": float32 (N, D)[, "logits": float32 (N, K)]}``.
  """
  images = np.asarray(images)
  n = images.shape[0]
  if n == 0:
    raise ValueError("no images")
  sharding = None
  if shard and jax.local_device_count() > 1:
    if batch_size % jax.local_device_count():
      raise ValueError(f"batch_size {batch_size} is not divisible by {jax.local_device_count()} devices")
    mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  parts: dict[str, list[np.ndarray]] = {}
  for start in range(0, n, batch_size):
    batch = images[start:start + batch_size]
    valid = batch.shape[0]
    if valid < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - valid,) + batch.shape[1:], batch.dtype)])
    if sharding is not None:
      batch = jax.device_put(batch, sharding)
    out = _as_dict(feature_fn(batch))
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(v, dtype=np.float32)[:valid])
  return {k: np.concatenate(v) for k, v in parts.items()}


def _subset(x: np.ndarray, max_n: int, rng: np.random.Generator) -> np.ndarray:
  if max_n <= 0 or x.shape[0] <= max_n:
    return x
  return x[np.sort(rng.choice(x.shape[0], max_n, replace=False))]


def evaluate_samples(images, labels, real_images, real_labels, feature_fn: Callable, *,
                     batch_size: int = 200, num_splits: int = 10, precision_recall: bool = True,
                     pr_k: int = 3, pr_max_samples: int = 10_000, label_accuracy: bool = False,
                     real_features: Mapping[str, np.ndarray] | None = None, seed: int = 0,
                     shard: bool = False) -> dict[str, float]:
  """FID, IS, precision / recall (and label accuracy) of generated images against real ones.

  Args:
    images: generated images (N, H, W[, C]) in the range ``feature_fn`` expects (uint8 by default).
    labels: (N,) labels the samples were drawn for, or None (only used by ``label_accuracy``).
    real_images: real reference images, or None when ``real_features`` is given.
    real_labels: (M,) real labels or None (only used by ``label_accuracy``).
    feature_fn: see :func:`extract_features`.
    batch_size: feature-extraction batch size.
    num_splits: Inception Score splits (IS is skipped with fewer samples than splits).
    precision_recall: compute precision / recall (k = ``pr_k``) on seeded random subsets of at most
      ``pr_max_samples`` of each set (0 = all).
    label_accuracy: also report ``accuracy`` (samples) and ``real_accuracy``: argmax logits == label.
    real_features: precomputed :func:`extract_features` output of the real set (a cache).
    seed: seed of the precision / recall subsets.
    shard: see :func:`extract_features`.

  Returns:
    A dict of Python floats: ``fid``, ``num_samples``, ``num_real``, and where available ``sfid``
    (when ``feature_fn`` returns ``spatial_features``), ``is_mean``,
    ``is_std``, ``precision``, ``recall``, ``accuracy``, ``real_accuracy``.
  """
  gen = extract_features(feature_fn, images, batch_size=batch_size, shard=shard)
  if real_features is None:
    if real_images is None:
      raise ValueError("pass real_images or real_features")
    real_features = extract_features(feature_fn, real_images, batch_size=batch_size, shard=shard)
  real = real_features
  out: dict[str, float] = {"num_samples": float(gen["features"].shape[0]),
                           "num_real": float(real["features"].shape[0])}
  out["fid"] = frechet.frechet_distance(*frechet.compute_statistics(gen["features"]),
                                        *frechet.compute_statistics(real["features"]))
  if "spatial_features" in gen and "spatial_features" in real:  # sFID (Nash et al. 2021)
    out["sfid"] = frechet.frechet_distance(*frechet.compute_statistics(gen["spatial_features"]),
                                           *frechet.compute_statistics(real["spatial_features"]))
  if "logits" in gen and gen["logits"].shape[0] >= num_splits:
    out["is_mean"], out["is_std"] = is_lib.inception_score(gen["logits"], num_splits=num_splits)
  if precision_recall:
    rng = np.random.default_rng(seed)
    out.update(pr_lib.precision_recall(_subset(real["features"], pr_max_samples, rng),
                                       _subset(gen["features"], pr_max_samples, rng), k=pr_k))
  if label_accuracy:
    if "logits" not in gen:
      raise ValueError("label_accuracy needs a feature_fn that returns logits")
    if labels is not None:
      out["accuracy"] = float(np.mean(gen["logits"].argmax(-1) == np.asarray(labels)))
    if real_labels is not None and "logits" in real:
      out["real_accuracy"] = float(np.mean(real["logits"].argmax(-1) == np.asarray(real_labels)))
  return out
