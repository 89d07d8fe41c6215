"""Crop-and-score re-ranking, box validity, IoU and the baseline crops, against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrank import imaging
from jaxrank.region_r1 import baselines, rerank
from jaxrank.region_r1.action import FULL, REGION

H = W = 24


def toy_embed(pixels):
    """A fixed random projection of the pixels, normalised: any crop change moves it."""
    flat = pixels.reshape(pixels.shape[0], -1) / 255.0
    proj = jax.random.normal(jax.random.key(7), (flat.shape[1], 6))
    emb = flat @ proj
    return emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)


def test_valid_boxes_and_iou_hand_worked():
    boxes = jnp.asarray(
        [
            [2, 2, 10, 10],  # fine
            [10, 2, 2, 10],  # inverted
            [30, 30, 40, 40],  # outside: zero area after clamping
            [-5, -5, 1, 1],  # partly outside: clamped to [0, 0, 1, 1]
            [np.nan, 0, 5, 5],  # NaN
        ],
        jnp.float32,
    )
    np.testing.assert_array_equal(
        rerank.valid_boxes(boxes, H, W), [True, False, False, True, False]
    )
    a = jnp.asarray([0.0, 0.0, 4.0, 4.0])
    b = jnp.asarray([2.0, 2.0, 6.0, 6.0])
    np.testing.assert_allclose(imaging.box_iou(a, b), 4 / 28)
    np.testing.assert_allclose(imaging.box_iou(a, a), 1.0)
    np.testing.assert_allclose(imaging.box_iou(a, jnp.asarray([4.0, 0, 2, 4])), 0.0)


def test_score_actions_matches_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, H, W, 3), dtype=np.uint8)
    pool = rng.normal(size=(2, 5, 6)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=-1, keepdims=True)
    decision = np.array([[FULL, REGION, REGION, REGION], [REGION, FULL, REGION, REGION]])
    boxes = np.array(
        [
            [[0, 0, 5, 5], [3, 4, 15, 20], [0, 0, W, H], [9, 9, 9, 12]],
            [[1, 1, 12, 12], [0, 0, 1, 1], [-4, 6, 30, 18], [5, 5, 2, 2]],
        ],
        np.float32,
    )
    out = rerank.score_actions(toy_embed, jnp.asarray(images), decision, boxes, pool, 8)

    full = np.asarray(toy_embed(imaging.resize(jnp.asarray(images), 8)))
    base = np.einsum("bd,bkd->bk", full, pool)
    np.testing.assert_allclose(out.base, base, rtol=1e-5, atol=1e-6)
    valid = np.array([[True, True, True, False], [True, True, True, False]])
    np.testing.assert_array_equal(out.box_valid, valid)
    for i in range(2):
        for g in range(4):
            if decision[i, g] == REGION and valid[i, g]:
                crop = imaging.crop_and_resize(jnp.asarray(images[i]), jnp.asarray(boxes[i, g]), 8)
                expected = pool[i] @ np.asarray(toy_embed(crop[None]))[0]
            else:  # FULL, and invalid boxes, fall back to the full image's ranking
                expected = base[i]
            np.testing.assert_allclose(out.scores[i, g], expected, rtol=1e-5, atol=1e-6)
    # A crop to the whole frame is the full image.
    np.testing.assert_allclose(out.scores[0, 2], base[0], rtol=1e-5, atol=1e-6)


def test_baseline_boxes():
    np.testing.assert_allclose(baselines.centre_boxes((2,), 40, 20, 0.5), [[5, 10, 15, 30]] * 2)
    boxes = np.asarray(baselines.random_boxes(jax.random.key(0), (500,), 40, 20, (0.3, 0.7)))
    sides = boxes[:, 2:] - boxes[:, :2]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 20 + 1e-4).all()
    assert (boxes[:, 3] <= 40 + 1e-4).all()
    np.testing.assert_array_less(sides / [20, 40], 0.7 + 1e-6)
    np.testing.assert_array_less(0.3 - 1e-6, sides / [20, 40])
    # Positions spread over the image, not stuck in a corner.
    assert boxes[:, 0].std() > 1.0 and boxes[:, 1].std() > 2.0
    with pytest.raises(ValueError, match="fraction"):
        baselines.centre_boxes((1,), 8, 8, 0.0)
    with pytest.raises(ValueError, match="fractions"):
        baselines.random_boxes(jax.random.key(0), (1,), 8, 8, (0.8, 0.2))


def test_strategy_metrics_count_and_exclude_degenerate_pools():
    """Hand-worked: query 0 has its positive first with the crop (second with the full image);
    query 1's pool holds no positive; query 2's pool is all padding. CondR@1 counts query 0
    only; the empty pool and the invalid box are counted."""
    from jaxrank.region_r1.evaluation import strategy_metrics

    scores = np.array([[0.2, 0.9, 0.1], [0.5, 0.4, 0.3], [0.0, 0.0, 0.0]], np.float32)
    base = np.array([[0.9, 0.2, 0.1], [0.5, 0.4, 0.3], [0.0, 0.0, 0.0]], np.float32)
    labels = np.array([[0, 1, 0], [0, 0, 0], [0, 1, 0]], np.float32)
    pool_valid = np.array([[True] * 3, [True] * 3, [False] * 3])
    decision = np.array([REGION, REGION, FULL])
    box_valid = np.array([True, False, True])
    m = strategy_metrics(scores, base, decision, box_valid, labels, pool_valid, (1, 2))
    assert m["num_with_positive"] == 1 and m["num_empty_pools"] == 1
    assert m["cond_recall@1"] == 1.0
    np.testing.assert_allclose(m["recall@1"], 1 / 3)
    np.testing.assert_allclose(m["mrr"], 1 / 3)
    assert m["invalid_boxes"] == 1
    # The full image ranks no query's positive first: all three count as "full not first".
    np.testing.assert_allclose(m["crop_rate_full_not_first"], 2 / 3)
    assert m["crop_rate_full_first"] == 0.0


def test_released_crop_fails_by_hand():
    """The released crop raises where int(side) is 0 on a box with positive clamped area:
    (5, 5, 5.5, 20) is 0.5 wide; (-1, 0, 0.5, 10) clamps to 0.5 wide; an empty, NaN or
    one-pixel box does not raise (the first two fall back to the original image there)."""
    boxes = jnp.asarray(
        [
            [5, 5, 5.5, 20],
            [-1, 0, 0.5, 10],
            [3, 3, 3, 9],
            [jnp.nan, 0, 4, 4],
            [10, 10, 11, 11],
            [2, 7.2, 12, 8.1],
        ]
    )
    expected = [True, True, False, False, False, True]
    np.testing.assert_array_equal(rerank.released_crop_fails(boxes, H, W), expected)


def test_score_actions_released_view_uses_the_released_crops():
    """With view="released" the crop scores are the embeddings of imaging.released_crop_view
    (and the full image's of released_full_view); crop_fails marks the sub-pixel box."""
    images = jax.random.randint(jax.random.key(1), (1, H, W, 3), 0, 256).astype(jnp.uint8)
    boxes = jnp.asarray([[[2.0, 3.0, 20.0, 11.0], [4.0, 4.0, 4.5, 20.0]]])
    decision = jnp.asarray([[REGION, REGION]])
    pool = toy_embed(jax.random.uniform(jax.random.key(2), (5, 8, 8, 3)) * 255)[None]
    score = jax.jit(rerank.score_actions, static_argnums=(0, 5, 6))
    out = score(toy_embed, images, decision, boxes, pool, 8, "released")
    crops = imaging.released_crop_view(jnp.broadcast_to(images[:, None], (1, 2, H, W, 3)), boxes, 8)
    expected = toy_embed(crops[0]) @ pool[0].T
    np.testing.assert_allclose(out.scores[0], expected, rtol=1e-5, atol=1e-6)
    full = toy_embed(imaging.released_full_view(images, 8)) @ pool[0].T
    np.testing.assert_allclose(out.base, full, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.crop_fails, [[False, True]])
    with pytest.raises(ValueError, match="released"):
        rerank.score_actions(toy_embed, images, decision, boxes, pool, 8, "square")


def test_strategy_metrics_released_skips():
    """Query 0's crop raises in the released code: counted in released_skips beside
    invalid_boxes; skip_failed_crops averages over query 1 only, as the released evaluation."""
    from jaxrank.region_r1.evaluation import strategy_metrics

    scores = np.array([[0.2, 0.9], [0.9, 0.2]], np.float32)
    labels = np.array([[1, 0], [1, 0]], np.float32)
    args = (scores, scores, np.array([REGION, REGION]), np.array([True, True]), labels)
    pool_valid, fails = np.ones((2, 2), bool), np.array([True, False])
    kept = strategy_metrics(*args, pool_valid, (1,), fails)
    assert (kept["released_skips"], kept["invalid_boxes"], kept["recall@1"]) == (1, 0, 0.5)
    skipped = strategy_metrics(*args, pool_valid, (1,), fails, skip_failed_crops=True)
    assert (skipped["released_skips"], skipped["recall@1"], skipped["num_queries"]) == (1, 1.0, 2)
