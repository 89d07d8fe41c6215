"""Device mesh, shardings and host-to-device batch placement.

Every jitted step in jaxrank takes and returns arrays laid out on one named mesh with axes
``data`` (batch and database rows) and ``model`` (split parameter dimensions). Axes are Auto so
that ``jax.jit`` propagates shardings; code that needs per-device logic uses ``jax.shard_map``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = "data"
MODEL = "model"


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, model)`` mesh; ``data=-1`` takes every device not used by ``model``."""
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or len(devices) % model:
        raise ValueError(f"mesh.model={model} must divide the {len(devices)} available devices")
    if data == -1:
        data = len(devices) // model
    if data * model != len(devices):
        raise ValueError(
            f"mesh shape data={data} x model={model} needs {data * model} devices, "
            f"but {len(devices)} are available"
        )
    grid = np.asarray(devices, dtype=object).reshape(data, model)
    return Mesh(grid, (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto))


def mesh_from_config(cfg: Mapping[str, Any]) -> Mesh:
    """Build the mesh named by a config's ``mesh`` block (``data``, ``model``)."""
    return make_mesh(data=int(cfg.get("data", -1)), model=int(cfg.get("model", 1)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading axis split over ``data``; the rest whole."""
    return NamedSharding(mesh, PartitionSpec(DATA, *([None] * (ndim - 1))))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place a host batch (a pytree of numpy arrays, leading axis = local batch) on the mesh.

    Each process passes only its own rows; the global batch is the concatenation over processes,
    so the same call serves one host and a multi-host pod.
    """

    def place(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        n_shards = mesh.shape[DATA] // jax.process_count()
        if x.ndim == 0 or x.shape[0] % max(n_shards, 1):
            raise ValueError(
                f"batch leading dimension {x.shape[:1]} is not divisible by the {n_shards} "
                f"local data shards of the mesh {dict(mesh.shape)}"
            )
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

    return jax.tree.map(place, batch)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """Shardings for a pytree of arrays or an ``nnx.State``, from the ``sharding`` metadata
    attached to parameters (``nnx.with_partitioning``); unannotated leaves are replicated."""

    def to_sharding(spec: PartitionSpec | None) -> NamedSharding:
        return NamedSharding(mesh, spec if isinstance(spec, PartitionSpec) else PartitionSpec())

    return jax.tree.map(
        to_sharding,
        nnx.get_partition_spec(state),
        is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None,
    )


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))
