"""Where examples come from: TFDS datasets by name, ``cdm_mnist``, and ``image_folder:<root>``.

A :class:`Source` reads one split for one process as a ``tf.data.Dataset`` of
``{"image": encoded bytes (tf.string), "label": int64}``; images are decoded later with
:meth:`Source.decode`, so skipping examples (to resume mid-epoch) never decodes them.

Nothing here downloads. A TFDS dataset that is not prepared in ``data.data_dir`` stops with a
``FileNotFoundError`` naming the dataset, the data_dir and the command that prepares it. Only
``cdm_mnist`` (offline, seconds) is prepared automatically on first use.

Per-process splits: TFDS datasets use ``tfds.split_for_jax_process`` (contiguous, disjoint, sizes
differ by at most one). ``image_folder`` datasets (``tfds.folder_dataset.ImageFolder``, which has no
sub-split API) are sharded with ``Dataset.shard`` (every ``process_count``-th file); each process then
lists all files but reads only its own.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any, Callable

import tensorflow_datasets as tfds

from cdm.data import mnist_builder
from cdm.data._tf import tf

IMAGE_FOLDER_PREFIX = "image_folder:"


def prepare_command(dataset: str, data_dir: str) -> str:
  """The shell command that prepares ``dataset`` in ``data_dir``."""
  cmd = f"python -m cdm.data.prepare --dataset={dataset}"
  return cmd + (f" --data_dir={data_dir}" if data_dir else "")


@dataclasses.dataclass
class Source:
  """One split of one dataset, as seen by one process.

  Attributes:
    name: the dataset name as configured (``data.dataset``).
    split: the global split (before the per-process split).
    channels: channels of :meth:`decode`'s output (``None`` if unknown before decoding).
    num_classes: number of label classes of the dataset.
    num_examples: examples this process reads (``None`` if unknown).
    total_examples: examples of ``split`` over all processes (``None`` if unknown).
  """

  name: str
  split: str
  channels: int | None
  num_classes: int | None
  num_examples: int | None
  total_examples: int | None
  _read: Callable[[int | None], Any]
  _decode: Callable[[Any], Any]

  def read(self, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Encoded examples of this process; files shuffled deterministically when a seed is given."""
    return self._read(shuffle_seed)

  def decode(self, encoded: tf.Tensor) -> tf.Tensor:
    """Decodes one encoded image to uint8 (H, W, C)."""
    return self._decode(encoded)


def _cardinality(ds: tf.data.Dataset) -> int | None:
  n = int(ds.cardinality().numpy())
  return n if n >= 0 else None


def _select(example: dict) -> dict:
  return {"image": example["image"], "label": tf.cast(example["label"], tf.int64)}


def open_source(data, split: str, *, process_index: int, process_count: int,
                num_examples: int | None = None) -> Source:
  """Opens ``split`` of ``data.dataset`` for one process.

  Args:
    data: the ``config.data`` block.
    split: TFDS split name or sub-split (``"train"``, ``"test[:10%]"``).
    process_index: index of this process in ``[0, process_count)``.
    process_count: number of processes reading disjoint parts of the split.
    num_examples: use only the first ``num_examples`` examples of the split (over all processes).

  Returns:
    The :class:`Source`.

  Raises:
    FileNotFoundError: the dataset is not prepared (the message says how to prepare it).
    ValueError: unknown dataset or split.
  """
  if data.dataset.startswith(IMAGE_FOLDER_PREFIX):
    return _folder_source(data, split, process_index, process_count, num_examples)
  return _tfds_source(data, split, process_index, process_count, num_examples)


