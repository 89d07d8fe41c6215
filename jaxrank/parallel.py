"""Device mesh, shardings and host-to-device batch placement.

Every jitted step in jaxrank takes and returns arrays laid out on one named mesh with axes
``data`` (batch and database rows) and ``model`` (split parameter dimensions). Axes are Auto so
that ``jax.jit`` propagates shardings; code that needs per-device logic uses ``jax.shard_map``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxrank.configs import ConfigError

DATA = "data"
MODEL = "model"


def mesh_shape(data: int, model: int, devices: int) -> tuple[int, int]:
    """The ``(data, model)`` shape a mesh request resolves to on ``devices`` devices
    (``data=-1``: every device not used by ``model``), or a ConfigError naming the key."""
    if not (isinstance(model, int) and model >= 1 and devices % model == 0):
        raise ConfigError(
            f"config key 'mesh.model' is {model!r}; expected a positive divisor of the "
            f"{devices} devices"
        )
    if data == -1:
        data = devices // model
    if not (isinstance(data, int) and data >= 1 and data * model == devices):
        raise ConfigError(
            f"config key 'mesh.data' is {data!r}: a data={data} x model={model} mesh needs "
            f"{data * model if isinstance(data, int) else '?'} devices, but {devices} are "
            "available; expected -1 (every device) or data x model = the device count"
        )
    return data, model


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, model)`` mesh; ``data=-1`` takes every device not used by ``model``."""
    devices = list(jax.devices() if devices is None else devices)
    data, model = mesh_shape(data, model, len(devices))
    grid = np.asarray(devices, dtype=object).reshape(data, model)
    return Mesh(grid, (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto))


def mesh_from_config(cfg: Mapping[str, Any]) -> Mesh:
    """Build the mesh named by a config's ``mesh`` block (``data``, ``model``)."""
    return make_mesh(data=int(cfg.get("data", -1)), model=int(cfg.get("model", 1)))


def resolve_mesh(cfg: ml_collections.ConfigDict) -> None:
    """Write the resolved shape into the config's ``mesh`` block (``data=-1`` becomes the
    device count), so a run folder's ``config.json`` records the mesh the run was trained on
    and a resume on another device count differs from it."""
    if "mesh" not in cfg:
        return
    data, model = mesh_shape(cfg.mesh.get("data", -1), cfg.mesh.get("model", 1), jax.device_count())
    with cfg.mesh.unlocked():
        cfg.mesh.data, cfg.mesh.model = data, model


def require_divisible_batches(cfg: Mapping[str, Any], sections: Sequence[str], mesh: Mesh) -> None:
    """Each section's ``batch_size`` must split evenly over the mesh's ``data`` axis (a GRPO
    group and a contrastive batch are laid out row-wise over it)."""
    check_divisible_batches(cfg, sections, mesh.shape[DATA])


def check_divisible_batches(cfg: Mapping[str, Any], sections: Sequence[str], data: int) -> None:
    """``require_divisible_batches`` for a data axis of ``data`` devices, before any mesh."""
    for section in sections:
        if section in cfg and cfg[section].batch_size % data:
            raise ConfigError(
                f"config key '{section}.batch_size' is {cfg[section].batch_size}; expected a "
                f"multiple of the {data} devices of the mesh's data axis"
            )


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


def shard_whole_batch(batch: Any, mesh: Mesh) -> Any:
    """Place a host batch that every process holds whole (an evaluation chunk), split over
    ``data`` like ``shard_batch``: each process copies only the rows of its own devices."""

    def place(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % mesh.shape[DATA]:
            raise ValueError(
                f"batch leading dimension {x.shape[:1]} is not divisible by the "
                f"{mesh.shape[DATA]} data shards of the mesh {dict(mesh.shape)}"
            )
        return jax.make_array_from_callback(x.shape, batch_sharding(mesh, x.ndim), x.__getitem__)

    return jax.tree.map(place, batch)


def to_host(tree: Any) -> Any:
    """Every leaf's whole value as numpy, on every process. A leaf split over several hosts'
    devices is gathered first (a collective: every process must call this alike), since
    ``jax.device_get`` only reads what this process's devices hold."""

    def fetch(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(jax.device_get(x))

    return jax.tree.map(fetch, tree)


def state_shardings(state: Any, mesh: Mesh, *, fsdp: bool = False) -> Any:
    """Shardings for a pytree of arrays or an ``nnx.State``, from the ``sharding`` metadata
    attached to parameters (``nnx.with_partitioning``); unannotated leaves are replicated.
    ``fsdp`` also splits every parameter over ``data`` (see ``fully_sharded``)."""

    def to_sharding(spec: PartitionSpec | None, shape: tuple[int, ...]) -> NamedSharding:
        spec = spec if isinstance(spec, PartitionSpec) else PartitionSpec()
        if fsdp:
            spec = fully_sharded(spec, shape, mesh.shape[DATA])
        return NamedSharding(mesh, spec)

    return jax.tree.map(
        lambda spec, leaf: to_sharding(spec, np.shape(leaf)),
        nnx.get_partition_spec(state),
        state,
        is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None,
    )


def fully_sharded(spec: PartitionSpec, shape: tuple[int, ...], shards: int) -> PartitionSpec:
    """``spec`` plus the ``data`` axis on the largest dimension it leaves whole and ``shards``
    divides (fully-sharded data parallel: each data-parallel device holds 1/shards of the
    parameter and its optimizer state; XLA gathers it where it is used). Unchanged when no
    dimension qualifies (small vectors stay replicated)."""
    axes = list(spec) + [None] * (len(shape) - len(spec))
    free = [d for d in range(len(shape)) if axes[d] is None and shape[d] % shards == 0]
    if shards == 1 or not free:
        return spec
    axes[max(free, key=lambda d: shape[d])] = DATA
    return PartitionSpec(*axes)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))
