"""The first-stage search as the planner compiles it: ``topk.sharded_search`` over an abstract
index of a setting's size (nothing allocated), and the analytic model of what it holds per
device, so a 2M-page knowledge base or M-BEIR's 5.6M-candidate pool is planned like the
training step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrank.parallel import DATA, replicated
from jaxrank.search.index import DEFAULT_BLOCK_ROWS
from jaxrank.search.layout import plan_layout
from jaxrank.search.topk import CHUNK, sharded_search

FLOAT32 = 4


def index_tree(mesh: Mesh, rows: int, dim: int, dtype: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """The abstract index of ``rows`` vectors: ``vectors [R', dim]`` and ``bias [R']`` split
    by rows over ``data`` in ``search.layout``'s padded layout (``Index``'s own)."""
    layout = plan_layout(rows, mesh.shape[DATA], DEFAULT_BLOCK_ROWS)
    return {
        "vectors": jax.ShapeDtypeStruct(
            (layout.capacity, dim), jnp.dtype(dtype), sharding=NamedSharding(mesh, P(DATA, None))
        ),
        "bias": jax.ShapeDtypeStruct(
            (layout.capacity,), jnp.float32, sharding=NamedSharding(mesh, P(DATA))
        ),
    }


def _block(mesh: Mesh, index: dict[str, jax.ShapeDtypeStruct]) -> int:
    capacity = index["vectors"].shape[0]
    return plan_layout(capacity, mesh.shape[DATA], DEFAULT_BLOCK_ROWS).block


def search_blocks(mesh: Mesh, index: dict[str, jax.ShapeDtypeStruct]) -> int:
    """Blocks each device scans: the trips of the search's loop (``perf.step_time``)."""
    return index["vectors"].shape[0] // mesh.shape[DATA] // _block(mesh, index)


def search_program(
    mesh: Mesh, index: dict[str, jax.ShapeDtypeStruct], queries: int, k: int, metric: str = "ip"
) -> tuple[Callable, tuple[Any, ...]]:
    """Exact top ``k`` of ``queries`` replicated query rows over ``index``: the jitted search
    and its abstract arguments (queries, vectors, bias, count)."""
    dim = index["vectors"].shape[1]
    search = jax.jit(
        partial(
            sharded_search, mesh=mesh, k=k, metric=metric, block=_block(mesh, index), mode="exact"
        )
    )
    everywhere = replicated(mesh)
    args = (
        jax.ShapeDtypeStruct((queries, dim), jnp.float32, sharding=everywhere),
        index["vectors"],
        index["bias"],
        jax.ShapeDtypeStruct((), jnp.int32, sharding=everywhere),
    )
    return search, args


def search_temporaries(
    mesh: Mesh, index: dict[str, jax.ShapeDtypeStruct], queries: int, k: int
) -> dict[str, float]:
    """What a device holds while it scans, bytes: the prepared float32 queries, one block's
    float32 scores against them and the block's rows as the matmul reads them (a slice of the
    shard when it has several blocks), the chunk maxima and the gathered chunks' scores and
    positions of ``topk.exact_block_topk``, and the merge's sort of every device's k
    candidates (scores and ids gathered, the sort's keys and values: four ``[Q, S k]``)."""
    block = _block(mesh, index)
    vectors = index["vectors"]
    dim, itemsize = vectors.shape[1], vectors.dtype.itemsize
    several_blocks = vectors.shape[0] // mesh.shape[DATA] > block
    return {
        "queries": queries * dim * FLOAT32,
        "block_scores": queries * block * FLOAT32,
        "block_rows": block * dim * itemsize if several_blocks else 0,
        "chunk_maxima": queries * (block // CHUNK) * FLOAT32,
        "chunk_candidates": queries * min(k, block) * CHUNK * 2 * FLOAT32,
        "merge": 4 * queries * mesh.shape[DATA] * k * FLOAT32,
    }
