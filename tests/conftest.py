"""Test setup: 8 fake CPU devices (so sharding is exercised) and float32-exact matmuls.

Must run before jax is imported anywhere.
"""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir():
  """The ../shared folder beside the project; skips when a user cloned the project alone."""
  if not SHARED.is_dir():
    pytest.skip(f"reference folder {SHARED} is absent (it ships beside the project, not in it)")
  return SHARED
