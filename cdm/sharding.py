"""Device mesh and sharding rules.

The mesh has two axes: ``data`` (pure data parallelism) and ``fsdp`` (parameters, EMA and optimizer
state sharded over it, batch sharded over both). With ``fsdp == 1`` every parameter is replicated and
this is plain data parallelism; XLA inserts the gradient all-reduce (or reduce-scatter / all-gather for
FSDP) from the shardings alone, so the train step is written as single-device code.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_config, devices=None) -> Mesh:
  """Builds a ('data', 'fsdp') mesh over all devices (all hosts) from ``config.mesh``."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  fsdp = int(mesh_config.fsdp)
  data = int(mesh_config.data)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the device count {n}.")
  if data == -1:
    data = n // fsdp
  if data * fsdp != n:
    raise ValueError(
        f"mesh.data={mesh_config.data} x mesh.fsdp={fsdp} = {data * fsdp} != {n} devices; "
        "set mesh.data=-1 to use every device.")
  grid = np.asarray(devices, dtype=object).reshape(data, fsdp)
  return Mesh(grid, BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape, fsdp_size: int, min_size: int) -> P:
  """FSDP rule: shard the largest dimension divisible by the fsdp axis, if the array is large."""
  if fsdp_size <= 1 or math.prod(shape) < min_size:
    return P()
  order = sorted(range(len(shape)), key=lambda i: -shape[i])
  for i in order:
    if shape[i] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[i] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh, min_size: int):
  """Shardings for a pytree of (abstract) arrays following :func:`param_spec`."""
  fsdp_size = mesh.shape["fsdp"]

  def one(x):
    shape = getattr(x, "shape", ())
    return NamedSharding(mesh, param_spec(tuple(shape), fsdp_size, min_size))

  return jax.tree.map(one, abstract_state)


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(
        f"train.batch_size={global_batch} is not divisible by the {n} devices of the mesh; "
        f"use a multiple of {n}.")


def host_batch_to_global(batch: dict, sharding: NamedSharding) -> dict:
  """Assembles host-local numpy batches into global jax.Arrays sharded over the batch axes."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
