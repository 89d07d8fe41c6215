"""The knowledge base's embeddings on the mesh, and the rows of the step's candidate pools.

``kb_layout`` (a config key) says how the ``[N, D]`` embeddings sit on the devices:

- ``"replicated"``: every device holds all N rows and a pool is ``kb[pool_ids]``. E-VQA's 2M
  rows of 768 float32 are 5.7 GiB on every chip;
- ``"sharded"``: the rows are split in contiguous blocks over every device of the mesh
  (``data`` x ``model``), 1/devices of them each. A pool is gathered in ``jax.shard_map``:
  every device gathers the batch's pool ids (B x K int32), takes the rows it owns, and a
  ``psum_scatter`` over ``data`` (then a ``psum`` over ``model``) hands each data shard its
  queries' ``[B/data, K, D]`` rows: about B x K x D floats on the wire, none of the table.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrank import parallel
from jaxrank.configs import ConfigError

LAYOUTS = ("replicated", "sharded")
ROW_AXES = (parallel.DATA, parallel.MODEL)


def kb_layout(cfg: ml_collections.ConfigDict) -> str:
    """The config's ``kb_layout`` (default ``"replicated"``), checked."""
    layout = cfg.get("kb_layout", "replicated")
    if layout not in LAYOUTS:
        raise ConfigError(f"kb_layout={layout!r}: expected one of {list(LAYOUTS)}")
    return layout


def kb_sharding(mesh: Mesh, layout: str) -> NamedSharding:
    spec = P(ROW_AXES, None) if layout == "sharded" else P()
    return NamedSharding(mesh, spec)


def padded_rows(rows: int, mesh: Mesh, layout: str) -> int:
    """Rows the placed table has: ``rows`` rounded up to a multiple of the mesh's devices when
    sharded (the padding rows are zeros no pool id names)."""
    if layout != "sharded":
        return rows
    return math.ceil(rows / mesh.size) * mesh.size


def place_kb(kb: np.ndarray, mesh: Mesh, layout: str) -> jax.Array:
    """``kb [N, D]`` on ``mesh`` as ``layout`` says."""
    extra = padded_rows(len(kb), mesh, layout) - len(kb)
    table = np.pad(kb, ((0, extra), (0, 0))) if extra else kb
    return jax.device_put(table, kb_sharding(mesh, layout))


def pool_rows(kb: jax.Array, pool_ids: jax.Array, layout: str) -> jax.Array:
    """``kb[pool_ids]``: ``[B, K, D]`` split over ``data`` like ``pool_ids [B, K]``. A sharded
    table is read on the mesh ``jax.set_mesh`` names."""
    if layout != "sharded":
        return kb[pool_ids]

    def per_device(block, ids):
        ids = lax.all_gather(ids, parallel.DATA, tiled=True)  # [B, K]: every query's pool
        local = ids - lax.axis_index(ROW_AXES) * block.shape[0]
        mine = (local >= 0) & (local < block.shape[0])
        picked = jnp.where(mine[..., None], block[jnp.where(mine, local, 0)], 0)
        picked = lax.psum_scatter(picked, parallel.DATA, scatter_dimension=0, tiled=True)
        return lax.psum(picked, parallel.MODEL)

    return jax.shard_map(
        per_device,
        in_specs=(P(ROW_AXES, None), P(parallel.DATA, None)),
        out_specs=P(parallel.DATA, None, None),
    )(kb, pool_ids)
