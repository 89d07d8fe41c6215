"""Ranking metrics over fixed-width candidate pools, batched and jittable.

Every metric takes ``scores [..., K]`` (higher is better), ``relevance [..., K]`` (bool, or graded
labels where a value > 0 means relevant) and an optional ``valid [..., K]`` mask, and returns one
float32 value per query so that callers can average under their own masks (``masked_mean``).
Cut-offs ``k`` are static Python ints.

Tie rule: candidates are ranked by a stable descending sort of the scores, so among equal scores
the candidate with the lower index ranks first (the order of ``jax.lax.top_k`` and of
``np.argsort(-scores, kind="stable")``). ``0.0`` and ``-0.0`` tie; NaN scores rank after every
number. Padding (``valid == False``) ranks after every real candidate and never counts as
relevant.

Conventions: ``recall_at_k`` is the hit rate used by the E-VQA, InfoSeek and M-BEIR papers (1 if
any relevant candidate is in the top k); ``fraction_recall_at_k`` is the textbook recall that
ranx and trec_eval call ``recall``. ``ndcg`` uses graded labels linearly, gain / log2(rank + 1),
which is ranx's ``ndcg`` (Järvelin & Kekäläinen), not ``ndcg_burges`` (2^gain - 1). Any label
> 0 is relevant; ranx's default keeps only labels >= 1, so fractional grades below 1 differ.

Graded pools: ``positives(labels, valid, "top_grade")`` keeps only the labels equal to the pool's
highest, the rule of Region-R1's released ``calculate_mrr`` (``src/utils.py``); ``"any"`` is the
> 0 rule above (UniIR's ``load_qrel``, EchoSight's entity match). ``ranking_report`` takes either.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def _valid_or_all(relevance: jax.Array, valid: jax.Array | None) -> jax.Array:
    return jnp.ones(jnp.shape(relevance), bool) if valid is None else jnp.asarray(valid, bool)


def _is_relevant(relevance: jax.Array, valid: jax.Array | None) -> jax.Array:
    return (jnp.asarray(relevance) > 0) & _valid_or_all(relevance, valid)


POSITIVES = ("any", "top_grade")


def positives(labels: jax.Array, valid: jax.Array | None = None, rule: str = "any") -> jax.Array:
    """The relevant candidates of graded ``labels [..., K]``: ``"any"`` label > 0;
    ``"top_grade"`` label == the highest label among the real candidates, when that is > 0.
    Boolean ``[..., K]``, padding never relevant."""
    labels = jnp.asarray(labels)
    real = _valid_or_all(labels, valid)
    if rule == "any":
        return (labels > 0) & real
    if rule == "top_grade":
        top = jnp.where(real, labels, -jnp.inf).max(axis=-1, keepdims=True)
        return (labels == top) & (top > 0) & real
    raise ValueError(f"positives rule must be one of {POSITIVES}, got {rule!r}")


def _check_cutoff(k: int | None) -> None:
    if k is not None and k < 1:
        raise ValueError(f"cut-off k must be a positive int or None, got {k}")


def ranking_order(scores: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Candidate indices best first, ``[..., K]`` int32, under the module's tie rule."""
    scores = jnp.asarray(scores)
    descending = -scores.astype(jnp.promote_types(scores.dtype, jnp.float32))
    is_padding = ~_valid_or_all(scores, valid)
    index = lax.broadcasted_iota(jnp.int32, scores.shape, scores.ndim - 1)
    # The index is the last key, so ties resolve to the lower index whatever the sort's stability.
    *_, order = lax.sort((is_padding, descending, index), dimension=scores.ndim - 1, num_keys=3)
    return order


def _in_rank_order(values: jax.Array, order: jax.Array) -> jax.Array:
    return jnp.take_along_axis(values, order, axis=-1)


