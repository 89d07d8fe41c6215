"""Placing rows in the sharded database of ``jaxrank.search.topk`` (round robin over ``data``).

Row id ``i`` lives on device ``i % S`` at local row ``i // S``. Every device holds ``R`` rows,
a whole number of scan blocks. Writes, growth and reads run per device inside
``jax.shard_map``, so no device ever holds more than its own rows plus one chunk in flight.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrank.parallel import DATA
from jaxrank.search.topk import CHUNK, normalize_rows, row_bias


class Layout(NamedTuple):
    """``rows_per_shard`` local rows scanned in blocks of ``block`` rows."""

    shards: int
    rows_per_shard: int
    block: int

    @property
    def capacity(self) -> int:
        return self.shards * self.rows_per_shard


def plan_layout(rows: int, shards: int, block_rows: int) -> Layout:
    """The smallest layout holding ``rows`` rows with blocks of at most about ``block_rows``.

    Blocks are evened out so padding stays under one alignment unit per block, and aligned to
    ``CHUNK`` rows when they are wide enough for the exact block top-k's chunked path.
    """
    per_shard = max(1, math.ceil(rows / shards))
    n_blocks = math.ceil(per_shard / max(1, block_rows))
    block = math.ceil(per_shard / n_blocks)
    align = CHUNK if block >= 16 * CHUNK else 8
    block = -(-block // align) * align
    return Layout(shards, n_blocks * block, block)


def allocate(mesh: Mesh, layout: Layout, dim: int, dtype: str) -> tuple[jax.Array, jax.Array]:
    """Zero ``vectors [capacity, dim]`` and ``bias [capacity]``, created in place per device."""
    shardings = (NamedSharding(mesh, P(DATA, None)), NamedSharding(mesh, P(DATA)))
    make = jax.jit(
        lambda: (
            jnp.zeros((layout.capacity, dim), dtype),
            jnp.zeros((layout.capacity,), jnp.float32),
        ),
        out_shardings=shardings,
    )
    return make()


@partial(jax.jit, static_argnames=("mesh", "rows_per_shard"))
def grow(
    vectors: jax.Array, bias: jax.Array, *, mesh: Mesh, rows_per_shard: int
) -> tuple[jax.Array, jax.Array]:
    """Pad every device's rows to ``rows_per_shard``; round robin keeps each row in place."""

    def per_device(v, b):
        extra = rows_per_shard - v.shape[0]
        return jnp.pad(v, ((0, extra), (0, 0))), jnp.pad(b, (0, extra))

    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(DATA, None), P(DATA)),
        out_specs=(P(DATA, None), P(DATA)),
    )(vectors, bias)


@partial(jax.jit, static_argnames=("mesh", "metric", "normalize"), donate_argnums=(0, 1))
def write_rows(
    vectors: jax.Array,
    bias: jax.Array,
    rows: jax.Array,
    start: jax.Array,
    n: jax.Array,
    *,
    mesh: Mesh,
    metric: str,
    normalize: bool,
) -> tuple[jax.Array, jax.Array]:
    """Store the first ``n`` of ``rows [m, D]`` as ids ``start .. start+n-1`` (buffers donated).

    ``normalize`` makes them unit rows first (cosine); the rest of ``rows`` is ignored, so a
    padded chunk of a fixed size compiles once.
    """
    stored = (normalize_rows(rows) if normalize else rows).astype(vectors.dtype)
    stored_bias = row_bias(stored, metric)
    shards = mesh.shape[DATA]

    def per_device(v, b, stored, stored_bias, start, n):
        offset = jnp.arange(stored.shape[0], dtype=jnp.int32)
        ids = start + offset
        local = ids // shards
        mine = (ids % shards == lax.axis_index(DATA)) & (offset < n) & (local < v.shape[0])
        local = jnp.where(mine, local, v.shape[0])  # out of range: dropped
        return (
            v.at[local].set(stored, mode="drop"),
            b.at[local].set(stored_bias, mode="drop"),
        )

    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(DATA, None), P(DATA), P(), P(), P(), P()),
        out_specs=(P(DATA, None), P(DATA)),
    )(vectors, bias, stored, stored_bias, start, n)


_BITS = {4: jnp.int32, 2: jnp.int16}


@partial(jax.jit, static_argnames=("mesh", "n"))
def read_rows(vectors: jax.Array, start: jax.Array, *, mesh: Mesh, n: int) -> jax.Array:
    """Stored rows of ids ``start .. start+n-1`` (ids past the capacity read as zeros),
    replicated: each device contributes its own rows and a ``psum`` assembles them."""
    shards = mesh.shape[DATA]

    def per_device(v, start):
        ids = start + jnp.arange(n, dtype=jnp.int32)
        local = ids // shards
        mine = (ids % shards == lax.axis_index(DATA)) & (local < v.shape[0])
        picked = jnp.take(v, jnp.where(mine, local, 0), axis=0)
        # Sum the bit patterns: every other device adds integer zeros, so the bytes (even a
        # negative zero) come back exactly.
        bits = lax.bitcast_convert_type(picked, _BITS[v.dtype.itemsize]).astype(jnp.int32)
        bits = lax.psum(jnp.where(mine[:, None], bits, 0), DATA)
        return lax.bitcast_convert_type(bits.astype(_BITS[v.dtype.itemsize]), v.dtype)

    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(DATA, None), P()),
        out_specs=P(),
    )(vectors, start)


@jax.jit
def check_finite(rows: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Whether rows ``[:n]`` are finite with finite squared norms, and the first bad row."""
    x = rows.astype(jnp.float32)
    good = jnp.all(jnp.isfinite(x), axis=1) & jnp.isfinite(jnp.sum(x * x, axis=1))
    good = good | (jnp.arange(x.shape[0]) >= n)
    return jnp.all(good), jnp.argmin(good)
