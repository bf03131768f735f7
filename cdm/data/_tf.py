"""TensorFlow for input pipelines only: CPU, never an accelerator.

Every module of :mod:`cdm.data` imports ``tf`` from here, so TensorFlow hides its GPUs before it
creates any op and never takes memory from the accelerators that JAX uses.
"""

import tensorflow as tf

try:
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # TF already initialised its devices (e.g. by the caller).
  pass

__all__ = ["tf"]
