"""Prepares a dataset once so training can read it offline.

Usage::

  python -m cdm.data.prepare --dataset=cifar10 --data_dir=/data/tfds
  python -m cdm.data.prepare --dataset=imagenet2012 --data_dir=gs://bucket/tfds \\
      # after copying ILSVRC2012_img_{train,val}.tar to <data_dir>/downloads/manual/

This is the only cdm command that downloads (TFDS's ``download_and_prepare``); run it where there is
network. ``cdm_mnist`` needs no network; ``image_folder:/root`` needs no preparation (it is checked).
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging
import tensorflow_datasets as tfds

from cdm.data import mnist_builder
from cdm.data import sources


def prepare(dataset: str, data_dir: str = "", manual_dir: str = "") -> dict[str, int]:
  """Prepares ``dataset`` in ``data_dir``; returns ``{split: num_examples}``."""
  if dataset.startswith(sources.IMAGE_FOLDER_PREFIX):
    builder = tfds.folder_dataset.ImageFolder(dataset[len(sources.IMAGE_FOLDER_PREFIX):])
  elif dataset == mnist_builder.NAME:
    builder = mnist_builder.prepare(data_dir)
  else:
    builder = tfds.builder(dataset, data_dir=data_dir or None)
    if not builder.is_prepared():
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir or None))
  return {name: info.num_examples for name, info in builder.info.splits.items()}


def _define_flags():
  """Flags exist only when this module runs as a command, so importing it never clashes with
  another command's flags (``--data_dir`` is a common name)."""
  flags.DEFINE_string("dataset", None, "Dataset: a TFDS name, cdm_mnist, or image_folder:/root.",
                      required=True)
  flags.DEFINE_string("data_dir", "", "TFDS data_dir (local or gs://); '' = TFDS default.")
  flags.DEFINE_string("manual_dir", "", "Folder with manually downloaded files; '' = "
                      "<data_dir>/downloads/manual.")


def main(argv):
  del argv
  f = flags.FLAGS
  splits = prepare(f.dataset, f.data_dir, f.manual_dir)
  logging.info("%s ready in %s: %s", f.dataset, f.data_dir or "~/tensorflow_datasets", splits)
  print(f"{f.dataset}: {splits}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
