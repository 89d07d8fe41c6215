"""Sharded top-k search against numpy brute force and faiss, on 1, 2 and 8 devices."""

import faiss
import jax
import ml_dtypes
import numpy as np
import pytest
from jax import lax

from jaxrank.parallel import make_mesh, replicated
from jaxrank.search import Index, SearchError, exact_block_topk, sharded_search
from jaxrank.search.topk import CHUNK

N, D, Q, K = 203, 16, 13, 7  # N divisible by no device count above 1; Q pads to a bucket
BLOCK = 16  # several blocks per device, so the running top-k is exercised


def mesh_of(n):
    return make_mesh(n, 1, jax.devices()[:n])


def data(seed=0, n=N, d=D, q=Q):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, d)).astype(np.float32),
        rng.standard_normal((q, d)).astype(np.float32),
    )


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(x, q, k, metric):
    """numpy reference under the tie rule: best score first, then lower id (stable sort)."""
    x, q = x.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        x, q = unit(x), unit(q)
    if metric == "l2":
        dist = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, 1), order
    scores = q @ x.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def faiss_search(x, q, k, metric):
    if metric == "l2":
        index = faiss.IndexFlatL2(x.shape[1])
    else:
        index = faiss.IndexFlatIP(x.shape[1])
        if metric == "cosine":
            x, q = unit(x), unit(q)
    index.add(np.ascontiguousarray(x, np.float32))
    return index.search(np.ascontiguousarray(q, np.float32), k)


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("devices", [1, 2, 8])
def test_matches_numpy_and_faiss(devices, metric):
    x, q = data()
    index = Index.from_array(x, metric=metric, mesh=mesh_of(devices), block_rows=BLOCK)
    result = index.search(q, K)
    ref_scores, ref_ids = brute_force(x, q, K, metric)
    faiss_scores, faiss_ids = faiss_search(x, q, K, metric)
    np.testing.assert_array_equal(result.ids, ref_ids)
    np.testing.assert_array_equal(result.ids, faiss_ids)
    np.testing.assert_allclose(result.scores, ref_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.scores, faiss_scores, rtol=1e-5, atol=1e-5)
    assert result.ids.dtype == np.int64 and result.scores.dtype == np.float32


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("devices", [1, 2, 8])
def test_equal_scores_rank_the_lower_id_first_across_devices(devices, metric):
    # Small integers: every product is exact, so many rows tie and some tie with a row on
    # another device; the two identical halves put a twin of every row on every device.
    rng = np.random.default_rng(1)
    half = rng.integers(-1, 2, (101, 4)).astype(np.float32)
    x = np.concatenate([half, half, half[:1]])
    q = rng.integers(-1, 2, (Q, 4)).astype(np.float32)
    index = Index.from_array(x, metric=metric, mesh=mesh_of(devices), block_rows=BLOCK)
    result = index.search(q, 12)
    ref_scores, ref_ids = brute_force(x, q, 12, metric)
    np.testing.assert_array_equal(result.ids, ref_ids)
    np.testing.assert_array_equal(result.scores, ref_scores)


@pytest.mark.parametrize("devices", [1, 2, 8])
def test_chunked_block_top_k_with_ties_and_a_partial_last_block(devices):
    # Blocks of over 1000 rows in chunks of 32, so the chunk path of exact_block_topk runs, and
    # every device's last block is partly filled; small integers make ties everywhere.
    rng = np.random.default_rng(11)
    x = rng.integers(-2, 3, (20_000, 4)).astype(np.float32)
    q = rng.integers(-2, 3, (Q, 4)).astype(np.float32)
    index = Index.from_array(x, mesh=mesh_of(devices), block_rows=2048)
    assert index.block % CHUNK == 0 and index.block // CHUNK > K + 1
    result = index.search(q, K)
    ref_scores, ref_ids = brute_force(x, q, K, "ip")
    np.testing.assert_array_equal(result.ids, ref_ids)
    np.testing.assert_array_equal(result.scores, ref_scores)


def test_identical_rows_come_back_in_id_order():
    x = np.ones((40, 4), np.float32)
    index = Index.from_array(x, mesh=mesh_of(8), block_rows=8)
    np.testing.assert_array_equal(index.search(np.ones((2, 4)), 10).ids, [range(10)] * 2)


@pytest.mark.parametrize("valid", [None, 12 * CHUNK, 5 * CHUNK, 5 * CHUNK + 17, 13])
@pytest.mark.parametrize("k", [1, 5, 11, 13])
def test_exact_block_topk_equals_lax_top_k(k, valid):
    # 12 chunks, ties everywhere; k >= 11 takes the plain top_k path. Columns
    # from `valid` on hold the largest values, so a mask applied too late would show.
    scores = np.random.default_rng(2).integers(0, 6, (9, 12 * CHUNK)).astype(np.float32)
    if valid is not None:
        scores[:, valid:] = 100.0
    values, columns = exact_block_topk_jit(scores, k, valid)
    masked = scores if valid is None else np.where(np.arange(12 * CHUNK) < valid, scores, -np.inf)
    ref_values, ref_columns = lax.top_k(masked, k)
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_array_equal(columns, ref_columns)


exact_block_topk_jit = jax.jit(exact_block_topk, static_argnums=1)


