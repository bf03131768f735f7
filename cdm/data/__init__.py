"""Input pipelines: TFDS datasets to host-local numpy batches for one stage.

Public API:
  * :func:`create_train_iterator` -- endless, deterministic, resumable (``get_state`` / ``set_state``)
    iterator of ``{"image", "low_res" (SR only), "label"}`` uint8/int32 numpy batches.
  * :func:`create_eval_iterator` -- a finite, ordered pass with a padding ``mask``.
  * :func:`downsample` -- the area downsampling that derives ``low_res`` from ``image``.

Datasets: any prepared TFDS dataset by name (``cifar10``, ``imagenet2012``,
``imagenet_resized/64x64``...), ``image_folder:/root`` (``root/<split>/<class>/*.png``), and the
offline default ``cdm_mnist`` (prepared on first use). Prepare others with
``python -m cdm.data.prepare --dataset=NAME --data_dir=DIR``; measure throughput with
``python -m cdm.data.bench --config=...``.
"""

from cdm.data import _tf  # noqa: F401  (first: hides GPUs from TensorFlow before anything runs)
from cdm.data.eval_pipeline import EvalIterator, create_eval_iterator
from cdm.data.preprocess import downsample
from cdm.data.train_pipeline import TrainIterator, create_train_iterator

__all__ = ["EvalIterator", "TrainIterator", "create_eval_iterator", "create_train_iterator",
           "downsample"]
