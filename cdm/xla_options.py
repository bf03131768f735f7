"""Per-stage XLA compiler options (``config.xla``), passed to ``jax.jit(compiler_options=...)``.

They are per-program DebugOptions overrides, so they stay with the stage's own programs (train
step, sampler, forward) instead of a process-wide ``XLA_FLAGS``, and an option this jaxlib does
not know fails at :func:`check` with the config field to change, before any training starts.

The CPU default keeps 3x3 convolutions on XLA's own (Eigen) kernels instead of the YNNPACK
library fusion that jax 0.10 enables by default: on the 2-core test machine the U-Net train step
is 15-25% faster (docs/performance.md, "XLA:CPU library fusions"). Accelerators get no options.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cdm.config_base import parse_xla_options as parse


def for_platform(config, platform: str | None = None) -> dict | None:
  """The compiler options of ``config``'s stage on ``platform`` (default: JAX's backend)."""
  platform = platform or jax.default_backend()
  xla = config.get("xla")  # None in configs saved before the field existed
  if platform != "cpu" or xla is None:
    return None
  return parse(xla.cpu_options) or None


def jit(fun, config, platform: str | None = None, **kwargs):
  """``jax.jit(fun, **kwargs)`` with the stage's compiler options for ``platform`` (checked
  once per distinct option set, so a rejected option names the config field, not XLA's flag)."""
  opts = for_platform(config, platform)
  if not opts:
    return jax.jit(fun, **kwargs)
  _check(tuple(sorted(opts.items())))
  return jax.jit(fun, compiler_options=opts, **kwargs)


def check(config) -> None:
  """Compiles a trivial program with the options; a clear error if this jaxlib rejects them.
  Training calls it first, before the input pipeline or the model is built."""
  opts = for_platform(config)
  if opts:
    _check(tuple(sorted(opts.items())))


@functools.lru_cache(maxsize=None)
def _check(items) -> None:
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(items)).lower(
        jax.ShapeDtypeStruct((2,), jnp.float32, sharding=cpu)).compile()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"xla.cpu_options={' '.join(f'{k}={v}' for k, v in items)!r} is not accepted by this "
        f"jaxlib ({jax.__version__}): {str(e).splitlines()[0]} Set --config.xla.cpu_options='' "
        f"(XLA's own defaults) or fix the option.") from e
