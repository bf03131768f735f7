"""Improved precision and recall (Kynkaanniemi et al. 2019), k-NN manifold estimate with k = 3.

Each set of feature vectors ``Phi`` defines a manifold: the union of balls around its points whose
radius is the distance to the point's k-th nearest neighbour in the same set (the point itself excluded):

    f(phi, Phi) = 1  if  exists phi' in Phi : ||phi - phi'||_2 <= ||phi' - NN_k(phi', Phi)||_2
    precision   = mean_{phi_g in Phi_gen}  f(phi_g, Phi_real)
    recall      = mean_{phi_r in Phi_real} f(phi_r, Phi_gen)

Distances are computed in float32 on the default device, ``row_batch`` rows at a time (memory
``row_batch * N * 4`` bytes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _sq_distances(a, b):
  """(n, m) squared Euclidean distances, clipped at 0."""
  d = (jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :]
       - 2.0 * jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST))
  return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _kth_sq_distance(a, b, k):
  # The smallest distance of a point of `b` to itself is 0, so the (k+1)-th smallest is the k-th NN.
  neg, _ = jax.lax.top_k(-_sq_distances(a, b), k + 1)
  return -neg[:, -1]


@jax.jit
def _in_manifold(a, b, radii_sq):
  return jnp.any(_sq_distances(a, b) <= radii_sq[None, :], axis=1)


def _rows(fn, a, *, row_batch):
  """``fn`` over blocks of rows of ``a``; the last block is zero-padded so one shape is compiled."""
  n = a.shape[0]
  rb = min(row_batch, n)
  out = []
  for i in range(0, n, rb):
    blk = a[i:i + rb]
    pad = rb - blk.shape[0]
    if pad:
      blk = np.concatenate([blk, np.zeros((pad,) + blk.shape[1:], blk.dtype)])
    out.append(np.asarray(fn(jnp.asarray(blk)))[:rb - pad])
  return np.concatenate(out)


def manifold_radii(features, k: int = 3, *, row_batch: int = 1024) -> np.ndarray:
  """Squared distance of every point to its k-th nearest neighbour in the same set (self excluded)."""
  f = np.asarray(features, np.float32)
  if f.shape[0] <= k:
    raise ValueError(f"need more than k={k} points, got {f.shape[0]}")
  fj = jnp.asarray(f)
  return _rows(lambda a: _kth_sq_distance(a, fj, k), f, row_batch=row_batch)


def in_manifold(query, support, support_radii_sq, *, row_batch: int = 1024) -> np.ndarray:
  """(Nq,) bool: whether each query point lies in some support point's k-NN ball."""
  q = np.asarray(query, np.float32)
  s = jnp.asarray(np.asarray(support, np.float32))
  r = jnp.asarray(np.asarray(support_radii_sq, np.float32))
  return _rows(lambda a: _in_manifold(a, s, r), q, row_batch=row_batch)


def precision_recall(real_features, gen_features, k: int = 3, *,
                     row_batch: int = 1024) -> dict[str, float]:
  """``{"precision", "recall"}`` of generated features against real ones (see the module docstring)."""
  real = np.asarray(real_features, np.float32)
  gen = np.asarray(gen_features, np.float32)
  if real.ndim != 2 or gen.ndim != 2 or real.shape[1] != gen.shape[1]:
    raise ValueError(f"expected (N, D) feature sets of one D, got {real.shape}, {gen.shape}")
  real_r = manifold_radii(real, k, row_batch=row_batch)
  gen_r = manifold_radii(gen, k, row_batch=row_batch)
  precision = float(np.mean(in_manifold(gen, real, real_r, row_batch=row_batch)))
  recall = float(np.mean(in_manifold(real, gen, gen_r, row_batch=row_batch)))
  return {"precision": precision, "recall": recall}
