"""Frechet distance between Gaussians fitted to feature sets (FID, Heusel et al. 2017).

    FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

with ``mu`` the feature means and ``S`` the *sample* covariances (``N - 1`` in the denominator, as in
``np.cov(rowvar=False)``, TTUR and pytorch-fid). Everything is computed on the host in float64.

Two exact ways to get ``Tr((S_1 S_2)^(1/2))``:
  * ``"eigh"`` (default): ``S_1 S_2`` is similar to the symmetric PSD matrix
    ``M = S_1^(1/2) S_2 S_1^(1/2)``, so ``Tr((S_1 S_2)^(1/2)) = sum_i sqrt(lambda_i(M))``
    (the method of TF-GAN's ``trace_sqrt_product``). Two symmetric eigendecompositions: fast, real,
    and well defined for singular covariances (negative round-off eigenvalues are clipped to 0).
  * ``"sqrtm"``: ``scipy.linalg.sqrtm(S_1 S_2)`` exactly as pytorch-fid / TTUR do it: when the result is
    not finite (a singular product), ``eps * I`` is added to both covariances and it is retried; a
    complex result must have a negligible imaginary diagonal (else ``ValueError``) and is made real.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def compute_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and sample covariance of a feature matrix.

  Args:
    features: (N, D) array, N >= 2.

  Returns:
    ``(mu, sigma)``: float64 arrays of shape (D,) and (D, D); ``sigma = np.cov(features, rowvar=False)``.
  """
  f = np.asarray(features, dtype=np.float64)
  if f.ndim != 2:
    raise ValueError(f"features must be (N, D), got shape {f.shape}")
  if f.shape[0] < 2:
    raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
  mu = f.mean(axis=0)
  sigma = np.atleast_2d(np.cov(f, rowvar=False))
  return mu, sigma


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
  w, v = np.linalg.eigh((a + a.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1, sigma2, *, method: str = "eigh", eps: float = 1e-6) -> float:
  """``Tr((sigma1 sigma2)^(1/2))`` for covariance matrices, in float64 (see the module docstring)."""
  s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
  s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
  if s1.shape != s2.shape or s1.shape[0] != s1.shape[1]:
    raise ValueError(f"covariances must be square and of the same shape, got {s1.shape}, {s2.shape}")
  if not (np.isfinite(s1).all() and np.isfinite(s2).all()):
    raise ValueError("covariance contains NaN or inf")
  if method == "eigh":
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())
  if method == "sqrtm":
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
      offset = np.eye(s1.shape[0]) * eps
      covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
      max_imag = np.max(np.abs(np.diagonal(covmean).imag))
      if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
        raise ValueError(f"sqrtm(S1 S2) has a non-negligible imaginary component {max_imag}")
      covmean = covmean.real
    return float(np.trace(covmean))
  raise ValueError(f"unknown method {method!r} (expected 'eigh' or 'sqrtm')")


def frechet_distance(mu1, sigma1, mu2, sigma2, *, method: str = "eigh", eps: float = 1e-6) -> float:
  """Frechet distance ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` in float64.

  Args:
    mu1, mu2: (D,) means.
    sigma1, sigma2: (D, D) covariances.
    method: ``"eigh"`` (default, exact and fast) or ``"sqrtm"`` (scipy, pytorch-fid's procedure).
    eps: diagonal offset of the ``"sqrtm"`` fallback for a singular product.

  Returns:
    The distance as a Python float (clipped at 0 against round-off).
  """
  mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
  s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
  s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
  if mu1.shape != mu2.shape:
    raise ValueError(f"means have different shapes {mu1.shape}, {mu2.shape}")
  if s1.shape != (mu1.shape[0],) * 2:
    raise ValueError(f"covariance shape {s1.shape} does not match mean shape {mu1.shape}")
  diff = mu1 - mu2
  tr = trace_sqrt_product(s1, s2, method=method, eps=eps)
  fid = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr)
  return max(fid, 0.0)


def fid_from_features(features1, features2, **kwargs) -> float:
  """FID between two (N, D) feature sets: :func:`frechet_distance` of their statistics."""
  return frechet_distance(*compute_statistics(features1), *compute_statistics(features2), **kwargs)


def save_statistics(path, mu, sigma) -> None:
  """Writes ``mu`` and ``sigma`` to an .npz (pytorch-fid's ``mu`` / ``sigma`` keys)."""
  np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_statistics(path) -> tuple[np.ndarray, np.ndarray]:
  """Reads ``(mu, sigma)`` written by :func:`save_statistics` (or pytorch-fid's ``--save-stats``)."""
  with np.load(path) as f:
    return f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
