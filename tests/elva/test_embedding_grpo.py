"""ELVA's RL stage on the stochastic head: rollout scores and rewards equal a numpy
recomputation from the returned draws (query only, or the candidates sampled too), the loss
equals PAPERS.md §4's formula, and a few GRPO updates raise the reward: of a query embedding,
and of the candidate embeddings alone when the rollout samples them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxrank.elva import embedding_grpo
from jaxrank.elva.gaussian_head import GaussianEmbeddingHead, gaussian_log_prob
from jaxrank.elva.reward import ELVARewardConfig, elva_reward
from jaxrank.rl.grpo import GRPOConfig

GRPO = GRPOConfig(num_generations=8, advantage="grpo", beta=0.2)
REWARD = ELVARewardConfig()


def _task():
    rng = np.random.default_rng(0)
    positive = rng.normal(size=(4, 16)).astype(np.float32)
    negatives = rng.normal(size=(4, 6, 16)).astype(np.float32)
    query = (0.3 * positive + rng.normal(size=(4, 16))).astype(np.float32)
    return jnp.asarray(query), jnp.asarray(positive), jnp.asarray(negatives)


def test_rollout_scores_and_rewards_equal_numpy():
    head = GaussianEmbeddingHead(16, init_scale=0.3)
    query, positive, negatives = _task()
    out = embedding_grpo.rollout(head, jax.random.key(0), query, positive, negatives, GRPO, REWARD)
    assert out.samples.shape == (4, 8, 1, 16) and out.log_probs.shape == (4, 8, 1)
    z = np.asarray(out.samples[:, :, 0], np.float64)
    pos = np.einsum("bgd,bd->bg", _unit(z), _unit(np.asarray(positive, np.float64)))
    neg = np.einsum("bgd,bnd->bgn", _unit(z), _unit(np.asarray(negatives, np.float64)))
    np.testing.assert_allclose(out.positive_scores, pos, atol=1e-5)
    np.testing.assert_allclose(out.negative_scores, neg, atol=1e-5)
    np.testing.assert_allclose(out.rewards, elva_reward(pos, neg, REWARD), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.advantages).sum(axis=1), 0, atol=1e-4)
    expected_logp = gaussian_log_prob(z, query[:, None], np.log(0.3))
    np.testing.assert_allclose(out.log_probs[..., 0], expected_logp, rtol=1e-5)


def test_sampled_candidates_are_scored_as_drawn():
    """Every rollout draws its own positive and negatives around the given ones: the query draw
    is scored against those draws, and the log-probs are each draw's own."""
    head = GaussianEmbeddingHead(16, init_scale=0.3)
    query, positive, negatives = _task()
    out = embedding_grpo.rollout(
        head, jax.random.key(0), query, positive, negatives, GRPO, REWARD, True
    )
    assert out.samples.shape == (4, 8, 8, 16) and out.log_probs.shape == (4, 8, 8)
    z = _unit(np.asarray(out.samples, np.float64))
    pos = np.einsum("bgd,bgd->bg", z[:, :, 0], z[:, :, 1])
    neg = np.einsum("bgd,bgnd->bgn", z[:, :, 0], z[:, :, 2:])
    np.testing.assert_allclose(out.positive_scores, pos, atol=1e-5)
    np.testing.assert_allclose(out.negative_scores, neg, atol=1e-5)
    np.testing.assert_allclose(out.rewards, elva_reward(pos, neg, REWARD), atol=1e-5)
    means = np.concatenate([query[:, None], positive[:, None], negatives], axis=1)
    expected_logp = gaussian_log_prob(out.samples, means[:, None], np.log(0.3))
    np.testing.assert_allclose(out.log_probs, expected_logp, rtol=1e-5)
    draws = np.asarray(out.samples[:, :, 2:]) - np.asarray(negatives)[:, None]
    assert 0.25 < draws.std() < 0.35  # the head's scale, around the candidates' own means


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_loss_equals_the_formula():
    head = GaussianEmbeddingHead(16, init_scale=0.3)
    query, positive, negatives = _task()
    out = embedding_grpo.rollout(head, jax.random.key(1), query, positive, negatives, GRPO, REWARD)
    moved = query + 0.05  # the encoder after an update; reference = the original query
    value, _ = embedding_grpo.loss(head, moved[:, None], query[:, None], jnp.log(0.3), out, GRPO)
    logp = np.asarray(head.log_prob(out.samples[:, :, 0], moved[:, None]), np.float64)
    old = np.asarray(out.log_probs[..., 0], np.float64)
    ref = old  # the reference is the sampling policy here
    ratio = np.exp(logp - old)
    a = np.asarray(out.advantages, np.float64)
    surrogate = np.minimum(ratio * a, np.clip(ratio, 0.8, 1.2) * a)
    kl = np.exp(ref - logp) - (ref - logp) - 1
    np.testing.assert_allclose(value, np.mean(-(surrogate - 0.2 * kl)), rtol=1e-4)


@pytest.mark.parametrize("trained", ["query", "candidates"])
def test_updates_raise_the_reward(trained):
    """A few GRPO updates raise the reward: of the query embedding against fixed candidates, or
    of the positive and negatives alone (the query fixed) through their own draws' log-probs,
    which is how the reward's credit reaches the candidate side."""
    head = GaussianEmbeddingHead(16, init_scale=0.3)
    query, positive, negatives = _task()
    sampled = trained == "candidates"
    start = embedding_grpo.sampled_means(query, positive, negatives, sampled)
    fixed, moving = (start[:, :1], start[:, 1:]) if sampled else (start[:, :0], start)
    graphdef, head_params = nnx.split(head, nnx.Param)
    params = {"embeddings": moving, "head": head_params}
    optimizer = optax.adam(0.05)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key):
        means = jnp.concatenate([fixed, params["embeddings"]], axis=1)
        pos, neg = (means[:, 1], means[:, 2:]) if sampled else (positive, negatives)
        current = nnx.merge(graphdef, params["head"])
        batch = embedding_grpo.rollout(current, key, means[:, 0], pos, neg, GRPO, REWARD, sampled)
        batch = jax.lax.stop_gradient(batch)

        def objective(p):
            model = nnx.merge(graphdef, p["head"])
            means = jnp.concatenate([fixed, p["embeddings"]], axis=1)
            return embedding_grpo.loss(model, means, start, jnp.log(0.3), batch, GRPO)[0]

        grads = jax.grad(objective)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, batch.rewards.mean()

    rewards = []
    for i in range(60):
        params, opt_state, reward = step(params, opt_state, jax.random.key(i))
        rewards.append(float(reward))
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.05
    assert np.abs(np.asarray(params["embeddings"] - moving)).max() > 0.05
