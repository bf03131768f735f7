"""Inception Score (Salimans et al. 2016).

    IS = exp( E_x [ KL( p(y|x) || p(y) ) ] ),   p(y) = E_x [ p(y|x) ]

computed, as in the reference implementation (OpenAI's improved-GAN ``inception_score.py``), on
``num_splits`` (10) consecutive, equal-sized parts of the samples, ``p(y)`` being the marginal of each
part; the result is the mean and the standard deviation of the per-part scores. All in float64.

With the FID Inception network (:mod:`cdm.evaluation.inception`) the predictions are the softmax of
its 1008-way logits. Note: the improved-GAN code multiplies the pool features by the softmax weights
without the bias; the ported network's ``fc`` layer includes the bias (the graph's ``softmax`` output).
"""

from __future__ import annotations

import numpy as np
import scipy.special


def inception_score(logits=None, *, probs=None, num_splits: int = 10) -> tuple[float, float]:
  """Inception Score from logits or class probabilities.

  Args:
    logits: (N, K) unnormalised log-probabilities (softmax taken here in float64).
    probs: (N, K) probabilities instead of ``logits`` (rows must sum to 1).
    num_splits: number of parts; part ``i`` is ``[i * N // num_splits, (i + 1) * N // num_splits)``.

  Returns:
    ``(mean, std)`` of ``exp(mean_x KL(p(y|x) || p_part(y)))`` over the parts.
  """
  if (logits is None) == (probs is None):
    raise ValueError("pass exactly one of logits or probs")
  if logits is not None:
    p = scipy.special.softmax(np.asarray(logits, dtype=np.float64), axis=-1)
  else:
    p = np.asarray(probs, dtype=np.float64)
    if np.any(p < 0) or not np.allclose(p.sum(-1), 1.0, atol=1e-4):
      raise ValueError("probs must be non-negative and sum to 1 along the last axis")
  if p.ndim != 2:
    raise ValueError(f"expected (N, K) predictions, got shape {p.shape}")
  n = p.shape[0]
  if n < num_splits:
    raise ValueError(f"{n} samples cannot be cut into {num_splits} splits")
  scores = []
  for i in range(num_splits):
    part = p[i * n // num_splits:(i + 1) * n // num_splits]
    py = part.mean(axis=0, keepdims=True)
    kl = scipy.special.rel_entr(part, py).sum(axis=1)  # 0 log 0 = 0.
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))
