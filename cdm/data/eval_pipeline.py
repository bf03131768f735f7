"""The evaluation input pipeline: one ordered, finite pass over a split, with a padding mask.

Same preprocessing as training, no shuffle, no flip. Every process yields the *same number* of
batches (collective evaluation steps need that): with ``drop_remainder=False`` (default) each process
pads its part with all-zero examples up to ``num_batches * b``; ``batch["mask"]`` is ``True`` for real
examples and ``False`` for padding (label 0, black images), so means over ``mask`` are exact. With
``drop_remainder=True`` each process keeps only ``num_batches = min_p(n_p) // b`` full batches and
``mask`` is all ``True``.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from cdm.data import common
from cdm.data import preprocess
from cdm.data._tf import tf


class EvalIterator:
  """A finite, ordered pass over a split: iterate it (each ``iter()`` starts a fresh pass).

  ``next()`` on the object itself walks one default pass. Batches are ``{"image", ["low_res"],
  "label", "mask"}`` numpy arrays.

  Attributes:
    batch_size: per-process batch size ``b``.
    num_batches: batches of one pass (the same on every process); also ``len()``.
    num_examples: real (unpadded) examples this process yields in one pass.
    total_examples: real examples over all processes.
    element_spec: ``{key: (shape, dtype)}`` of the batches.
  """

  def __init__(self, dataset: tf.data.Dataset, *, batch_size: int, num_batches: int,
               num_examples: int, total_examples: int, element_spec: dict):
    self._dataset = dataset
    self.batch_size = batch_size
    self.num_batches = num_batches
    self.num_examples = num_examples
    self.total_examples = total_examples
    self.element_spec = element_spec
    self._default_pass = None

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self._dataset.as_numpy_iterator()

  def __next__(self) -> dict[str, np.ndarray]:
    if self._default_pass is None:
      self._default_pass = iter(self)
    return next(self._default_pass)


def _process_sizes(total: int, process_count: int) -> list[int]:
  """Examples per process of ``tfds.even_splits`` / ``Dataset.shard`` (first ones get one more)."""
  return [total // process_count + (i < total % process_count) for i in range(process_count)]


def create_eval_iterator(config, split: str | None = None, batch_size: int | None = None,
                         num_examples: int | None = None, *, process_index: int | None = None,
                         process_count: int | None = None,
                         drop_remainder: bool = False) -> EvalIterator:
  """A finite, ordered pass over ``split`` for this process (see the module doc for padding).

  Args:
    config: a stage config.
    split: TFDS split (default ``config.data.eval_split``).
    batch_size: global batch size (default ``config.train.batch_size``); each process gets
      ``batch_size // process_count``.
    num_examples: use only the first ``num_examples`` examples of the split (all processes together).
    process_index: this process (default ``jax.process_index()``).
    process_count: number of processes (default ``jax.process_count()``).
    drop_remainder: drop the incomplete last batches instead of padding them.

  Returns:
    An :class:`EvalIterator`.
  """
  process_index, process_count = common.processes(process_index, process_count)
  data = config.data
  split = data.eval_split if split is None else split
  batch_size = config.train.batch_size if batch_size is None else batch_size
  b = common.host_batch_size(batch_size, process_count, name="eval batch_size")
  source = common.open_checked_source(config, split, process_index, process_count, num_examples)
  if source.total_examples is None:
    raise ValueError(f"Cannot count the examples of {data.dataset!r} split {split!r}.")
  sizes = _process_sizes(source.total_examples, process_count)
  if drop_remainder:
    num_batches = min(sizes) // b
  else:
    num_batches = math.ceil(max(sizes) / b)
  target = num_batches * b
  mine = sizes[process_index] if source.num_examples is None else source.num_examples
  real = min(mine, target)

  ds = source.read(None).map(lambda ex: {**ex, "mask": tf.constant(True)})
  ds = common.map_hi_res(ds, source, data).take(target)
  if target > real:
    s, c = data.image_size, data.channels
    pad = {"image": tf.zeros([s, s, c], tf.uint8), "label": tf.constant(0, tf.int64),
           "mask": tf.constant(False)}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(target - real))
  ds = ds.batch(b, drop_remainder=True)

  def finish(batch):
    return {**preprocess.finish_batch(batch["image"], batch["label"], data, flip_seed=None),
            "mask": batch["mask"]}

  ds = ds.map(finish, num_parallel_calls=common.AUTOTUNE)
  if data.prefetch:
    ds = ds.prefetch(data.prefetch)
  spec = common.element_spec(data, b, eval_mask=True)
  return EvalIterator(ds.with_options(common.dataset_options()), batch_size=b,
                      num_batches=num_batches, num_examples=real,
                      total_examples=source.total_examples, element_spec=spec)
