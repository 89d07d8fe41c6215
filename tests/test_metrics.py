"""Ranking metrics: hand-worked cases, the tie rule, padding, and agreement with ranx."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrank import metrics
from jaxrank.parallel import make_mesh

LOG2_3 = np.log2(3.0)


def test_hand_worked_single_positive():
    # Scores [0.9, 0.2, 0.5, 0.1] rank the candidates 0, 2, 1, 3, so the ranks are [1, 3, 2, 4].
    # The positive (index 2) is at rank 2: RR 1/2, R@1 0, R@2 1, NDCG (1/log2 3) / 1.
    scores = jnp.array([[0.9, 0.2, 0.5, 0.1]])
    relevance = jnp.array([[0, 0, 1, 0]])
    np.testing.assert_array_equal(metrics.ranking_order(scores), [[0, 2, 1, 3]])
    np.testing.assert_array_equal(metrics.rank_of_candidates(scores), [[1, 3, 2, 4]])
    np.testing.assert_array_equal(metrics.first_positive_rank(scores, relevance), [2])
    np.testing.assert_allclose(metrics.reciprocal_rank(scores, relevance), [0.5])
    np.testing.assert_allclose(metrics.reciprocal_rank(scores, relevance, k=1), [0.0])
    np.testing.assert_allclose(metrics.recall_at_k(scores, relevance, 1), [0.0])
    np.testing.assert_allclose(metrics.recall_at_k(scores, relevance, 2), [1.0])
    np.testing.assert_allclose(metrics.ndcg(scores, relevance), [1 / LOG2_3], rtol=1e-6)
    np.testing.assert_allclose(metrics.ndcg(scores, relevance, k=1), [0.0])


def test_ties_rank_the_lower_index_first():
    # Scores [0.5, 0.7, 0.5, 0.7]: the two 0.7s come first, index 1 before 3, then 0 before 2.
    # Ranks [3, 1, 4, 2]; positives {2, 3}: the first is index 3 at rank 2.
    scores = jnp.array([[0.5, 0.7, 0.5, 0.7], [1.0, 1.0, 1.0, 1.0]])
    relevance = jnp.array([[0, 0, 1, 1], [0, 0, 1, 0]])
    np.testing.assert_array_equal(metrics.rank_of_candidates(scores), [[3, 1, 4, 2], [1, 2, 3, 4]])
    # All four scores equal: the positive at index 2 is rank 3.
    np.testing.assert_array_equal(metrics.first_positive_rank(scores, relevance), [2, 3])
    np.testing.assert_allclose(metrics.reciprocal_rank(scores, relevance), [1 / 2, 1 / 3])
    # The rule is the one of a stable descending argsort and of lax.top_k.
    order = metrics.ranking_order(scores)
    np.testing.assert_array_equal(order, np.argsort(-np.asarray(scores), axis=-1, kind="stable"))
    np.testing.assert_array_equal(order, jax.lax.top_k(scores, 4)[1])


def test_signed_zeros_tie_and_nan_ranks_last():
    scores = jnp.array([[-0.0, 0.0, jnp.nan, -1.0]])
    np.testing.assert_array_equal(metrics.ranking_order(scores), [[0, 1, 3, 2]])


def test_padding_is_never_ranked_ahead_nor_counted():
    # Candidate 1 is padding with the top score and a positive label: ignored. The real ones
    # rank 3 (0.8), 2 (0.3), 0 (0.1), then the padding: ranks [3, 4, 2, 1]. The only real
    # positive (index 2) is at rank 2: RR 1/2, fraction recall@1 0 and @2 1/1, NDCG 1/log2 3.
    scores = jnp.array([[0.1, 0.9, 0.3, 0.8]])
    relevance = jnp.array([[0, 1, 1, 0]])
    valid = jnp.array([[True, False, True, True]])
    np.testing.assert_array_equal(metrics.rank_of_candidates(scores, valid), [[3, 4, 2, 1]])
    np.testing.assert_array_equal(metrics.first_positive_rank(scores, relevance, valid), [2])
    np.testing.assert_allclose(metrics.reciprocal_rank(scores, relevance, valid=valid), [0.5])
    np.testing.assert_allclose(metrics.fraction_recall_at_k(scores, relevance, 1, valid), [0.0])
    np.testing.assert_allclose(metrics.fraction_recall_at_k(scores, relevance, 2, valid), [1.0])
    np.testing.assert_allclose(metrics.ndcg(scores, relevance, valid=valid), [1 / LOG2_3])
    # A real candidate scored -inf still ranks ahead of padding scored higher.
    order = metrics.ranking_order(jnp.array([[5.0, -jnp.inf]]), jnp.array([[False, True]]))
    np.testing.assert_array_equal(order, [[1, 0]])
    # With its only positive on padding, the query has none: rank K + 1 = 5.
    only_padding_relevant = jnp.array([[0, 1, 0, 0]])
    assert not metrics.has_positive(only_padding_relevant, valid)[0]
    rank = metrics.first_positive_rank(scores, only_padding_relevant, valid)
    np.testing.assert_array_equal(rank, [5])


def test_queries_without_a_positive():
    # Query 0: positive at rank 1. Query 1: positive at rank 3. Query 2: no positive.
    scores = jnp.array([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])
    relevance = jnp.array([[1, 0, 0], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(metrics.first_positive_rank(scores, relevance), [1, 3, 4])
    np.testing.assert_allclose(metrics.reciprocal_rank(scores, relevance), [1.0, 1 / 3, 0.0])
    np.testing.assert_allclose(metrics.ndcg(scores, relevance), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(metrics.recall_at_k(scores, relevance, 1), [1.0, 0.0, 0.0])
    # k beyond the pool: rank K + 1 (no positive) is a sentinel, never a hit.
    np.testing.assert_allclose(metrics.recall_at_k(scores, relevance, 5), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(metrics.fraction_recall_at_k(scores, relevance, 3), [1, 1, 0])
    np.testing.assert_array_equal(metrics.has_positive(relevance), [True, True, False])
    # R@1 averages over all three queries (1/3); CondR@1 only over the two with a positive (1/2).
    report = metrics.ranking_report(scores, relevance, ks=(1, 3))
    np.testing.assert_allclose(report["recall@1"], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(report["cond_recall@1"], 1 / 2)
    np.testing.assert_allclose(metrics.conditional_recall_at_k(scores, relevance, 1), 1 / 2)
    np.testing.assert_allclose(report["cond_recall@3"], 1.0)
    np.testing.assert_allclose(report["mrr"], (1 + 1 / 3) / 3, rtol=1e-6)
    np.testing.assert_allclose(report["ndcg"], 1.5 / 3, rtol=1e-6)
    assert int(report["num_with_positive"]) == 2


def test_graded_ndcg_by_hand():
    # Scores already in rank order; gains [1, 0, 3, 2]. Linear gains:
    #   DCG  = 1/log2 2 + 0 + 3/log2 4 + 2/log2 5 = 1 + 1.5 + 2/log2 5
    #   IDCG (gains 3, 2, 1, 0) = 3 + 2/log2 3 + 1/log2 4 = 3 + 2/log2 3 + 0.5
    #   @2: DCG = 1, IDCG = 3 + 2/log2 3.
    scores = jnp.array([[0.9, 0.8, 0.7, 0.6]])
    gains = jnp.array([[1, 0, 3, 2]])
    full = (1 + 1.5 + 2 / np.log2(5)) / (3 + 2 / LOG2_3 + 0.5)
    at_2 = 1 / (3 + 2 / LOG2_3)
    np.testing.assert_allclose(metrics.ndcg(scores, gains), [full], rtol=1e-6)
    np.testing.assert_allclose(metrics.ndcg(scores, gains, k=2), [at_2], rtol=1e-6)
    # Float gains behave the same; a cut-off beyond the pool is the whole pool.
    np.testing.assert_allclose(metrics.ndcg(scores, gains * 0.5, k=10), [full], rtol=1e-6)


def test_fraction_recall_with_positives_outside_the_pool():
    # Two positives in the pool at ranks 1 and 3; the query has 4 in the knowledge base.
    scores = jnp.array([[0.9, 0.5, 0.1]])
    relevance = jnp.array([[1, 0, 1]])
    np.testing.assert_allclose(metrics.fraction_recall_at_k(scores, relevance, 1), [0.5])
    out_of_4 = metrics.fraction_recall_at_k(scores, relevance, 3, num_relevant=jnp.array([4]))
    np.testing.assert_allclose(out_of_4, [0.5])


def test_top1_accuracy_breaks_ties_to_the_lower_class():
    logits = jnp.array([[1.0, 3.0, 2.0], [5.0, 5.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(metrics.top1_accuracy(logits, jnp.array([1, 1, 0])), [1, 0, 0])


def test_relevance_from_ids():
    retrieved = jnp.array([[7, 3, 9, -1], [-1, -1, 4, 2]])
    positives = jnp.array([[9, 7, -1], [2, -1, -1]])
    expected = [[True, False, True, False], [False, False, False, True]]
    np.testing.assert_array_equal(metrics.relevance_from_ids(retrieved, positives), expected)


def test_masked_mean_of_an_empty_mask_is_zero():
    values = jnp.array([3.0, jnp.nan, 1.0])
    assert float(metrics.masked_mean(values, jnp.zeros(3, bool))) == 0.0
    assert float(metrics.masked_mean(values, jnp.array([True, False, True]))) == 2.0


def test_cutoff_must_be_positive():
    with pytest.raises(ValueError, match="cut-off"):
        metrics.recall_at_k(jnp.zeros((1, 3)), jnp.zeros((1, 3)), 0)


# Agreement with ranx ------------------------------------------------------------------------

NUM_QUERIES, POOL = 50, 30
KS = (1, 5, 10)


def _random_pools(graded: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((NUM_QUERIES, POOL)).astype(np.float32)
    labels = rng.integers(0, 4, (NUM_QUERIES, POOL)) * (rng.random((NUM_QUERIES, POOL)) < 0.15)
    labels = labels if graded else (labels > 0).astype(np.int64)
    labels[:3] = 0  # some queries have no positive at all
    return scores, labels


def _ranx_per_query(scores: np.ndarray, labels: np.ndarray, names: list[str]):
    ranx = pytest.importorskip("ranx")
    query_ids = [f"q{i:02d}" for i in range(len(scores))]

    def as_dict(table, cast):
        return {
            q: {f"d{j}": cast(x) for j, x in enumerate(row)}
            for q, row in zip(query_ids, table, strict=True)
        }

    qrels, run = as_dict(labels, int), ranx.Run(as_dict(scores, float))
    ranx.evaluate(ranx.Qrels(qrels), run, names)
    return {name: np.array([run.scores[name][q] for q in query_ids]) for name in names}


@pytest.mark.parametrize("graded", [False, True], ids=["binary", "graded"])
def test_agrees_with_ranx(graded):
    scores, labels = _random_pools(graded)
    names = ["mrr", "ndcg"] + [f"{m}@{k}" for k in KS for m in ("ndcg", "recall", "hit_rate")]
    expected = _ranx_per_query(scores, labels, names)
    s, g = jnp.asarray(scores), jnp.asarray(labels)
    np.testing.assert_allclose(metrics.reciprocal_rank(s, g), expected["mrr"], atol=1e-5)
    np.testing.assert_allclose(metrics.ndcg(s, g), expected["ndcg"], atol=1e-5)
    for k in KS:
        np.testing.assert_allclose(metrics.ndcg(s, g, k=k), expected[f"ndcg@{k}"], atol=1e-5)
        fraction = metrics.fraction_recall_at_k(s, g, k)
        np.testing.assert_allclose(fraction, expected[f"recall@{k}"], atol=1e-5)
        hit = metrics.recall_at_k(s, g, k)
        np.testing.assert_allclose(hit, expected[f"hit_rate@{k}"], atol=1e-5)


# Transformations: jit, vmap, sharding -------------------------------------------------------


def _per_query_metrics(scores, relevance, valid):
    return {
        "rank": metrics.first_positive_rank(scores, relevance, valid),
        "ranks": metrics.rank_of_candidates(scores, valid),
        "rr": metrics.reciprocal_rank(scores, relevance, 5, valid),
        "ndcg": metrics.ndcg(scores, relevance, 5, valid),
        "hit": metrics.recall_at_k(scores, relevance, 3, valid),
        "fraction": metrics.fraction_recall_at_k(scores, relevance, 3, valid),
    }


def _padded_pools(batch: int = 16, pool: int = 12, seed: int = 1):
    rng = np.random.default_rng(seed)
    scores = jnp.asarray(rng.integers(0, 5, (batch, pool)), jnp.float32)  # many ties
    relevance = jnp.asarray(rng.integers(0, 3, (batch, pool)) * (rng.random((batch, pool)) < 0.3))
    valid = jnp.asarray(np.arange(pool) < rng.integers(1, pool + 1, (batch, 1)))
    return scores, relevance, valid


def _assert_trees_equal(actual, expected):
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6), actual, expected)


def test_jit_and_vmap_match_eager():
    scores, relevance, valid = _padded_pools()
    eager = _per_query_metrics(scores, relevance, valid)
    _assert_trees_equal(jax.jit(_per_query_metrics)(scores, relevance, valid), eager)
    # One query at a time ([K] inputs) and an extra leading batch axis ([2, B/2, K]).
    _assert_trees_equal(jax.vmap(_per_query_metrics)(scores, relevance, valid), eager)
    halves = jax.tree.map(lambda x: x.reshape(2, -1, *x.shape[1:]), (scores, relevance, valid))
    stacked = jax.vmap(_per_query_metrics)(*halves)
    _assert_trees_equal(jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), stacked), eager)
    report = partial(metrics.ranking_report, ks=(1, 5))
    _assert_trees_equal(jax.jit(report)(scores, relevance, valid), report(scores, relevance, valid))


def test_sharded_inputs_match_unsharded():
    mesh = make_mesh()
    rows = NamedSharding(mesh, P("data"))
    scores, relevance, valid = _padded_pools(batch=2 * mesh.shape["data"])
    sharded = jax.device_put((scores, relevance, valid), rows)
    assert not sharded[0].sharding.is_fully_replicated
    step = jax.jit(lambda *x: (_per_query_metrics(*x), metrics.ranking_report(*x)))
    _assert_trees_equal(step(*sharded), step(scores, relevance, valid))


def test_top_grade_positives_by_hand():
    """Released ``calculate_mrr``: relevant = label == max(labels), nothing when the max is 0;
    padding never counts (its label may be the largest)."""
    labels = jnp.array([[0.5, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.2, 3.0, 0.0]])
    valid = jnp.array([[True] * 4, [True] * 4, [True, True, False, True]])
    expected = [[False, True, True, False], [False] * 4, [True, False, False, False]]
    np.testing.assert_array_equal(metrics.positives(labels, valid, "top_grade"), expected)
    np.testing.assert_array_equal(metrics.positives(labels, valid, "any"), (labels > 0) & valid)
    with pytest.raises(ValueError, match="top_grade"):
        metrics.positives(labels, valid, "max")


def test_ranking_report_top_grade():
    """Scores rank candidates 0, 1, 2, 3; labels (.5, 1, 0, 0): "any" hits at 1, "top_grade"
    only at 2 (MRR 1/2); NDCG is the graded one in both."""
    scores, labels = jnp.array([[0.9, 0.8, 0.3, 0.1]]), jnp.array([[0.5, 1.0, 0.0, 0.0]])
    anyone = metrics.ranking_report(scores, labels, ks=(1, 2))
    top = metrics.ranking_report(scores, labels, ks=(1, 2), rule="top_grade")
    assert (float(anyone["mrr"]), float(top["mrr"])) == (1.0, 0.5)
    assert (float(top["recall@1"]), float(top["recall@2"])) == (0.0, 1.0)
    assert float(top["ndcg"]) == pytest.approx(float(anyone["ndcg"]))