def get_builder(dataset: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """Returns a prepared TFDS builder; prepares ``cdm_mnist`` on first use, never downloads."""
  if dataset == mnist_builder.NAME:
    return mnist_builder.prepare(data_dir)
  try:
    builder = tfds.builder(dataset, data_dir=data_dir or None)
  except Exception as e:  # tfds raises DatasetNotFoundError / ValueError / KeyError variants.
    close = difflib.get_close_matches(dataset.split("/")[0], tfds.list_builders(), n=3)
    raise ValueError(
        f"Unknown dataset data.dataset={dataset!r} (data_dir={data_dir or '~/tensorflow_datasets'}): "
        f"{str(e).splitlines()[0]}\nClose TFDS names: {close}. Use a TFDS name (e.g. 'cifar10', "
        f"'imagenet2012', 'imagenet_resized/64x64'), 'cdm_mnist', or "
        f"'image_folder:/path/to/root'.") from None
  if not builder.is_prepared():
    root = str(builder.data_dir_root)
    msg = (f"TFDS dataset {dataset!r} is not prepared in data_dir '{root}' (looked for "
           f"{builder.data_path}). cdm never downloads during training.")
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
      manual = os.path.join(root, "downloads", "manual")
      msg += (f"\nIt needs a manual download: put the files below in {manual}/ first:\n"
              f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}\nthen run:")
    else:
      msg += "\nPrepare it once (this downloads; run it where there is network) with:"
    msg += f"\n  {prepare_command(dataset, data_dir or root)}"
    raise FileNotFoundError(msg)
  return builder


def _tfds_source(data, split, process_index, process_count, num_examples) -> Source:
  """A prepared TFDS dataset: per-process sub-split, encoded images (SkipDecoding)."""
  builder = get_builder(data.dataset, data.data_dir)
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise ValueError(f"Dataset {data.dataset!r} has features {list(features.keys())}; cdm needs "
                     f"'image' and 'label'.")
  if num_examples is not None:
    if "[" in split:
      raise ValueError(f"num_examples={num_examples} cannot be combined with the sliced split "
                       f"{split!r}; pass split='{split.split('[')[0]}[:{num_examples}]' instead.")
    split = f"{split}[:{num_examples}]"
  host_split = tfds.split_for_jax_process(
      split, process_index=process_index, process_count=process_count)

  def as_dataset(s, shuffle_seed=None):
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
    try:
      ds = builder.as_dataset(split=s, shuffle_files=shuffle_seed is not None,
                              read_config=read_config,
                              decoders={"image": tfds.decode.SkipDecoding()})
    except ValueError as e:
      raise ValueError(f"Split {s!r} of dataset {data.dataset!r}: {e} (available splits: "
                       f"{list(builder.info.splits.keys())}; set data.train_split / "
                       f"data.eval_split)") from e
    return ds.map(_select)

  def count(s):
    try:
      return builder.info.splits[s].num_examples
    except (KeyError, ValueError, TypeError):  # E.g. mocked TFDS: no split metadata.
      return _cardinality(as_dataset(s))

  image_feature = features["image"]
  shape = image_feature.shape
  return Source(
      name=data.dataset, split=split,
      channels=shape[-1] if shape else None,
      num_classes=getattr(features["label"], "num_classes", None),
      num_examples=count(host_split),
      total_examples=count(split),
      _read=lambda seed: as_dataset(host_split, seed),
      _decode=image_feature.decode_example)


def _folder_source(data, split, process_index, process_count, num_examples) -> Source:
  """``image_folder:<root>`` with ``<root>/<split>/<class>/*.{png,jpg,jpeg}`` (ImageFolder layout)."""
  root = data.dataset[len(IMAGE_FOLDER_PREFIX):]
  if not root or not tf.io.gfile.isdir(root):
    raise FileNotFoundError(
        f"data.dataset={data.dataset!r}: folder {root!r} does not exist. Expected the layout "
        f"<root>/<split>/<class_name>/<image>.png|jpg (e.g. <root>/train/cat/001.jpg).")
  builder = tfds.folder_dataset.ImageFolder(root)
  if split not in builder.info.splits.keys():
    raise ValueError(
        f"Split {split!r} not found in image folder {root!r} (found split folders: "
        f"{sorted(builder.info.splits.keys())}). Expected the layout <root>/<split>/<class_name>/"
        f"<image> (sub-splits like 'train[:10%]' are not supported for folders).")
  total = builder.info.splits[split].num_examples
  if num_examples is not None:
    total = min(total, num_examples)

  def read(shuffle_seed):
    del shuffle_seed  # ImageFolder's own file shuffle is unseeded; the pipeline's buffer shuffles.
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    return ds.take(total).shard(process_count, process_index).map(_select)

  def decode(encoded):
    image = tf.io.decode_image(encoded, channels=data.channels, expand_animations=False)
    return tf.ensure_shape(image, [None, None, data.channels])

  return Source(
      name=data.dataset, split=split, channels=data.channels,
      num_classes=builder.info.features["label"].num_classes,
      num_examples=total // process_count + (process_index < total % process_count),
      total_examples=total, _read=read, _decode=decode)
