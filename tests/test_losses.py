"""Contrastive losses against a float64 numpy reference and hand-worked 3x3 cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrank.losses import sigmoid_contrastive_loss, softmax_contrastive_loss
from jaxrank.parallel import make_mesh

E = np.e


def _reference_logits(a, b, logit_scale):
    return np.exp(logit_scale) * (np.asarray(a, np.float64) @ np.asarray(b, np.float64).T)


def _reference_positives(n, labels):
    return np.eye(n, dtype=bool) if labels is None else np.equal.outer(labels, labels)


def _reference_softmax_loss(a, b, logit_scale, labels=None):
    logits = _reference_logits(a, b, logit_scale)
    positives = _reference_positives(len(logits), labels)

    def cross_entropy(rows, targets):
        peak = rows.max(axis=1, keepdims=True)
        log_norm = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
        targets = targets / targets.sum(axis=1, keepdims=True)
        return np.mean(log_norm - (targets * rows).sum(axis=1))

    return 0.5 * (cross_entropy(logits, positives) + cross_entropy(logits.T, positives.T))


def _reference_sigmoid_loss(a, b, logit_scale, logit_bias, labels=None):
    logits = _reference_logits(a, b, logit_scale) + logit_bias
    signs = np.where(_reference_positives(len(logits), labels), 1.0, -1.0)
    # -log sigmoid(x) = log(1 + exp(-x)), written stably.
    return np.logaddexp(0.0, -signs * logits).sum() / len(logits)


def _unit_rows(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def pairs():
    rng = np.random.default_rng(0)
    return _unit_rows(rng, 16, 8), _unit_rows(rng, 16, 8), np.array([0, 1, 2, 1] * 4)


@pytest.mark.parametrize("with_labels", [False, True])
def test_matches_numpy_reference(pairs, with_labels):
    a, b, labels = pairs
    labels = labels if with_labels else None
    scale, bias = np.log(10.0), -2.0
    got = softmax_contrastive_loss(a, b, scale, labels)
    np.testing.assert_allclose(got, _reference_softmax_loss(a, b, scale, labels), rtol=1e-5)
    got = sigmoid_contrastive_loss(a, b, scale, bias, labels)
    np.testing.assert_allclose(got, _reference_sigmoid_loss(a, b, scale, bias, labels), rtol=1e-5)


def test_duplicate_labels_by_hand():
    # a = b = I3 and logit_scale 0, so logits = I3; labels [5, 5, 7] make pairs (0, 1) positive.
    # Softmax: every row's log-normaliser is log(e + 2). Rows 0 and 1 target [1/2, 1/2, 0] and
    # gain 1/2 * 1; row 2 targets itself and gains 1. Mean = log(e + 2) - 2/3 both ways.
    # Without labels each row gains 1: log(e + 2) - 1.
    eye, labels = jnp.eye(3), jnp.array([5, 5, 7])
    np.testing.assert_allclose(
        softmax_contrastive_loss(eye, eye, 0.0, labels), np.log(E + 2) - 2 / 3, rtol=1e-6
    )
    np.testing.assert_allclose(
        softmax_contrastive_loss(eye, eye, 0.0), np.log(E + 2) - 1, rtol=1e-6
    )
    # Sigmoid with bias -1: logits are 0 on the diagonal, -1 off it.
    # Labels: 3 diagonal positives at 0 -> log 2 each; (0,1), (1,0) positives at -1 ->
    # log(1 + e) each; 4 negatives at -1 -> log(1 + 1/e) each. Sum / 3.
    # Without labels the (0,1), (1,0) pairs are negatives too: 6 * log(1 + 1/e).
    with_labels = (3 * np.log(2) + 2 * np.log(1 + E) + 4 * np.log(1 + 1 / E)) / 3
    without = (3 * np.log(2) + 6 * np.log(1 + 1 / E)) / 3
    np.testing.assert_allclose(
        sigmoid_contrastive_loss(eye, eye, 0.0, -1.0, labels), with_labels, rtol=1e-6
    )
    np.testing.assert_allclose(sigmoid_contrastive_loss(eye, eye, 0.0, -1.0), without, rtol=1e-6)


def test_distinct_labels_equal_no_labels(pairs):
    a, b, _ = pairs
    distinct = jnp.arange(len(a))
    np.testing.assert_allclose(
        softmax_contrastive_loss(a, b, 2.0, distinct), softmax_contrastive_loss(a, b, 2.0)
    )
    np.testing.assert_allclose(
        sigmoid_contrastive_loss(a, b, 2.0, -1.0, distinct),
        sigmoid_contrastive_loss(a, b, 2.0, -1.0),
    )


def test_perfect_alignment_with_large_scale_has_near_zero_softmax_loss():
    eye = jnp.eye(8)
    assert float(softmax_contrastive_loss(eye, eye, np.log(100.0))) < 1e-6


def test_bfloat16_inputs_compute_in_float32(pairs):
    a, b, labels = pairs
    a16, b16 = jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
    a32, b32 = np.asarray(a16, np.float32), np.asarray(b16, np.float32)
    for loss, args in [
        (softmax_contrastive_loss, (3.0, labels)),
        (sigmoid_contrastive_loss, (3.0, -5.0, labels)),
    ]:
        got = loss(a16, b16, *args)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, loss(a32, b32, *args), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradients_are_finite(pairs, dtype):
    a, b, labels = pairs
    a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)

    def both(a, b, scale, bias):
        softmax = softmax_contrastive_loss(a, b, scale, labels)
        return softmax + sigmoid_contrastive_loss(a, b, scale, bias, labels)

    grads = jax.grad(both, argnums=(0, 1, 2, 3))(a, b, jnp.float32(np.log(100.0)), -10.0)
    for grad in grads:
        assert np.isfinite(np.asarray(grad, np.float32)).all()
    assert np.abs(np.asarray(grads[0], np.float32)).sum() > 0


def test_sharded_batch_matches_unsharded(pairs):
    a, b, labels = pairs
    rows = NamedSharding(make_mesh(), P("data"))
    sharded = jax.device_put((a, b, labels), rows)
    assert not sharded[0].sharding.is_fully_replicated

    @jax.jit
    def losses(a, b, labels):
        return (
            softmax_contrastive_loss(a, b, 2.5, labels),
            sigmoid_contrastive_loss(a, b, 2.5, -3.0, labels),
        )

    for got, want in zip(losses(*sharded), losses(a, b, labels), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
