"""The device mesh and the shardings every trainer uses, built in one place.

All training is data parallel over a 1-D mesh axis "data" spanning every device of every
process: parameters and optimizer state are replicated, the leading (batch) axis of each batch
is split over the devices. Each process feeds only its own slice of the global batch (its data
pipeline reads a disjoint shard of the data) and `shard_batch` stitches the per-process slices
into global `jax.Array`s without any cross-host copy.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def per_process_batch(global_batch: int) -> int:
  """This process's share of a global batch size (which must split evenly over processes)."""
  if global_batch % jax.process_count():
    raise ValueError(f"batch_size {global_batch} is not divisible by the "
                     f"{jax.process_count()} processes")
  return global_batch // jax.process_count()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis "data" over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the "data" axis, all other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (parameters, optimizer state, rng, metrics)."""
  return NamedSharding(mesh, P())


def local_device_count(mesh: Mesh) -> int:
  """Number of this process's devices in `mesh` (what a per-process batch is split over)."""
  return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def _check_leaf(path: str, x: Any, num_local: int) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype.kind not in "biuf" and x.dtype.kind != "c":
    raise TypeError(
        f"shard_batch: leaf {path!r} has dtype {x.dtype} (strings, bytes or objects, e.g. episode "
        "ids), which cannot become a device array. Drop such keys from the batch before "
        "sharding it (keep them on the host if you need them for logging).")
  if x.ndim == 0:
    raise ValueError(f"shard_batch: leaf {path!r} is a scalar; every leaf needs a leading batch "
                     "axis.")
  if x.shape[0] % num_local:
    raise ValueError(
        f"shard_batch: leaf {path!r} has per-process batch size {x.shape[0]}, which is not "
        f"divisible by the {num_local} local devices of this process. Choose a per-process batch "
        f"size that is a multiple of {num_local} (global batch = per-process batch x "
        f"{jax.process_count()} processes).")
  return x


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Per-process numpy batch -> pytree of global `jax.Array`s split along the batch axis.

  Args:
    local_batch: pytree of arrays whose leading axis is this process's slice of the global batch
      (per-process batch B_local; the global batch is B_local x process_count).
    mesh: the training mesh from `make_mesh`.

  Returns:
    The same pytree with global arrays of leading size B_local x process_count, sharded with
    `data_sharding(mesh)`.

  Raises:
    TypeError: a leaf is not numeric (strings/bytes/objects such as episode ids).
    ValueError: B_local is not divisible by the number of local devices.
  """
  num_local = local_device_count(mesh)
  sharding = data_sharding(mesh)

  single = jax.process_count() == 1

  def put(path, x):
    x = _check_leaf(jax.tree_util.keystr(path), x, num_local)
    if single:  # the same global array; device_put skips the multi-process bookkeeping
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map_with_path(put, local_batch)


def shard_batches(batches: Iterable[Any], mesh: Mesh) -> Iterator[Any]:
  """Lazily applies `shard_batch` to every batch of a per-process numpy batch iterator."""
  for batch in batches:
    yield shard_batch(batch, mesh)
