"""FLOP accounting: compiled cost analysis, device peaks, model FLOP utilisation."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# Published dense bf16 peak FLOP/s per device (chip), by substring of ``device.device_kind``.
PEAK_BF16_FLOPS = (
    ("v6", 918e12),  # TPU v6e (Trillium)
    ("v5p", 459e12),
    ("v5 lite", 197e12),  # TPU v5e
    ("v5e", 197e12),
    ("v4", 275e12),
    ("v3", 123e12),
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("l4", 121e12),
)


def compiled_flops(compiled) -> float:
  """FLOPs of one call of a compiled function, from XLA's cost analysis (0 if unavailable)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return 0.0
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def _best_time(f, a, repeats: int) -> float:
  """Fastest of ``repeats`` timed calls ``f(a)`` (after one warm-up / compile call), in seconds."""
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return best


@functools.lru_cache(maxsize=None)
def measured_matmul_peak(n: int = 1024, repeats: int = 5) -> float:
  """Achieved float32 FLOP/s of a large matmul on device 0 (the CPU's practical peak)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2.0 * n ** 3 / _best_time(f, a, repeats)


def measured_cpu_peak(n: int = 2048, repeats: int = 5) -> dict:
  """The host's practical float32 peak: the better of one n x n matmul on device 0 and one matmul
  per host device run concurrently (with several XLA host devices, device 0 alone may not use every
  core). Returns ``{"peak_flops", "matmul_1dev_flops", "matmul_alldev_flops", "matmul_n"}``."""
  single = measured_matmul_peak(n, repeats)
  devices = jax.devices()
  out = {"matmul_n": n, "matmul_1dev_flops": single, "matmul_alldev_flops": 0.0}
  if len(devices) > 1:
    mesh = jax.sharding.Mesh(devices, ("d",))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    a = jax.device_put(jnp.ones((len(devices), n, n), jnp.float32), sh)
    f = jax.jit(lambda x: jnp.einsum("bij,bjk->bik", x, x), out_shardings=sh)
    out["matmul_alldev_flops"] = 2.0 * len(devices) * n ** 3 / _best_time(f, a, repeats)
  out["peak_flops"] = max(single, out["matmul_alldev_flops"])
  return out


def peak_flops_per_device(configured: float = 0.0) -> float:
  """The peak used for MFU: the configured value, the device kind's published peak, or measured."""
  if configured:
    return float(configured)
  device = jax.devices()[0]
  kind = device.device_kind.lower()
  for key, peak in PEAK_BF16_FLOPS:
    if key in kind:
      return peak
  if device.platform == "cpu":
    return measured_matmul_peak()
  return 0.0
