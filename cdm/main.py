r"""cdm command line: train a stage, sample a cascade, evaluate samples, sweep the aug level.

  python -m cdm.main --config=configs/mnist/base16.py --workdir=workdirs/mnist_base16
  python -m cdm.main --config=configs/sr64_256.py --workdir=gs://bucket/sr64_256 \
      --config.train.batch_size=1024
  python -m cdm.main --mode=sample --config=configs/cascades/mnist.py --workdir=workdirs/cascade
  python -m cdm.main --mode=eval --config=configs/cascades/mnist.py --workdir=workdirs/cascade
  python -m cdm.main --mode=sweep --config=configs/cascades/mnist.py --workdir=workdirs/sweep

Any config field can be overridden with ``--config.<path>=<value>``; an unknown field is an error.
"""

from __future__ import annotations


from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Stage or cascade config file (path[:variant], e.g. configs/base32.py:tiny).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "sweep"], "What to run.")
_BASE_SAMPLES = flags.DEFINE_string(
    "base_samples", None, "sample mode: start the cascade from this .npz of a previous stage's "
    "samples (uint8 images + labels) instead of sampling the first stage.")
_MULTIHOST = flags.DEFINE_enum(
    "multihost", "auto", ["auto", "true", "false"],
    "Call jax.distributed.initialize(): auto = when a cluster (TPU pod, SLURM, ...) is detected.")
flags.mark_flags_as_required(["config", "workdir"])


def _init_distributed():
  """Multi-host: connect the processes (TPU pods, SLURM / multi-node GPU) before any JAX work.

  ``--multihost=auto`` asks ``jax.distributed.initialize()`` to detect the cluster and stays
  single-process when there is none (laptops, single-host TPU VMs, Colab).
  """
  import jax  # pylint: disable=g-import-not-at-top
  if _MULTIHOST.value != "false":
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
      if _MULTIHOST.value == "true":
        raise
      logging.info("Single process (no cluster detected: %s).", str(e).splitlines()[0][:200])
  logging.info("JAX process %d / %d, %d local devices, %d global devices (%s).",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].device_kind)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # TF is only the input pipeline: keep it off accelerators that JAX uses.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  config = _CONFIG.value
  _init_distributed()
  workdir = _WORKDIR.value
  mode = _MODE.value
  is_cascade = "stages" in config
  if mode == "train":
    if is_cascade:
      raise app.UsageError(
          "--mode=train takes a stage config (configs/<stage>.py); this is a cascade config. "
          "Train each of its stages with its own config, or use --mode=sample.")
    from cdm import train  # pylint: disable=g-import-not-at-top
    train.train_and_evaluate(config, workdir)
    return
  if not is_cascade:
    raise app.UsageError(
        f"--mode={mode} takes a cascade config (configs/cascades/<name>.py) listing its stages.")
  from cdm import cascade  # pylint: disable=g-import-not-at-top
  if mode == "sample":
    cascade.sample_cascade(config, workdir, base_samples=_BASE_SAMPLES.value)
  elif mode == "eval":
    from cdm import evaluate  # pylint: disable=g-import-not-at-top
    evaluate.evaluate_cascade(config, workdir)
  elif mode == "sweep":
    from cdm import evaluate  # pylint: disable=g-import-not-at-top
    evaluate.sweep(config, workdir)


if __name__ == "__main__":
  app.run(main)
