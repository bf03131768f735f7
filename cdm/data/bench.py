"""Measures the images/s the training input pipeline delivers on this host.

Usage::

  python -m cdm.data.bench --config=configs/mnist/base16.py [--config.train.batch_size=64] \\
      [--num_batches=200] [--warmup=10] [--process_count=1]

The first ``--warmup`` batches (cache filling, autotuning) are not timed; the time to the first batch
is reported separately. The batches are converted to numpy, as the trainer receives them.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
from ml_collections import config_flags

from cdm.data import train_pipeline


def run(config, num_batches: int = 200, warmup: int = 10, process_count: int = 1) -> dict:
  """Returns ``{"images_per_s", "batch_size", "first_batch_s", "seconds", "shapes"}``."""
  start = time.perf_counter()
  it = train_pipeline.create_train_iterator(config, process_index=0, process_count=process_count)
  batch = next(it)
  first = time.perf_counter() - start
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(it)
  seconds = time.perf_counter() - start
  return {"images_per_s": num_batches * it.batch_size / seconds, "batch_size": it.batch_size,
          "first_batch_s": first, "seconds": seconds,
          "shapes": {k: v.shape for k, v in batch.items()}}


def main(argv):
  del argv
  config = _CONFIG.value
  r = run(config, _NUM_BATCHES.value, _WARMUP.value, _PROCESS_COUNT.value)
  shapes = ", ".join(f"{k} {tuple(v)}" for k, v in sorted(r["shapes"].items()))
  print(f"{config.data.dataset} {config.data.train_split}: {r['images_per_s']:.0f} images/s "
        f"({_NUM_BATCHES.value} batches of {r['batch_size']} in {r['seconds']:.2f} s; first batch "
        f"after {r['first_batch_s']:.2f} s; {shapes})")


if __name__ == "__main__":
  # Flags are defined only when run as a script, so cdm.bench can import run() (its own --config).
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file.", lock_config=True)
  _NUM_BATCHES = flags.DEFINE_integer("num_batches", 200, "Timed batches.")
  _WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed batches before timing.")
  _PROCESS_COUNT = flags.DEFINE_integer(
      "process_count", 1, "Simulated process count (this host reads 1/process_count of the data, "
      "batch // process_count).")
  app.run(main)
