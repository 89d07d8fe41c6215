"""Region-R1 reward: hand-worked pools (PAPERS.md §1) with every number derived in comments."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrank.region_r1.action import FULL, REGION
from jaxrank.region_r1.reward import (
    RegionR1RewardConfig,
    ranking_quality,
    region_r1_rewards,
    score_margin,
)

LN = math.log
LOG2 = math.log2

# One query, K = 4, one relevant candidate (index 2). Full image: scores rank the candidates
# 0 (.9), 1 (.8), 2 (.7), 3 (.1), so the positive is at rank 3.
LABELS = [[0, 0, 1, 0]]
BASE = [[0.9, 0.8, 0.7, 0.1]]
# Base quality: MRR 1/3; NDCG = (1 / log2(3 + 1)) / 1 = 1/2; rank 3; margin .7 - .9 = -.2.
BETTER = [0.5, 0.4, 0.9, 0.2]  # positive first: MRR 1, NDCG 1, rank 1, margin .9 - .5 = .4
WORSE = [0.9, 0.8, 0.1, 0.7]  # positive last: MRR 1/4, NDCG 1/log2 5, rank 4, margin .1 - .9
SLIGHTLY_WORSE = [0.9, 0.8, 0.69, 0.1]  # same ranks, margin .69 - .9 = -.21


def _rewards(crops, decision, box_valid, labels=LABELS, base=BASE, valid=None, **config):
    return region_r1_rewards(
        jnp.array([crops], jnp.float32),
        jnp.array(base, jnp.float32),
        jnp.array(labels),
        jnp.array([decision]),
        jnp.array([box_valid]),
        None if valid is None else jnp.array(valid),
        RegionR1RewardConfig(**config),
    )


def test_crop_that_brings_the_positive_to_rank_1():
    rewards, parts = _rewards([BETTER], [REGION], [True])
    d_mrr = 1 - 1 / 3
    d_ndcg = 1 - 1 / 2
    d_rank = LN(3 + 1) - LN(1 + 1)  # = ln 2
    d_margin = 0.4 - (-0.2)  # = .6
    delta = 0.2 * d_mrr + 0.2 * d_ndcg + 0.2 * d_rank + 0.4 * d_margin
    # = .13333 + .1 + .13863 + .24 = .61196; r = 5 * .61196 = 3.0598
    np.testing.assert_allclose(delta, 0.611963, atol=1e-6)
    np.testing.assert_allclose(rewards, [[5 * delta]], rtol=1e-6)
    for name, value in [("d_mrr", d_mrr), ("d_ndcg", d_ndcg), ("d_rank", d_rank)]:
        np.testing.assert_allclose(parts[name], [[value]], rtol=1e-6)
    np.testing.assert_allclose(parts["d_margin"], [[d_margin]], rtol=1e-5)
    np.testing.assert_allclose(parts["delta"], [[delta]], rtol=1e-6)


def test_crop_that_hurts_is_floored_at_minus_a_quarter():
    rewards, parts = _rewards([WORSE, SLIGHTLY_WORSE], [REGION, REGION], [True, True])
    # WORSE: dMRR 1/4 - 1/3 = -.0833; dNDCG 1/log2 5 - 1/2 = -.0693; dRank ln 4 - ln 5 = -.2231;
    # dMargin -.8 - (-.2) = -.6; delta = -.0167 - .0139 - .0446 - .24 = -.3152 < -.05, so
    # r = 5 * -.05 = -.25.
    delta = 0.2 * (1 / 4 - 1 / 3) + 0.2 * (1 / LOG2(5) - 1 / 2) + 0.2 * LN(4 / 5) + 0.4 * -0.6
    np.testing.assert_allclose(parts["delta"][0, 0], delta, rtol=1e-5)
    # SLIGHTLY_WORSE: ranks unchanged, dMargin -.21 - (-.2) = -.01, delta = .4 * -.01 = -.004
    # is above the floor: r = 5 * -.004 = -.02.
    np.testing.assert_allclose(rewards, [[-0.25, -0.02]], rtol=1e-4)


def test_full_earns_1_only_when_the_positive_is_already_first():
    # Base puts the positive at rank 3 -> FULL earns 0, whatever the action's own scores.
    rewards, parts = _rewards([BETTER], [FULL], [True])
    np.testing.assert_array_equal(rewards, [[0.0]])
    # Base [.1, .2, .9, .3] puts it first -> 1; the box flag is ignored for FULL.
    rewards, _ = _rewards([BETTER, WORSE], [FULL, FULL], [True, False], base=[[0.1, 0.2, 0.9, 0.3]])
    np.testing.assert_array_equal(rewards, [[1.0, 1.0]])
    # Components are zeroed for actions that are not scored crops.
    assert all(float(v[0, 0]) == 0.0 for v in parts.values())


def test_invalid_box_gets_the_invalid_reward_even_with_nan_scores():
    nan_crop = [math.nan] * 4
    rewards, parts = _rewards([nan_crop, BETTER], [REGION, REGION], [False, False])
    np.testing.assert_array_equal(rewards, [[-1.0, -1.0]])
    assert all(np.isfinite(v).all() for v in parts.values())
    rewards, _ = _rewards([BETTER], [REGION], [False], invalid_reward=-2.0)
    np.testing.assert_array_equal(rewards, [[-2.0]])


def test_pools_without_a_positive_and_empty_pools_stay_finite():
    # No positive: both rankings have MRR 0, NDCG 0, rank K + 1 = 5, margin 0 -> every change
    # is 0, REGION earns 5 * max(0, -.05) = 0, FULL 0, an invalid box -1.
    decision, box_valid = [REGION, FULL, REGION], [True, True, False]
    crops = [BETTER, BETTER, BETTER]
    rewards, parts = _rewards(crops, decision, box_valid, labels=[[0, 0, 0, 0]])
    np.testing.assert_array_equal(rewards, [[0.0, 0.0, -1.0]])
    assert all(np.array_equal(v, [[0.0, 0.0, 0.0]]) for v in parts.values())
    # Every candidate padding: the same, though the labels say "relevant".
    empty = [[False] * 4]
    rewards, _ = _rewards(crops, decision, box_valid, labels=[[1, 1, 1, 1]], valid=empty)
    np.testing.assert_array_equal(rewards, [[0.0, 0.0, -1.0]])


def test_graded_labels():
    labels = [[2, 0, 1, 0]]
    base = [[0.1, 0.9, 0.8, 0.3]]  # ranks candidates 1, 2, 3, 0: gains 0, 1, 0, 2
    crop = [0.9, 0.1, 0.5, 0.3]  # ranks candidates 0, 2, 3, 1: gains 2, 1, 0, 0 (ideal)
    ideal = 2 / LOG2(2) + 1 / LOG2(3)
    base_ndcg = (1 / LOG2(3) + 2 / LOG2(5)) / ideal
    base_margin = (0.1 + 0.8) / 2 - 0.9  # = -.45; crop: (.9 + .5) / 2 - .3 = .4
    quality = ranking_quality(jnp.array(base), jnp.array(labels))
    np.testing.assert_allclose(quality.ndcg, [base_ndcg], rtol=1e-6)
    np.testing.assert_array_equal(quality.rank, [2])
    np.testing.assert_allclose(quality.mrr, [1 / 2])
    np.testing.assert_allclose(quality.margin, [base_margin], rtol=1e-6)

    rewards, parts = _rewards([crop], [REGION], [True], labels=labels, base=base)
    delta = (
        0.2 * (1 - 1 / 2)
        + 0.2 * (1 - base_ndcg)
        + 0.2 * (LN(3) - LN(2))
        + 0.4 * (0.4 - base_margin)
    )
    np.testing.assert_allclose(parts["d_ndcg"], [[1 - base_ndcg]], rtol=1e-5)
    np.testing.assert_allclose(rewards, [[5 * delta]], rtol=1e-5)


def test_padding_is_ignored():
    # Candidate 3 is padding with the top score and a positive label: without it, BASE and
    # BETTER are scored exactly as in the first test.
    labels, valid = [[0, 0, 1, 1]], [[True, True, True, False]]
    padded_base = [[0.9, 0.8, 0.7, 5.0]]
    with_padding, _ = _rewards([[*BETTER[:3], 5.0]], [REGION], [True], labels, padded_base, valid)
    plain, _ = _rewards([BETTER], [REGION], [True])
    np.testing.assert_allclose(with_padding, plain, rtol=1e-6)


def test_score_margin_edge_cases():
    scores = jnp.array([[0.3, 0.6, 0.2], [0.3, 0.6, 0.2], [0.3, 0.6, 0.2], [0.3, 0.6, 0.2]])
    labels = jnp.array([[1, 1, 1], [0, 0, 0], [1, 0, 3], [1, 0, 0]])
    # all positive: 1.0; no positive: 0.0; positives .3 and .2 vs negative .6: .25 - .6 = -.35;
    # positive .3 vs max negative .6 = -.3
    np.testing.assert_allclose(score_margin(scores, labels), [1.0, 0.0, -0.35, -0.3], rtol=1e-6)


def test_custom_weights_and_ablation():
    # dMRR only (the paper's first ablation row): r = 5 * (2/3) for the BETTER crop.
    rewards, _ = _rewards([BETTER], [REGION], [True], weights=(1.0, 0.0, 0.0, 0.0))
    np.testing.assert_allclose(rewards, [[5 * 2 / 3]], rtol=1e-6)
    with pytest.raises(ValueError, match="4 values"):
        RegionR1RewardConfig(weights=(1.0, 0.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        RegionR1RewardConfig().scale = 1.0  # type: ignore[misc]


def _reference_quality(scores, labels, valid):
    """A float64 numpy restatement: stable descending sort, padding last."""
    real = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
    gains = [float(labels[i]) for i in real if labels[i] > 0]
    hits = [n for n, i in enumerate(real, 1) if labels[i] > 0]
    rank = hits[0] if hits else len(scores) + 1
    dcg = sum(labels[i] / np.log2(n + 1) for n, i in enumerate(real, 1) if labels[i] > 0)
    ideal = sum(g / np.log2(n + 1) for n, g in enumerate(sorted(gains, reverse=True), 1))
    pos = [scores[i] for i in real if labels[i] > 0]
    neg = [scores[i] for i in real if labels[i] <= 0]
    margin = 0.0 if not pos else 1.0 if not neg else np.mean(pos) - max(neg)
    return (1 / rank if hits else 0.0), (dcg / ideal if hits else 0.0), rank, margin


def _reference_reward(crop, base, labels, valid, decision, box_valid):
    if decision == FULL:
        return 1.0 if _reference_quality(base, labels, valid)[2] == 1 else 0.0
    if not box_valid:
        return -1.0
    c, b = _reference_quality(crop, labels, valid), _reference_quality(base, labels, valid)
    changes = [c[0] - b[0], c[1] - b[1], np.log(b[2] + 1) - np.log(c[2] + 1), c[3] - b[3]]
    return 5 * max(np.dot([0.2, 0.2, 0.2, 0.4], changes), -0.05)


def test_batch_under_jit_matches_a_numpy_reference():
    b, g, k = 16, 4, 6
    keys = jax.random.split(jax.random.key(0), 6)
    # Scores on a coarse grid so that ties occur; some pools padded, some without a positive.
    scores = jnp.round(jax.random.normal(keys[0], (b, g, k)), 1)
    base = jnp.round(jax.random.normal(keys[1], (b, k)), 1)
    labels = jax.random.randint(keys[2], (b, k), 0, 3) * (jax.random.uniform(keys[3], (b, k)) < 0.4)
    valid = jnp.arange(k) < jax.random.randint(keys[4], (b, 1), 2, k + 1)
    valid = valid.at[0].set(False)  # one empty pool
    decision = jax.random.randint(keys[5], (b, g), 0, 2)
    box_valid = jnp.arange(b * g).reshape(b, g) % 3 != 0
    rewards, _ = jax.jit(region_r1_rewards)(scores, base, labels, decision, box_valid, valid)
    args = [np.asarray(x, np.float64) for x in (scores, base, labels)]
    expected = [
        [
            _reference_reward(args[0][i, j], args[1][i], args[2][i], np.asarray(valid[i]),
                              int(decision[i, j]), bool(box_valid[i, j]))
            for j in range(g)
        ]
        for i in range(b)
    ]  # fmt: skip
    np.testing.assert_allclose(rewards, expected, rtol=1e-5, atol=1e-5)
    assert rewards.dtype == jnp.float32


def test_absolute_reward_is_half_mrr_half_ndcg_of_the_actions_ranking():
    """Released ``clip_reranking_reward``: 0.5 MRR + 0.5 NDCG of the ranking used, whatever the
    full image's. BETTER: 1.0; WORSE: .5 / 4 + .5 / log2 5 = .34033; FULL and an empty box
    (the released crop returns the original image) read the base: .5 / 3 + .5 / 2 = .41667."""
    rewards, _ = _rewards(
        [BETTER, WORSE, BASE[0], BASE[0]],
        [REGION, REGION, FULL, REGION],
        [True, True, True, False],
        kind="absolute",
    )
    expected = [1.0, 0.5 / 4 + 0.5 / LOG2(5), 0.5 / 3 + 0.5 / 2, 0.5 / 3 + 0.5 / 2]
    np.testing.assert_allclose(rewards, [expected], rtol=1e-6)


def test_crop_error_reward_replaces_only_boxes_whose_released_crop_raises():
    """Released: the crop raises for a side under one pixel; the mixture reward's ``except``
    gives 0, the absolute one's 0.3. Unset, jaxrank scores the crop."""
    crops = jnp.array([[BETTER, BETTER]], jnp.float32)
    args = (jnp.array(BASE), jnp.array(LABELS), jnp.array([[REGION, REGION]]))
    fails = jnp.array([[True, False]])
    for kind, value in (("difference", 0.0), ("absolute", 0.3)):
        config = RegionR1RewardConfig(kind=kind, crop_error_reward=value)
        rewards, _ = region_r1_rewards(crops, *args, jnp.array([[True, True]]), None, config, fails)
        assert rewards[0, 0] == pytest.approx(value)
        assert rewards[0, 1] == pytest.approx(1.0 if kind == "absolute" else 3.0598, abs=1e-3)
    unset, _ = region_r1_rewards(crops, *args, jnp.array([[True, True]]), None, crop_fails=fails)
    np.testing.assert_allclose(unset[0, 0], unset[0, 1])


