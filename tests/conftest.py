"""Test setup: 8 fake CPU devices (so sharding is exercised) and float32-exact matmuls.

Must run before jax is imported anywhere.
"""

import os
import pathlib

# 8 host devices; LLVM optimisation level 0 compiles ~40% faster and tests run tiny programs.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# XLA:CPU compiles the partitionable threefry kernels very slowly (seconds per random op); the
# classic lowering gives sharding-independent values too and compiles ~5x faster. Production keeps
# JAX's default.
jax.config.update("jax_threefry_partitionable", False)
# Tests build the same train steps / samplers many times: share compilations within the run.
_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/cdm_test_jax_cache")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir():
  """The ../shared folder beside the project; skips when a user cloned the project alone."""
  if not SHARED.is_dir():
    pytest.skip(f"reference folder {SHARED} is absent (it ships beside the project, not in it)")
  return SHARED