def rank_of_candidates(scores: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """1-based rank of every candidate, ``[..., K]`` int32; padding takes the last ranks."""
    order = ranking_order(scores, valid)
    return jnp.argsort(order, axis=-1).astype(jnp.int32) + 1


def first_positive_rank(
    scores: jax.Array, relevance: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """1-based rank of the best-ranked relevant candidate, ``K + 1`` when there is none.

    ``K + 1`` (the pool width, padding included) keeps ln(rank + 1) finite for Region-R1's dRank.
    """
    hits = _in_rank_order(_is_relevant(relevance, valid), ranking_order(scores, valid))
    width = hits.shape[-1]
    first = jnp.argmax(hits, axis=-1).astype(jnp.int32) + 1
    return jnp.where(hits.any(axis=-1), first, jnp.int32(width + 1))


def recall_at_k(
    scores: jax.Array, relevance: jax.Array, k: int, valid: jax.Array | None = None
) -> jax.Array:
    """Hit rate: 1 if any relevant candidate is among the top ``k``, else 0 (also when ``k``
    exceeds the pool and there is no relevant candidate: ``first_positive_rank``'s K + 1 is a
    sentinel, not a rank)."""
    _check_cutoff(k)
    rank = first_positive_rank(scores, relevance, valid)
    return ((rank <= k) & has_positive(relevance, valid)).astype(jnp.float32)


def fraction_recall_at_k(
    scores: jax.Array,
    relevance: jax.Array,
    k: int,
    valid: jax.Array | None = None,
    num_relevant: jax.Array | None = None,
) -> jax.Array:
    """Relevant candidates in the top ``k`` over all relevant ones (0 when there are none).

    ``num_relevant [...]`` overrides the denominator when some positives never reached the pool
    (first-stage retrieval from a knowledge base); by default it counts the pool's positives.
    """
    _check_cutoff(k)
    relevant = _is_relevant(relevance, valid)
    hits = _in_rank_order(relevant, ranking_order(scores, valid))[..., :k]
    found = hits.sum(axis=-1, dtype=jnp.float32)
    total = relevant.sum(axis=-1, dtype=jnp.float32) if num_relevant is None else num_relevant
    total = jnp.asarray(total, jnp.float32)
    return jnp.where(total > 0, found / jnp.maximum(total, 1.0), 0.0)


def reciprocal_rank(
    scores: jax.Array,
    relevance: jax.Array,
    k: int | None = None,
    valid: jax.Array | None = None,
) -> jax.Array:
    """1 / rank of the first relevant candidate; 0 when there is none (in the top ``k``)."""
    _check_cutoff(k)
    rank = first_positive_rank(scores, relevance, valid)
    width = jnp.shape(relevance)[-1]
    cutoff = width if k is None else min(k, width)
    return jnp.where(rank <= cutoff, 1.0 / rank.astype(jnp.float32), 0.0)


def ndcg(
    scores: jax.Array,
    gains: jax.Array,
    k: int | None = None,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Normalised DCG with linear gains, sum gain_i / log2(i + 1) over 1-based ranks i <= k.

    0 when the pool holds no relevant candidate (ranx's convention).
    """
    _check_cutoff(k)
    gains = jnp.where(_is_relevant(gains, valid), jnp.asarray(gains, jnp.float32), 0.0)
    width = gains.shape[-1]
    cutoff = width if k is None else min(k, width)
    ranked = _in_rank_order(gains, ranking_order(scores, valid))[..., :cutoff]
    ideal = -jnp.sort(-gains, axis=-1)[..., :cutoff]
    discount = 1.0 / jnp.log2(jnp.arange(2, cutoff + 2, dtype=jnp.float32))
    dcg = (ranked * discount).sum(axis=-1)
    ideal_dcg = (ideal * discount).sum(axis=-1)
    return jnp.where(ideal_dcg > 0, dcg / jnp.where(ideal_dcg > 0, ideal_dcg, 1.0), 0.0)


def top1_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1 where the arg-max class (lowest index among ties) is the label, per example."""
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def has_positive(relevance: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Whether the query's pool holds a relevant (real) candidate, ``[...]`` bool."""
    return _is_relevant(relevance, valid).any(axis=-1)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` where ``mask``; 0 (not NaN) when the mask is empty."""
    mask = jnp.asarray(mask, bool)
    total = jnp.where(mask, jnp.asarray(values, jnp.float32), 0.0).sum()
    count = mask.sum(dtype=jnp.float32)
    return total / jnp.maximum(count, 1.0)


def conditional_recall_at_k(
    scores: jax.Array, relevance: jax.Array, k: int, valid: jax.Array | None = None
) -> jax.Array:
    """CondR@k: the hit rate over only the queries whose pool holds a positive (a scalar).

    It isolates re-ranking quality from first-stage misses (Region-R1, PAPERS.md §1).
    """
    hit = recall_at_k(scores, relevance, k, valid)
    return masked_mean(hit, has_positive(relevance, valid))


def relevance_from_ids(
    retrieved_ids: jax.Array, positive_ids: jax.Array, pad_id: int = -1
) -> jax.Array:
    """Label a search result ``[..., K]`` by membership in the query's positives ``[..., P]``.

    Entries equal to ``pad_id`` on either side never match.
    """
    retrieved_ids = jnp.asarray(retrieved_ids)
    positive_ids = jnp.asarray(positive_ids)
    same = retrieved_ids[..., :, None] == positive_ids[..., None, :]
    same &= (positive_ids != pad_id)[..., None, :]
    return same.any(axis=-1) & (retrieved_ids != pad_id)


def ranking_report(
    scores: jax.Array,
    relevance: jax.Array,
    valid: jax.Array | None = None,
    ks: Sequence[int] = (1, 5, 10),
    rule: str = "any",
) -> dict[str, jax.Array]:
    """Batch means of the metrics the papers report: MRR, NDCG, R@k (hit rate) and CondR@k.

    MRR, NDCG and R@k average over every query (a query without a positive scores 0);
    ``num_with_positive`` is the CondR@k denominator. ``rule`` picks the relevant candidates of
    graded labels (``positives``); NDCG weighs the graded labels either way.
    """
    graded, relevance = relevance, positives(relevance, valid, rule)
    positive = has_positive(relevance, valid)
    report = {
        "mrr": jnp.mean(reciprocal_rank(scores, relevance, valid=valid)),
        "ndcg": jnp.mean(ndcg(scores, graded, valid=valid)),
        "num_with_positive": positive.sum(dtype=jnp.int32),
    }
    for k in ks:
        hit = recall_at_k(scores, relevance, k, valid)
        report[f"recall@{k}"] = jnp.mean(hit)
        report[f"cond_recall@{k}"] = masked_mean(hit, positive)
    return report
