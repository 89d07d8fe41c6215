"""ELVA's RL stage for a dual encoder with the stochastic head (PAPERS.md §2, the fast path), as
pure functions. One rollout = one sampled query embedding scored (cosine) against the query's
positive and its negatives; G rollouts per query; the ELVA reward; group advantages; GRPO's
clipped loss over each rollout's log-prob (one "token" per rollout) with a k3 KL to the
contrastive model (the same Gaussian around the frozen contrastive embedding).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrank.elva.gaussian_head import GaussianEmbeddingHead, gaussian_log_prob
from jaxrank.elva.reward import ELVARewardConfig, elva_reward
from jaxrank.rl.grpo import GRPOConfig, clipped_policy_loss, compute_advantages


class EmbeddingRollout(NamedTuple):
    samples: jax.Array  # [B, G, T, D] raw draws (the scorer normalises them), slot 0 the query
    log_probs: jax.Array  # [B, G, T] under the sampling policy
    positive_scores: jax.Array  # [B, G]
    negative_scores: jax.Array  # [B, G, N]
    rewards: jax.Array  # [B, G]
    advantages: jax.Array  # [B, G]


def _unit(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def sampled_means(
    query: jax.Array, positive: jax.Array, negatives: jax.Array, sample_candidates: bool
) -> jax.Array:
    """The embeddings a rollout samples around, ``[B, T, D]``: the query, then (when the
    candidates are sampled too) the positive and the negatives."""
    if not sample_candidates:
        return query[:, None]
    return jnp.concatenate([query[:, None], positive[:, None], negatives], axis=1)


def rollout(
    head: GaussianEmbeddingHead,
    key: jax.Array,
    query: jax.Array,
    positive: jax.Array,
    negatives: jax.Array,
    grpo: GRPOConfig,
    reward: ELVARewardConfig,
    sample_candidates: bool = False,
) -> EmbeddingRollout:
    """G draws around each query embedding ``[B, D]`` (and around ``positive [B, D]`` and
    ``negatives [B, N, D]`` with ``sample_candidates``), the query's scored against the
    candidates' (every row a real candidate)."""
    means = sampled_means(query, positive, negatives, sample_candidates)
    samples, log_probs = head.sample(key, means, grpo.num_generations)  # [B, T, G, ...]
    samples, log_probs = samples.swapaxes(1, 2), log_probs.swapaxes(1, 2)
    unit = _unit(samples)
    if sample_candidates:
        positive_scores = jnp.einsum("bgd,bgd->bg", unit[:, :, 0], unit[:, :, 1])
        negative_scores = jnp.einsum("bgd,bgnd->bgn", unit[:, :, 0], unit[:, :, 2:])
    else:
        positive_scores = jnp.einsum("bgd,bd->bg", unit[:, :, 0], _unit(positive))
        negative_scores = jnp.einsum("bgd,bnd->bgn", unit[:, :, 0], _unit(negatives))
    rewards = elva_reward(positive_scores, negative_scores, reward)
    advantages = compute_advantages(rewards, grpo.advantage)
    return EmbeddingRollout(
        samples, log_probs, positive_scores, negative_scores, rewards, advantages
    )


def loss(
    head: GaussianEmbeddingHead,
    means: jax.Array,
    reference_means: jax.Array,
    reference_log_scale: jax.Array,
    batch: EmbeddingRollout,
    grpo: GRPOConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GRPO's loss of the rollouts under the current encoder's embeddings ``means [B, T, D]``
    (``sampled_means``) and head; the reference is the contrastive model's embeddings with the
    head's initial scale."""
    samples = jax.lax.stop_gradient(batch.samples)
    logp = head.log_prob(samples, means[:, None])
    ref = gaussian_log_prob(samples, reference_means[:, None], reference_log_scale)
    loss_sum, count, logged = clipped_policy_loss(
        logp,
        batch.log_probs,
        jax.lax.stop_gradient(ref),
        batch.advantages,
        jnp.ones(logp.shape, bool),
        **grpo.loss_options(),
    )
    return loss_sum / count, dict(logged, reward=batch.rewards.mean())
