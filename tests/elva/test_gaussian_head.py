"""The stochastic embedding head: log-probs equal scipy's normal log-density, samples have the
head's mean and scale, and the gradient of a log-prob is the score function worked by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxrank.elva.gaussian_head import GaussianEmbeddingHead, gaussian_log_prob


def test_log_prob_equals_scipy():
    rng = np.random.default_rng(0)
    z, mean = rng.normal(size=(2, 5, 8)).astype(np.float32)
    log_scale = rng.normal(scale=0.3, size=8).astype(np.float32)
    expected = stats.norm.logpdf(z, mean, np.exp(log_scale)).sum(axis=-1)
    np.testing.assert_allclose(gaussian_log_prob(z, mean, log_scale), expected, rtol=1e-5)


def test_samples_follow_the_head_and_carry_their_log_probs():
    head = GaussianEmbeddingHead(4, init_scale=0.2)
    mean = jnp.asarray([[1.0, -1.0, 0.5, 0.0], [0.0, 2.0, 0.0, -0.5]])
    z, logp = head.sample(jax.random.key(0), mean, 20_000)
    assert z.shape == (2, 20_000, 4) and logp.shape == (2, 20_000)
    np.testing.assert_allclose(z.mean(axis=1), mean, atol=0.01)
    np.testing.assert_allclose(z.std(axis=1), 0.2, rtol=0.02)
    np.testing.assert_allclose(logp, head.log_prob(z, mean[:, None]), rtol=1e-6)


def test_gradient_is_the_score_function():
    head = GaussianEmbeddingHead(3, init_scale=0.5)
    z, mean = jnp.asarray([0.3, -0.2, 1.0]), jnp.asarray([0.0, 0.1, 0.5])
    grad = jax.grad(lambda m: head.log_prob(z, m))(mean)
    np.testing.assert_allclose(grad, (z - mean) / 0.25, rtol=1e-5)  # (z - mu) / sigma^2


def test_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        GaussianEmbeddingHead(0)
