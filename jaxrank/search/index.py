"""``Index``: a growable dense index sharded over the mesh, with external ids and files.

A thin stateful shell over ``jaxrank.search.topk`` (the search) and ``jaxrank.search.layout``
(where rows live): it owns the device arrays, the host-side int64 ids and the row count,
checks every request, and pads query batches to a few bucket sizes so that a new batch size
does not recompile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxrank.distributed import is_primary
from jaxrank.parallel import DATA, make_mesh, replicated
from jaxrank.search import layout, store
from jaxrank.search.errors import SearchError
from jaxrank.search.topk import METRICS, MODES, sharded_search

DTYPES = ("float32", "bfloat16")
QUERY_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024)
DEFAULT_BLOCK_ROWS = 16384
DEFAULT_CHUNK_ROWS = 16384
_POWERS_OF_TWO = tuple(2**i for i in range(3, 48))


class SearchResult(NamedTuple):
    """``scores [Q, k]`` float32 (ip and cosine: descending; l2: squared distance, ascending)
    and ``ids [Q, k]`` int64 (the external ids given when the rows were added)."""

    scores: np.ndarray
    ids: np.ndarray


class Database(NamedTuple):
    """The device arrays ``sharded_search`` takes, for use inside a caller's own jit."""

    vectors: jax.Array
    bias: jax.Array
    count: jax.Array


def _bucket(n: int, buckets: Iterable[int]) -> int:
    return next(b for b in buckets if b >= n)


def _host_float32(x: Any) -> Any:
    """Host rows of any other dtype as float32 (bfloat16 and device arrays pass through)."""
    if isinstance(x, np.ndarray) and x.dtype not in (np.float32, ml_dtypes.bfloat16):
        return x.astype(np.float32)
    return x


def _pad_rows(x: Any, size: int) -> Any:
    """Zero rows appended up to ``size`` (numpy stays on the host, jax stays on device)."""
    pad = size - x.shape[0]
    if not pad:
        return x
    xp = np if isinstance(x, np.ndarray) else jnp
    return xp.concatenate([x, xp.zeros((pad, *x.shape[1:]), x.dtype)])


def _repeat_last_row(batch: Any, size: int) -> Any:
    """Pad a host batch to ``size`` rows with copies of its last row: real inputs, so the
    encoder sees nothing unusual, and dropped after encoding."""
    return jax.tree.map(
        lambda x: np.concatenate([x, np.repeat(x[-1:], size - x.shape[0], axis=0)]), batch
    )


def _as_rows(x: Any, what: str) -> Any:
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
    if x.ndim != 2:
        raise SearchError(f"{what} must be a 2-D array [rows, dim], got shape {tuple(x.shape)}")
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise SearchError(f"{what} must be numeric, got dtype {x.dtype}")
    return x


