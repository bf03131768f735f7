"""The training input pipeline: an endless, resumable iterator of host-local numpy batches.

Order and resume design
-----------------------
Epoch ``e`` of process ``p`` is a pure function of ``(config.seed, p, e)``: the TFDS file order
(``ReadConfig.shuffle_seed``) and the shuffle buffer's seed are derived from it, and the flip of the
batch starting at position ``i`` of the epoch uses ``stateless_uniform(seed=(key(seed, p, e), i))``. The
iterator's state is therefore just ``{"epoch": e, "examples_in_epoch": k}`` (plus identification
fields), and :meth:`TrainIterator.set_state` rebuilds epoch ``e`` and skips its first ``k`` examples.

Why not tf.data iterator checkpointing: it serialises the shuffle buffer (thousands of images) and is
not JSON; the position here is two integers that live in the training checkpoint's metadata. The skip
is cheap because it happens *before* decoding: with ``data.cache`` it walks the in-memory cache of
decoded images; without, it reads (but never decodes or resizes) the skipped encoded records, at
most one epoch of them. State is tracked in Python per delivered batch, so prefetching never makes
it run ahead.

Each epoch is batched on its own with ``drop_remainder=True``: the last ``n % b`` examples of an epoch
(a different random subset each epoch) are not used in that epoch.

With ``data.cache`` the decoded, resized hi-res images are cached in memory (in a fixed file order)
and each epoch reshuffles the cache with a ``data.shuffle_buffer`` buffer; set the buffer to at least
the number of examples for a full shuffle. Without cache, files are also shuffled per epoch.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import numpy as np

from cdm.data import common
from cdm.data import preprocess
from cdm.data._tf import tf

STATE_VERSION = 1


class TrainIterator:
  """Endless iterator of ``{"image", ["low_res"], "label"}`` numpy batches; see the module doc.

  Attributes:
    batch_size: per-process batch size ``b``.
    num_examples: examples of the training split this process reads (``None`` if unknown).
    element_spec: ``{key: (shape, dtype)}`` of the batches.
  """

  def __init__(self, config, *, process_index: int, process_count: int):
    data = config.data
    self._data = data
    self._seed = int(config.seed)
    self._process_index = process_index
    self._process_count = process_count
    self.batch_size = common.host_batch_size(config.train.batch_size, process_count)
    self._source = common.open_checked_source(config, data.train_split, process_index,
                                              process_count)
    self.num_examples = self._source.num_examples
    if self.num_examples is not None and self.num_examples < self.batch_size:
      raise ValueError(
          f"Process {process_index} of {process_count} reads {self.num_examples} examples of "
          f"{data.dataset!r} split {data.train_split!r}, fewer than its batch of {self.batch_size} "
          f"(train.batch_size={config.train.batch_size}); lower --config.train.batch_size.")
    self.element_spec = common.element_spec(data, self.batch_size)
    self._cached = None
    if data.cache:
      self._cached = common.map_hi_res(self._source.read(None), self._source, data).cache()
    self._epoch = 0
    self._offset = 0  # Examples of the current epoch already delivered.
    self._it = None

  def _epoch_dataset(self, epoch: int, offset: int) -> tf.data.Dataset:
    """Batches of epoch ``epoch`` after skipping its first ``offset`` examples."""
    data = self._data
    shuffle_seed = common.mix_seed(self._seed, self._process_index, epoch, 0)
    flip_key = common.mix_seed(self._seed, self._process_index, epoch, 1)
    ds = self._cached if self._cached is not None else self._source.read(shuffle_seed)
    ds = ds.shuffle(data.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.enumerate().skip(offset)  # Skips before decoding (uncached) / after the cache.
    if self._cached is None:
      ds = ds.map(lambda position, example: {**example, "position": position})
      ds = common.map_hi_res(ds, self._source, data)
      ds = ds.map(lambda ex: (ex["position"], {k: v for k, v in ex.items() if k != "position"}))
    ds = ds.batch(self.batch_size, drop_remainder=True)

    def finish(positions, batch):
      flip_seed = None
      if data.random_flip:  # Keyed on the batch's first position in the epoch.
        flip_seed = tf.stack([tf.constant(flip_key, tf.int64), positions[0]])
      return preprocess.finish_batch(batch["image"], batch["label"], data, flip_seed)

    ds = ds.map(finish, num_parallel_calls=common.AUTOTUNE)
    if data.prefetch:
      ds = ds.prefetch(data.prefetch)
    return ds.with_options(common.dataset_options())

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    delivered_in_epoch = False
    while True:
      if self._it is None:
        self._it = self._epoch_dataset(self._epoch, self._offset).as_numpy_iterator()
      try:
        batch = next(self._it)
      except StopIteration:
        if self._offset == 0 and not delivered_in_epoch:
          raise ValueError(
              f"Epoch {self._epoch} of {self._data.dataset!r} has fewer than "
              f"{self.batch_size} examples on process {self._process_index}.") from None
        self._epoch, self._offset, self._it = self._epoch + 1, 0, None
        continue
      self._offset += self.batch_size
      delivered_in_epoch = True
      return batch

  def get_state(self) -> dict[str, Any]:
    """JSON-able position of the next batch to be returned."""
    return {
        "version": STATE_VERSION,
        "epoch": self._epoch,
        "examples_in_epoch": self._offset,
        "seed": self._seed,
        "dataset": self._data.dataset,
        "split": self._data.train_split,
        "process_index": self._process_index,
        "process_count": self._process_count,
    }

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from ``state`` (of :meth:`get_state`): the next batches are those it would give.

    A state saved with another process layout restarts its epoch (positions are per process); one
    saved with another seed or dataset is used as is, with a warning.
    """
    epoch, offset = int(state["epoch"]), int(state["examples_in_epoch"])
    if epoch < 0 or offset < 0:
      raise ValueError(f"Invalid data iterator state {state}.")
    layout = (state.get("process_index"), state.get("process_count"))
    if layout != (self._process_index, self._process_count):
      logging.warning("Data state was saved by process %s of %s, restored by %d of %d: restarting "
                      "epoch %d from its beginning.", *layout, self._process_index,
                      self._process_count, epoch)
      offset = 0
    for key, mine in (("seed", self._seed), ("dataset", self._data.dataset),
                      ("split", self._data.train_split)):
      if key in state and state[key] != mine:
        logging.warning("Data state has %s=%r but the config has %r; order will differ from the "
                        "saved run.", key, state[key], mine)
    self._epoch, self._offset, self._it = epoch, offset, None


def create_train_iterator(config, *, process_index: int | None = None,
                          process_count: int | None = None) -> TrainIterator:
  """Endless, resumable iterator of this process's training batches.

  Args:
    config: a stage config (``cdm.config_base.stage_config()``); uses ``config.data``,
      ``config.train.batch_size`` and ``config.seed``.
    process_index: this process (default ``jax.process_index()``).
    process_count: number of processes (default ``jax.process_count()``).

  Returns:
    A :class:`TrainIterator` yielding ``{"image": uint8 (b, H, W, C), "low_res": uint8 (b, h, w, C)
    (SR stages only), "label": int32 (b,)}`` with ``b = train.batch_size // process_count``.

  Raises:
    ValueError: invalid config (batch size not divisible, low_res_size not dividing image_size...).
    FileNotFoundError: the dataset is not prepared in ``data.data_dir``.
  """
  process_index, process_count = common.processes(process_index, process_count)
  return TrainIterator(config, process_index=process_index, process_count=process_count)
