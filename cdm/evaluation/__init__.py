"""Sample-quality metrics: FID (Inception or classifier features), IS, precision/recall, CAS.

Modules: :mod:`frechet` (float64 Frechet distance), :mod:`inception` (the FID Inception-v3 in Flax,
weights from a local file), :mod:`inception_score`, :mod:`classifier` (small CNN for classifier-FID and
CAS), :mod:`cas`, :mod:`precision_recall`, :mod:`pipeline` (``evaluate_samples``).
The functions ``inception_score`` and ``precision_recall`` live in the modules of the same names
(not re-exported here, so that ``from cdm.evaluation import inception_score`` is the module).
"""

from cdm.evaluation.cas import classification_accuracy_score, topk_accuracy
from cdm.evaluation.frechet import (compute_statistics, fid_from_features, frechet_distance,
                                    load_statistics, save_statistics)
from cdm.evaluation.pipeline import evaluate_samples, extract_features

__all__ = [
    "classification_accuracy_score", "compute_statistics", "evaluate_samples", "extract_features",
    "fid_from_features", "frechet_distance", "load_statistics", "save_statistics", "topk_accuracy",
]
