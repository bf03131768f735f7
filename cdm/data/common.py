"""Helpers shared by the train and eval pipelines: processes, batch sizes, opening a checked source."""

from __future__ import annotations

import numpy as np

from cdm.data import preprocess
from cdm.data import sources
from cdm.data._tf import tf

AUTOTUNE = tf.data.AUTOTUNE


def processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """Fills ``None`` with ``jax.process_index()`` / ``jax.process_count()`` and checks the pair."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
  return int(process_index), int(process_count)


def host_batch_size(batch_size: int, process_count: int, name: str = "train.batch_size") -> int:
  """Per-process batch size ``batch_size // process_count``; ``ValueError`` if it does not divide."""
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(
        f"{name}={batch_size} must be a positive multiple of the number of processes "
        f"({process_count}): each process loads {name} // process_count examples. Set "
        f"--config.{name}={max(1, batch_size // process_count) * process_count}.")
  return batch_size // process_count


def open_checked_source(config, split: str, process_index: int, process_count: int,
                        num_examples: int | None = None) -> sources.Source:
  """Validates ``config.data`` and opens ``split``, checking channels and classes against it."""
  data = config.data
  preprocess.check_data_config(data)
  source = sources.open_source(data, split, process_index=process_index,
                               process_count=process_count, num_examples=num_examples)
  preprocess.check_channels(data.dataset, source.channels, data.channels)
  if source.num_classes is not None and source.num_classes > data.num_classes:
    raise ValueError(f"Dataset {data.dataset!r} has {source.num_classes} classes but "
                     f"data.num_classes={data.num_classes}; set "
                     f"--config.data.num_classes={source.num_classes}.")
  return source


def map_hi_res(ds: tf.data.Dataset, source: sources.Source, data,
               batch: int = 256) -> tf.data.Dataset:
  """Maps ``{"image": encoded, ...}`` examples to ``{"image": uint8 hi-res (S, S, C), ...}``.

  Decoding is per example; when decoded images have a static shape (MNIST, CIFAR-10, resized
  ImageNet) crop and resize run on groups of ``batch`` examples (order and count are unchanged).
  """
  def decode(example):
    return {**example, "image": source.decode(example["image"])}

  def preprocess_images(example):
    return {**example, "image": preprocess.hi_res(example["image"], data)}

  ds = ds.map(decode, num_parallel_calls=AUTOTUNE)
  if ds.element_spec["image"].shape.is_fully_defined():
    return ds.batch(batch).map(preprocess_images, num_parallel_calls=AUTOTUNE).unbatch()
  return ds.map(preprocess_images, num_parallel_calls=AUTOTUNE)


def mix_seed(*values: int) -> int:
  """A 31-bit seed derived from non-negative integers (numpy SeedSequence; stable across versions)."""
  entropy = [int(v) % (2 ** 63) for v in values]
  return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0] >> 1)


def dataset_options() -> tf.data.Options:
  """tf.data options: deterministic order (resume and reproducibility depend on it)."""
  options = tf.data.Options()
  options.deterministic = True
  return options


def element_spec(data, batch: int, eval_mask: bool = False) -> dict:
  """``{key: (shape, numpy dtype)}`` of the batches a pipeline emits."""
  s, c = data.image_size, data.channels
  spec = {"image": ((batch, s, s, c), np.uint8), "label": ((batch,), np.int32)}
  if data.low_res_size > 0:
    spec["low_res"] = ((batch, data.low_res_size, data.low_res_size, c), np.uint8)
  if eval_mask:
    spec["mask"] = ((batch,), np.bool_)
  return spec