class Index:
    """Dense vectors sharded by rows over the mesh's ``data`` axis, searched exactly or
    approximately by inner product (``ip``), ``cosine`` or squared ``l2`` distance.

    Rows get consecutive internal ids in the order added; ``ids`` maps them to the caller's
    int64 ids. ``dtype='bfloat16'`` halves the memory of the stored rows; scores are still
    accumulated in float32. Cosine rows are stored normalised.
    """

    def __init__(
        self,
        dim: int,
        metric: str = "ip",
        *,
        mesh: Mesh | None = None,
        dtype: str = "float32",
        capacity: int = 0,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ):
        if metric not in METRICS:
            raise SearchError(f"metric must be one of {METRICS}, got {metric!r}")
        if dtype not in DTYPES:
            raise SearchError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if dim < 1 or block_rows < 1 or chunk_rows < 1:
            raise SearchError(
                f"dim, block_rows and chunk_rows must be positive, got {dim}, {block_rows}, "
                f"{chunk_rows}"
            )
        self._dim, self._metric, self._dtype = int(dim), metric, dtype
        self._mesh = make_mesh() if mesh is None else mesh
        self._block_rows, self._chunk_rows = block_rows, chunk_rows
        self._layout = layout.plan_layout(capacity, self._mesh.shape[DATA], block_rows)
        self._vectors, self._bias = layout.allocate(self._mesh, self._layout, self._dim, dtype)
        self._ids = np.zeros(max(capacity, 1), np.int64)
        self._count = 0

    # ----------------------------------------------------------------- building
    @classmethod
    def from_array(
        cls, vectors: Any, ids: Any = None, *, metric: str = "ip", **options: Any
    ) -> Index:
        """An index of the rows of ``vectors [N, D]`` (numpy or jax), placed chunk by chunk.
        ``options`` are the constructor's keywords (mesh, dtype, block_rows, chunk_rows)."""
        vectors = _as_rows(vectors, "vectors")
        index = cls(vectors.shape[1], metric, capacity=vectors.shape[0], **options)
        index.add(vectors, ids)
        return index

    @classmethod
    def from_chunks(
        cls,
        chunks: Iterable[Any],
        *,
        dim: int | None = None,
        metric: str = "ip",
        capacity: int = 0,
        **options: Any,
    ) -> Index:
        """An index streamed from ``chunks``: arrays ``[n, D]`` or ``(array, ids)`` pairs.

        Only one chunk is in flight at a time. Give ``capacity`` (the total row count) when
        known, so the device arrays are allocated once instead of grown by doubling.
        """
        index = None if dim is None else cls(dim, metric, capacity=capacity, **options)
        for chunk in chunks:
            rows, ids = chunk if isinstance(chunk, tuple) else (chunk, None)
            rows = _as_rows(rows, "chunk")
            if index is None:
                index = cls(rows.shape[1], metric, capacity=capacity, **options)
            index.add(rows, ids)
        if index is None:
            raise SearchError("no chunks to build an index from, and no dim to make it empty")
        return index

    @classmethod
    def from_encoder(
        cls,
        encode: Callable[[Any], jax.Array],
        batches: Iterable[Any],
        *,
        metric: str = "ip",
        num_rows: int = 0,
        id_key: str | None = None,
        **options: Any,
    ) -> Index:
        """An index of ``encode(batch)`` over a dataset of batches, embedded and placed one
        batch at a time: neither the inputs nor the embeddings are ever all on the host.

        ``batches`` are pytrees of host arrays with a leading batch axis (a list, a generator,
        a grain dataset). A shorter last batch is padded to the first batch's size, so
        ``encode`` (typically jitted) compiles once; its padding rows are dropped. With
        ``id_key``, each batch is a mapping whose ``id_key`` entry holds the rows' int64 ids
        (it is removed before ``encode``). ``num_rows``, when known, sizes the index once.
        """
        index, size = None, None
        for batch in batches:
            ids = None
            if id_key is not None:
                if not isinstance(batch, Mapping) or id_key not in batch:
                    raise SearchError(f"every batch must be a mapping with an {id_key!r} entry")
                batch = dict(batch)
                ids = np.asarray(batch.pop(id_key))
            n = jax.tree.leaves(batch)[0].shape[0]
            size = n if size is None else size
            if n > size:
                raise SearchError(f"batch of {n} rows after batches of {size}: sizes must not grow")
            if n < size:
                batch = _repeat_last_row(batch, size)
            embeddings = _as_rows(encode(batch), "encode(batch)")
            if index is None:
                index = cls(embeddings.shape[1], metric, capacity=num_rows, **options)
            index._append(embeddings, ids, n)
        if index is None:
            raise SearchError("the dataset yielded no batches to index")
        return index

    def add(self, vectors: Any, ids: Any = None) -> None:
        """Append rows ``[n, D]`` with int64 ``ids`` (default: their internal ids). All or
        nothing: a bad row leaves the index as it was."""
        vectors = _as_rows(vectors, "vectors")
        self._append(vectors, ids, vectors.shape[0])

    def _append(self, vectors: Any, ids: Any, n: int) -> None:
        if vectors.shape[1] != self._dim:
            raise SearchError(
                f"vectors have dimension {vectors.shape[1]}, the index holds {self._dim}"
            )
        ids = self._checked_ids(ids, n)
        self._reserve(self._count + n)
        self._write(vectors, n, at=self._count, normalize=self._metric == "cosine")
        self._ids[self._count : self._count + n] = ids
        self._count += n

    def _checked_ids(self, ids: Any, n: int) -> np.ndarray:
        if ids is None:
            return np.arange(self._count, self._count + n, dtype=np.int64)
        ids = np.asarray(ids)
        if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
            raise SearchError(f"ids must be {n} integers, got {ids.dtype} of shape {ids.shape}")
        return ids.astype(np.int64)

    def _reserve(self, rows: int) -> None:
        if rows > self._layout.capacity:
            target = max(rows, 2 * self._layout.capacity)
            new = layout.plan_layout(target, self._layout.shards, self._block_rows)
            self._vectors, self._bias = layout.grow(
                self._vectors, self._bias, mesh=self._mesh, rows_per_shard=new.rows_per_shard
            )
            self._layout = new
        if rows > len(self._ids):
            grown = np.zeros(max(rows, 2 * len(self._ids)), np.int64)
            grown[: self._count] = self._ids[: self._count]
            self._ids = grown

    def _write(self, vectors: Any, n: int, *, at: int, normalize: bool) -> None:
        """Place rows ``[:n]`` as internal ids ``at, at+1, ...``, one chunk at a time (a
        short chunk is padded to a power of two, so few chunk sizes ever compile)."""
        for start in range(0, n, self._chunk_rows):
            rows = _host_float32(vectors[start : start + self._chunk_rows])
            valid = min(n - start, rows.shape[0])
            size = min(_bucket(rows.shape[0], _POWERS_OF_TWO), self._chunk_rows)
            chunk = jax.device_put(_pad_rows(rows, size), replicated(self._mesh))
            ok, bad = layout.check_finite(chunk, jnp.int32(valid))
            if not ok:
                raise SearchError(
                    f"vector {start + int(bad)} of the rows being added has NaN or inf values "
                    "(or a squared norm beyond float32); nothing was added"
                )
            self._vectors, self._bias = layout.write_rows(
                self._vectors,
                self._bias,
                chunk,
                jnp.int32(at + start),
                jnp.int32(valid),
                mesh=self._mesh,
                metric=self._metric,
                normalize=normalize,
            )

    # ------------------------------------------------------------------ search
    def search(
        self, queries: Any, k: int, *, mode: str = "exact", recall_target: float = 0.95
    ) -> SearchResult:
        """The ``k`` nearest rows of each query ``[Q, D]`` (or one query ``[D]``).

        Exact mode ranks equal scores by lower internal id (insertion order). Approximate mode
        (``lax.approx_max_k``) keeps an expected ``recall_target`` of the exact top-k on TPU;
        XLA computes it exactly on CPU and GPU.
        """
        if self._count == 0:
            raise SearchError("the index is empty: add vectors before searching")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise SearchError(f"k must be a positive integer, got {k!r}")
        if k > self._count:
            raise SearchError(f"k={k} is larger than the {self._count} vectors in the index")
        if mode not in MODES:
            raise SearchError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 < recall_target <= 1.0:
            raise SearchError(f"recall_target must be in (0, 1], got {recall_target}")
        if not isinstance(queries, jax.Array):
            queries = np.asarray(queries)
        queries = _as_rows(queries[None] if queries.ndim == 1 else queries, "queries")
        if queries.shape[1] != self._dim:
            raise SearchError(
                f"queries have dimension {queries.shape[1]}, but the index holds "
                f"{self._dim}-dimensional vectors"
            )
        xp = np if isinstance(queries, np.ndarray) else jnp
        row_ok = np.asarray(xp.isfinite(queries).all(axis=1))
        if not row_ok.all():
            raise SearchError(f"query {int(np.argmin(row_ok))} has NaN or inf values")
        scores, ids = [], []
        largest = QUERY_BUCKETS[-1]
        for start in range(0, queries.shape[0], largest):
            chunk = _host_float32(queries[start : start + largest])
            size = _bucket(chunk.shape[0], QUERY_BUCKETS)
            placed = jax.device_put(_pad_rows(chunk, size), replicated(self._mesh))
            s, i = sharded_search(
                placed,
                *self.database,
                mesh=self._mesh,
                k=int(k),
                metric=self._metric,
                block=self._layout.block,
                mode=mode,
                recall_target=float(recall_target),
            )
            s, i = jax.device_get((s, i))
            scores.append(s[: chunk.shape[0]])
            ids.append(self._ids[i[: chunk.shape[0]]])
        return SearchResult(np.concatenate(scores), np.concatenate(ids))

    # ------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the index to a safetensors file (atomically; see ``jaxrank.search.store``).
        In a multi-process run every process reads the rows (a collective), process 0 writes
        the file, and every process returns once it is there (so any may load it)."""
        meta = store.IndexMeta(
            self._dim, self._count, self._metric, self._dtype, self._metric == "cosine"
        )

        def chunks():
            for start in range(0, self._count, self._chunk_rows):
                rows = layout.read_rows(
                    self._vectors, jnp.int32(start), mesh=self._mesh, n=self._chunk_rows
                )
                yield np.asarray(rows)[: self._count - start]

        if is_primary():
            store.write_index(path, meta, self.ids, chunks())
        else:
            for _ in chunks():
                pass
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"jaxrank: saved {path}")

    @classmethod
    def load(cls, path: str | Path, *, metric: str | None = None, **options: Any) -> Index:
        """Read an index file onto the mesh, chunk by chunk, verifying its checksum; with
        ``metric``, refuse a file built with another metric. ``options``: ``mesh``,
        ``block_rows``, ``chunk_rows`` (dim, metric and dtype come from the file)."""
        with store.IndexReader(path, metric) as reader:
            meta = reader.meta
            index = cls(meta.dim, meta.metric, dtype=meta.dtype, capacity=meta.count, **options)
            ids = reader.ids()
            chunk_rows = index._chunk_rows
            for start, rows in zip(
                range(0, meta.count, chunk_rows), reader.chunks(chunk_rows), strict=True
            ):
                index._write(rows, rows.shape[0], at=start, normalize=False)
            index._ids[: meta.count] = ids
            index._count = meta.count
        return index

    # -------------------------------------------------------------- inspection
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def mesh(self) -> Mesh:
        return self._mesh

    @property
    def ids(self) -> np.ndarray:
        """The external id of every row, in internal-id order (a copy)."""
        return self._ids[: self._count].copy()

    @property
    def block(self) -> int:
        """Rows per scan block (what ``sharded_search`` takes as ``block``)."""
        return self._layout.block

    @property
    def database(self) -> Database:
        return Database(self._vectors, self._bias, jnp.int32(self._count))

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (
            f"Index(dim={self._dim}, metric={self._metric!r}, dtype={self._dtype!r}, "
            f"count={self._count}, shards={self._layout.shards}, block={self._layout.block})"
        )
