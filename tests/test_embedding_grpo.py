"""ELVA's RL stage on the stochastic head: rollout scores and rewards equal a numpy
recomputation from the returned draws, the loss equals PAPERS.md §4's formula, and a few GRPO
updates of a query embedding raise the reward by moving it towards its positive."""

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
    z = np.asarray(out.samples, np.float64)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    pos = np.einsum("bgd,bd->bg", unit(z), unit(np.asarray(positive, np.float64)))
    neg = np.einsum("bgd,bnd->bgn", unit(z), unit(np.asarray(negatives, np.float64)))
    np.testing.assert_allclose(out.positive_scores, pos, atol=1e-5)
    np.testing.assert_allclose(out.negative_scores, neg, atol=1e-5)
    np.testing.assert_allclose(out.rewards, elva_reward(pos, neg, REWARD), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.advantages).sum(axis=1), 0, atol=1e-4)
    expected_logp = gaussian_log_prob(out.samples, query[:, None], np.log(0.3))
    np.testing.assert_allclose(out.log_probs, expected_logp, rtol=1e-5)


def test_loss_equals_the_formula():
    head = GaussianEmbeddingHead(16, init_scale=0.3)
    query, positive, negatives = _task()
    out = embedding_grpo.rollout(head, jax.random.key(1), query, positive, negatives, GRPO, REWARD)
    moved = query + 0.05  # the encoder after an update; reference = the original query
    value, _ = embedding_grpo.loss(head, moved, query, jnp.log(0.3), out, GRPO)
    logp = np.asarray(head.log_prob(out.samples, moved[:, None]), np.float64)
    old = np.asarray(out.log_probs, np.float64)
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
            return embedding_grpo.loss(model, p["query"], query, jnp.log(0.3), batch, GRPO)[0]

        grads = jax.grad(objective)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, batch.rewards.mean()

    rewards = []
    for i in range(60):
        params, opt_state, reward = step(params, opt_state, jax.random.key(i))
        rewards.append(float(reward))
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.05
