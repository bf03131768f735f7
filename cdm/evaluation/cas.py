"""Classification Accuracy Score (Ravuri & Vinyals 2019).

CAS trains a classifier *only* on generated, class-conditional samples ``(x_gen, y_gen)`` (as many as
the real training set in the paper) and reports its top-1 / top-5 accuracy on the real validation set:

    CAS_top-k = (1 / N) sum_i [ y_i in top-k( f_gen(x_i) ) ],   (x_i, y_i) real test examples.

The reference is the same classifier (same architecture, steps, batch size, seed) trained on real
training data and scored the same way. cdm uses :class:`cdm.evaluation.classifier.SmallCNN` (the paper
uses a ResNet-50 on ImageNet), so numbers are comparable only within cdm.
"""

from __future__ import annotations

import numpy as np

from cdm.evaluation import classifier as classifier_lib


def topk_accuracy(logits, labels, k: int) -> float:
  """Fraction of rows whose label is among the ``k`` largest logits (``k`` capped at the class count)."""
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  k = min(k, logits.shape[-1])
  top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=-1)))


def score_classifier(apply_fn, params, test_images, test_labels, *, batch_size: int = 500,
                     prefix: str = "") -> dict[str, float]:
  """``{prefix + "top1", prefix + "top5"}`` of a trained classifier on a labelled test set."""
  logits = classifier_lib.predict_logits(apply_fn, params, test_images, batch_size=batch_size)
  return {f"{prefix}top1": topk_accuracy(logits, test_labels, 1),
          f"{prefix}top5": topk_accuracy(logits, test_labels, 5)}


def classification_accuracy_score(gen_images, gen_labels, test_images, test_labels, num_classes: int,
                                  *, real_train_images=None, real_train_labels=None,
                                  steps: int = 2000, batch_size: int = 128, seed: int = 0,
                                  lr: float = 1e-3, width: int = 32, eval_batch_size: int = 500,
                                  real_classifier_path: str = "") -> dict[str, float]:
  """CAS of generated samples, and optionally the real-data reference.

  Args:
    gen_images, gen_labels: generated uint8 images (N, H, W[, C]) and the labels they were drawn for.
    test_images, test_labels: real held-out images and labels (the paper's validation set).
    num_classes: number of classes.
    real_train_images, real_train_labels: real training data; when given, the same classifier is
      trained on it and scored too (keys ``real_top1`` / ``real_top5``).
    steps, batch_size, seed, lr, width: classifier training (identical for both classifiers).
    eval_batch_size: batch size of the test-set predictions.
    real_classifier_path: optional .npz cache of the real-data classifier (see
      :func:`cdm.evaluation.classifier.train_or_load_classifier`); "" = no cache.

  Returns:
    ``{"cas_top1", "cas_top5"}`` plus ``{"real_top1", "real_top5"}`` with real training data.
  """
  kw = dict(steps=steps, batch_size=batch_size, seed=seed, lr=lr, width=width)
  params, apply_fn = classifier_lib.train_classifier(gen_images, gen_labels, num_classes, **kw)
  out = score_classifier(apply_fn, params, test_images, test_labels, batch_size=eval_batch_size,
                         prefix="cas_")
  if real_train_images is not None:
    params, apply_fn = classifier_lib.train_or_load_classifier(
        real_classifier_path, real_train_images, real_train_labels, num_classes, **kw)
    out.update(score_classifier(apply_fn, params, test_images, test_labels,
                                batch_size=eval_batch_size, prefix="real_"))
  return out
