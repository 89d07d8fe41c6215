"""ELVA's RL stage on the stochastic head: rollout scores and rewards equal a numpy
recomputation from the returned draws (query only, or the candidates sampled too), the loss
equals PAPERS.md §4's formula, and a few GRPO updates raise the reward: of a query embedding,
and of candidate embeddings alone when the rollout samples them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrank.models.gaussian_head import GaussianEmbeddingHead, gaussian_log_prob
from jaxrank.rewards.elva import ELVARewardConfig, elva_reward
from jaxrank.rl import embedding_grpo
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


def test_updates_raise_the_reward():
    head = GaussianEmbeddingHead(16, init_scale=0.3)
    query, positive, negatives = _task()
    optimizer = optax.adam(0.05)
    params = {"query": query, "head": nnx.state(head, nnx.Param)}
    graphdef = nnx.graphdef(head)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key):
        current = nnx.merge(graphdef, params["head"])
        batch = embedding_grpo.rollout(
            current, key, params["query"], positive, negatives, GRPO, REWARD
        )
        batch = jax.lax.stop_gradient(batch)

        def objective(p):
            model = nnx.merge(graphdef, p["head"])
            means = p["query"][:, None]
            return embedding_grpo.loss(model, means, query[:, None], jnp.log(0.3), batch, GRPO)[0]

        grads = jax.grad(objective)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, batch.rewards.mean()

    rewards = []
    for i in range(60):
        params, opt_state, reward = step(params, opt_state, jax.random.key(i))
        rewards.append(float(reward))
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.05


def test_updates_of_sampled_candidates_alone_raise_the_reward():
    """The query fixed, the positive and negatives trained through their own draws' log-probs:
    the reward's credit reaches the candidate side (what a query-only rollout cannot do)."""
    head = GaussianEmbeddingHead(16, init_scale=0.3)
    query, positive, negatives = _task()
    graphdef, head_params = nnx.split(head, nnx.Param)
    start = embedding_grpo.sampled_means(query, positive, negatives, True)
    params = {"candidates": start[:, 1:], "head": head_params}
    optimizer = optax.adam(0.05)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key):
        current = nnx.merge(graphdef, params["head"])
        cand = params["candidates"]
        batch = embedding_grpo.rollout(
            current, key, query, cand[:, 0], cand[:, 1:], GRPO, REWARD, True
        )
        batch = jax.lax.stop_gradient(batch)

        def objective(p):
            model = nnx.merge(graphdef, p["head"])
            means = jnp.concatenate([query[:, None], p["candidates"]], axis=1)
            return embedding_grpo.loss(model, means, start, jnp.log(0.3), batch, GRPO)[0]

        grads = jax.grad(objective)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, batch.rewards.mean()

    rewards = []
    for i in range(60):
        params, opt_state, reward = step(params, opt_state, jax.random.key(i))
        rewards.append(float(reward))
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.05
    moved = np.asarray(params["candidates"] - start[:, 1:])
    assert np.abs(moved).max() > 0.05  # the candidates, not only the head, moved
