"""Top-k nearest neighbours over a database sharded by rows across the mesh's ``data`` axis.

Pure, jittable functions of arrays; ``jaxrank.search.index.Index`` is the stateful shell.

Layout. The database is ``vectors [S * R, D]`` (float32 or bfloat16) with ``bias [S * R]``
float32, split by rows over the ``S`` devices of the ``data`` axis, ``R`` rows per device. Row
id ``i`` lives on device ``i % S`` at local row ``i // S`` (round robin), so a partly filled
database keeps every device equally busy and growing it never moves a row to another device.
``bias`` is ``-||x||²`` for L2 and ``0`` for inner product and cosine, so one add turns a
product into a score. Rows past the database's ``count`` (padding, or rows not yet added) are
masked out of every block and never returned.

Scores. Inner product and cosine rank by ``q·x`` descending (cosine normalises the queries here
and the rows when they are stored). L2 ranks by ``2 q·x - ||x||²`` descending, which orders rows
exactly as the squared distance ``||q||² - 2 q·x + ||x||²`` ascending, and returns that squared
distance (clamped at 0), as faiss ``IndexFlatL2`` does. Products accumulate in float32 whatever
the storage dtype.

Tie rule. Equal scores rank the lower row id first — the order of ``lax.top_k`` and of a stable
sort. Each device scans its rows in increasing order and keeps the earlier of two equal
candidates; the merge across devices sorts on (score, row id), so the sharded result equals a
global ``lax.top_k`` over all rows.

Work per device: the local rows in blocks of ``block`` rows, so at most a ``[Q, block]`` score
matrix exists at a time; blocks past the last filled row are skipped.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxrank.parallel import DATA

METRICS = ("ip", "cosine", "l2")
MODES = ("exact", "approx")
NO_ROW = jnp.iinfo(jnp.int32).max  # id of an empty slot in a running top-k
CHUNK = 32  # columns per chunk in exact_block_topk (fastest of 8..256 on a 2-core CPU)


def _product(queries: jax.Array, rows: jax.Array) -> jax.Array:
    """``queries [Q, D] · rows [B, D]ᵀ`` in float32, without materialising a transpose."""
    return lax.dot_general(
        queries,
        rows.astype(jnp.float32),
        (((1,), (1,)), ((), ())),
        preferred_element_type=jnp.float32,
    )


def exact_block_topk(
    scores: jax.Array, k: int, valid: jax.Array | int | None = None
) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k`` of ``scores [Q, B]`` along B over the first ``valid`` columns (default
    all): the same values, positions and tie order.

    A top-k pass over a wide block, or even one masking pass, costs several percent of the
    matmul on CPU. Instead: take the maximum of each chunk of ``CHUNK`` columns (one
    vectorised pass), keep the k chunks with the largest maxima (ties to the lower chunk), and
    run top-k over those k * ``CHUNK`` columns only. Exact: a chunk holding one of the top k
    has fewer than k chunks ranked above it, since each of those holds an element ranked above
    that one. Chunks are visited in column order, so equal scores still resolve to the lower
    column.

    With ``valid``, columns from ``valid`` on may hold anything: chunks wholly before it compete
    on their maxima, the chunk it falls in is always taken (its maximum may come from a column
    past ``valid``), later chunks never, and the mask applies to the gathered columns only.
    """
    q, width = scores.shape
    n_chunks = width // CHUNK
    picks = k if valid is None else k + 1
    if width % CHUNK or n_chunks <= picks:
        if valid is not None:
            column = lax.broadcasted_iota(jnp.int32, (1, width), 1)
            scores = jnp.where(column < valid, scores, -jnp.inf)
        return lax.top_k(scores, k)
    chunks = scores.reshape(q, n_chunks, CHUNK)
    maxima = jnp.max(chunks, axis=-1)
    if valid is not None:
        chunk = lax.broadcasted_iota(jnp.int32, (1, n_chunks), 1)
        edge = valid // CHUNK
        maxima = jnp.where(chunk < edge, maxima, jnp.where(chunk == edge, jnp.inf, -jnp.inf))
    _, best = lax.top_k(maxima, picks)
    best = jnp.sort(best, axis=-1)
    candidates = jnp.take_along_axis(chunks, best[..., None], axis=1).reshape(q, -1)
    offset = lax.broadcasted_iota(jnp.int32, (1, picks * CHUNK), 1)
    columns = jnp.take_along_axis(best, offset // CHUNK, axis=1) * CHUNK + offset % CHUNK
    if valid is not None:
        candidates = jnp.where(columns < valid, candidates, -jnp.inf)
    values, at = lax.top_k(candidates, k)
    return values, jnp.take_along_axis(columns, at, axis=1)


def local_topk(
    queries: jax.Array,
    vectors: jax.Array,
    bias: jax.Array | None,
    n_valid: jax.Array,
    *,
    k: int,
    block: int,
    mode: str = "exact",
    recall_target: float = 0.95,
    global_rows: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Best ``k`` of ``queries · vectorsᵀ + bias`` over the first ``n_valid`` rows, best first.

    Scans ``block``-row slices with a running top-k; returns ``(scores [Q, k] float32, rows
    [Q, k] int32)``, with ``(-inf, NO_ROW)`` in slots the rows could not fill. ``bias=None``
    means zero. In exact mode the scores go from the matmul straight into
    ``exact_block_topk``, which masks rows past ``n_valid`` among its few candidates only.
    ``mode='approx'`` takes each block's candidates with ``lax.approx_max_k`` sized for
    ``global_rows`` rows in all, so its recall target holds for the whole database (XLA's CPU
    and GPU backends compute it exactly).
    """
    n_rows = vectors.shape[0]
    if n_rows % block:
        raise ValueError(f"block={block} must divide the {n_rows} local rows")
    per_block = min(k, block)
    n_queries = queries.shape[0]

    def step(b, carry):
        best, rows = carry
        start = b * block
        scores = _product(queries, lax.dynamic_slice_in_dim(vectors, start, block))
        if bias is not None:
            scores = scores + lax.dynamic_slice_in_dim(bias, start, block)[None, :]
        if mode == "exact":
            values, at = exact_block_topk(scores, per_block, n_valid - start)
        else:
            filled = lax.broadcasted_iota(jnp.int32, (1, block), 1) < n_valid - start
            values, at = lax.approx_max_k(
                jnp.where(filled, scores, -jnp.inf),
                per_block,
                recall_target=recall_target,
                reduction_input_size_override=global_rows or -1,
            )
        # Earlier blocks come first, so top_k's lower-position tie rule keeps lower row ids.
        merged = jnp.concatenate([best, values], axis=1)
        merged_rows = jnp.concatenate([rows, at.astype(jnp.int32) + start], axis=1)
        best, pick = lax.top_k(merged, k)
        return best, jnp.take_along_axis(merged_rows, pick, axis=1)

    init = (
        jnp.full((n_queries, k), -jnp.inf, jnp.float32),
        jnp.full((n_queries, k), NO_ROW, jnp.int32),
    )
    n_blocks = (jnp.clip(n_valid, 0, n_rows) + block - 1) // block
    return lax.fori_loop(0, n_blocks, step, init)


def merge_topk(scores: jax.Array, ids: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Best ``k`` of candidate lists ``[Q, M]`` by score descending, then id ascending."""
    _, ids, scores = lax.sort((-scores, ids, scores), dimension=1, num_keys=2)
    return scores[:, :k], ids[:, :k]


def prepare_queries(queries: jax.Array, metric: str) -> jax.Array:
    """Float32 queries in the form the scan multiplies: unit rows for cosine, ``2q`` for L2."""
    queries = queries.astype(jnp.float32)
    if metric == "cosine":
        return normalize_rows(queries)
    if metric == "l2":
        return 2.0 * queries
    return queries


def normalize_rows(x: jax.Array) -> jax.Array:
    """Unit rows in float32; an all-zero row stays zero (it scores 0 against everything)."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny)


def row_bias(stored: jax.Array, metric: str) -> jax.Array:
    """The ``bias`` entry of stored rows: ``-||x||²`` (of the stored values) for L2, else 0."""
    if metric == "l2":
        x = stored.astype(jnp.float32)
        return -jnp.sum(x * x, axis=-1)
    return jnp.zeros(stored.shape[:1], jnp.float32)


@partial(
    jax.jit,
    static_argnames=("mesh", "k", "metric", "block", "mode", "recall_target"),
)
def sharded_search(
    queries: jax.Array,
    vectors: jax.Array,
    bias: jax.Array,
    count: jax.Array,
    *,
    mesh: Mesh,
    k: int,
    metric: str,
    block: int,
    mode: str = "exact",
    recall_target: float = 0.95,
) -> tuple[jax.Array, jax.Array]:
    """Top ``k`` rows among the first ``count`` ids for each query.

    ``queries [Q, D]`` replicated; ``vectors [S*R, D]`` and ``bias [S*R]`` sharded by rows over
    ``data`` in the module's layout. Each device runs ``local_topk`` over its rows, the ``k``
    candidates of every device are gathered, and the merge keeps the global tie rule. Returns
    ``(scores [Q, k] float32, ids [Q, k] int32)`` replicated: scores descending for ``ip`` and
    ``cosine``, squared distances ascending for ``l2``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    shards = mesh.shape[DATA]
    global_rows = vectors.shape[0]
    prepared = prepare_queries(queries, metric)

    def per_device(q, local_vectors, local_bias, count):
        shard = lax.axis_index(DATA)
        n_valid = (count - shard + shards - 1) // shards  # ids i < count with i % S == shard
        scores, rows = local_topk(
            q,
            local_vectors,
            local_bias if metric == "l2" else None,  # zero for ip and cosine
            n_valid,
            k=k,
            block=block,
            mode=mode,
            recall_target=recall_target,
            global_rows=global_rows,
        )
        ids = jnp.where(rows == NO_ROW, NO_ROW, rows * shards + shard)
        scores = lax.all_gather(scores, DATA, axis=1, tiled=True)
        ids = lax.all_gather(ids, DATA, axis=1, tiled=True)
        return merge_topk(scores, ids, k)

    scores, ids = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P(DATA, None), P(DATA), P()),
        out_specs=(P(), P()),
        check_vma=False,
    )(prepared, vectors, bias, count)
    if metric == "l2":
        query_norms = jnp.sum(jnp.square(queries.astype(jnp.float32)), axis=-1, keepdims=True)
        scores = jnp.maximum(query_norms - scores, 0.0)
    return scores, ids