def test_top_grade_positives_as_the_released_metrics():
    """Labels (.5, 1, 0, 0) with scores ranking 0, 1, 2, 3. "any": the first positive is
    candidate 0 (MRR 1, rank 1, margin mean(.9, .8) - .3 = .55); released "top_grade": only
    candidate 1 (label == max), so MRR 1/2, rank 2, margin .8 - .9 = -.1. NDCG weighs the grades
    either way: (.5 + 1 / log2 3) / (1 + .5 / log2 3) = .85965."""
    scores, labels = jnp.array([0.9, 0.8, 0.3, 0.1]), jnp.array([0.5, 1.0, 0.0, 0.0])
    ndcg = (0.5 + 1 / LOG2(3)) / (1 + 0.5 / LOG2(3))
    for rule, (mrr, rank, margin) in (("any", (1, 1, 0.55)), ("top_grade", (0.5, 2, -0.1))):
        q = ranking_quality(scores, labels, positives=rule)
        np.testing.assert_allclose(
            [q.mrr, q.rank, q.margin, q.ndcg], [mrr, rank, margin, ndcg], rtol=1e-5
        )


def test_reward_config_rejects_unknown_switches():
    for field in ("kind", "positives", "crop_view"):
        with pytest.raises(ValueError, match=field):
            RegionR1RewardConfig(**{field: "nope"})