@pytest.mark.parametrize("devices", [1, 8])
def test_k_larger_than_a_block_and_than_a_device_rows(devices):
    x, q = data(3, n=20)  # 8 devices: 2 or 3 rows each
    index = Index.from_array(x, mesh=mesh_of(devices), block_rows=8)
    result = index.search(q, 17)
    np.testing.assert_array_equal(result.ids, brute_force(x, q, 17, "ip")[1])


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_padding_rows_are_never_returned(metric):
    # Zero padding rows would beat every real row: real rows point away from the queries (ip)
    # or lie far from them (l2), while the queries sit near the origin's padding.
    rng = np.random.default_rng(4)
    x = -np.abs(rng.standard_normal((9, D))).astype(np.float32) - 3.0
    q = np.abs(rng.standard_normal((Q, D))).astype(np.float32) * 0.1
    index = Index.from_array(x, metric=metric, mesh=mesh_of(8), block_rows=8)
    result = index.search(q, 9)
    np.testing.assert_array_equal(np.sort(result.ids, axis=1), [range(9)] * Q)
    np.testing.assert_array_equal(result.ids, brute_force(x, q, 9, metric)[1])


def test_approximate_mode_meets_its_recall_target():
    x, q = data(5, n=3000, d=32, q=64)
    index = Index.from_array(x, mesh=mesh_of(2), block_rows=512)
    exact = index.search(q, 10).ids
    approx = index.search(q, 10, mode="approx", recall_target=0.9).ids
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.9


def test_bfloat16_storage_scores_in_float32():
    x, q = data(6)
    index = Index.from_array(x, mesh=mesh_of(2), dtype="bfloat16", block_rows=BLOCK)
    assert index.database.vectors.dtype == ml_dtypes.bfloat16
    stored = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    result = index.search(q, K)
    ref_scores, ref_ids = brute_force(stored, q, K, "ip")
    np.testing.assert_array_equal(result.ids, ref_ids)
    np.testing.assert_allclose(result.scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_query_batches_share_buckets_and_large_batches_are_chunked():
    x, q = data(7, q=1500)
    index = Index.from_array(x, mesh=mesh_of(2), block_rows=BLOCK)
    index.search(q[:3], K)
    compiled = sharded_search._cache_size()
    np.testing.assert_array_equal(index.search(q[:5], K).ids, brute_force(x, q[:5], K, "ip")[1])
    assert sharded_search._cache_size() == compiled  # 3 and 5 queries share the bucket of 8
    np.testing.assert_array_equal(index.search(q, K).ids, brute_force(x, q, K, "ip")[1])


def test_sharded_search_inside_a_callers_jit():
    x, q = data(8)
    mesh = mesh_of(8)
    index = Index.from_array(x, metric="l2", mesh=mesh, block_rows=BLOCK)
    queries = jax.device_put(np.pad(q, ((0, 16 - Q), (0, 0))), replicated(mesh))
    step = jax.jit(
        lambda q, db: sharded_search(q, *db, mesh=mesh, k=K, metric="l2", block=index.block)
    )
    scores, ids = step(queries, index.database)
    ref_scores, ref_ids = brute_force(x, q, K, "l2")
    np.testing.assert_array_equal(ids[:Q], ref_ids)
    np.testing.assert_allclose(scores[:Q], ref_scores, rtol=1e-5, atol=1e-5)


def test_request_errors_are_clear():
    x, q = data(9, n=20)
    empty = Index(D, mesh=mesh_of(2))
    with pytest.raises(SearchError, match="index is empty"):
        empty.search(q, 1)
    index = Index.from_array(x, mesh=mesh_of(2))
    with pytest.raises(SearchError, match=r"k=21 is larger than the 20 vectors"):
        index.search(q, 21)
    with pytest.raises(SearchError, match="k must be a positive integer"):
        index.search(q, 0)
    with pytest.raises(SearchError, match=r"queries have dimension 15, but the index holds 16"):
        index.search(q[:, :15], 3)
    bad = q.copy()
    bad[4, 2] = np.nan
    with pytest.raises(SearchError, match="query 4 has NaN or inf"):
        index.search(bad, 3)
    bad[4, 2] = np.inf
    with pytest.raises(SearchError, match="query 4 has NaN or inf"):
        index.search(jax.numpy.asarray(bad), 3)
    with pytest.raises(SearchError, match="mode must be one of"):
        index.search(q, 3, mode="fast")
    with pytest.raises(SearchError, match="metric must be one of"):
        Index(D, "dot")


def test_a_bad_vector_is_refused_and_leaves_the_index_as_it_was():
    x, q = data(10, n=20)
    index = Index.from_array(x, mesh=mesh_of(2), block_rows=8)
    before = index.search(q, 5)
    bad = np.ones((6, D), np.float32)
    bad[3, 0] = np.inf
    with pytest.raises(SearchError, match="vector 3 of the rows being added has NaN or inf"):
        index.add(bad)
    with pytest.raises(SearchError, match="vectors have dimension 3, the index holds 16"):
        index.add(np.ones((2, 3)))
    assert len(index) == 20
    after = index.search(q, 5)
    np.testing.assert_array_equal(after.ids, before.ids)
