"""ELVA's rule-based rewards for one rollout (PAPERS.md §2, "Rewards"), pure functions of the
rollout's similarities, computed inside the jitted step.

A rollout scores one query against its pool: ``positive_score`` s_pos and ``negative_scores``
s_n [N]. With the pool ranked by similarity (``jaxrank.metrics``' tie rule: the positive, placed
first, wins ties) s_(k) is the similarity at 1-based rank k and r the positive's rank:

- margin: ``max(0, s_pos - max_n s_n - delta)``;
- ranking, as printed: ``s_(r) / (1 + ln r) - gamma * sum_{k != r} s_(k) * (ln k - 1)``.
  Since ``ln k - 1 < 0`` for k <= 2, a negative ranked first or second *raises* the reward;
- ranking, sign-corrected (``ranking="discounted"``): every negative is penalised with the same
  discount as the positive's gain, ``- gamma * sum_{k != r} s_(k) / (1 + ln k)``, so the
  higher a negative ranks, the more it costs;
- total: ``alpha * margin + eps * ranking`` (paper: alpha 0.4, eps 0.6; delta and gamma are not
  given in the paper and are config values).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxrank import metrics

RANKINGS = ("printed", "discounted")


@dataclasses.dataclass(frozen=True)
class ELVARewardConfig:
    alpha: float = 0.4
    eps: float = 0.6
    delta: float = 0.0
    gamma: float = 0.01
    ranking: str = "printed"

    def __post_init__(self) -> None:
        if self.ranking not in RANKINGS:
            raise ValueError(f"ranking={self.ranking!r} is not one of {RANKINGS}")


def margin_reward(positive_score: jax.Array, negative_scores: jax.Array, delta: float) -> jax.Array:
    """``max(0, s_pos - max_n s_n - delta)`` per rollout: ``[...]`` x ``[..., N]`` -> ``[...]``."""
    return jnp.maximum(0.0, positive_score - negative_scores.max(axis=-1) - delta)


def ranking_reward(
    positive_score: jax.Array, negative_scores: jax.Array, gamma: float, ranking: str = "printed"
) -> jax.Array:
    """The rank-discounted gain of the positive minus ``gamma`` times the negatives' rank-weighted
    similarities (see the module docstring for both forms)."""
    if ranking not in RANKINGS:
        raise ValueError(f"ranking={ranking!r} is not one of {RANKINGS}")
    pool = jnp.concatenate([positive_score[..., None], negative_scores], axis=-1)
    ranks = metrics.rank_of_candidates(pool).astype(jnp.float32)  # the positive is index 0
    log_rank = jnp.log(ranks)
    gain = pool[..., 0] / (1.0 + log_rank[..., 0])
    weight = log_rank[..., 1:] - 1.0 if ranking == "printed" else 1.0 / (1.0 + log_rank[..., 1:])
    return gain - gamma * jnp.sum(pool[..., 1:] * weight, axis=-1)


def elva_reward_terms(
    positive_score: jax.Array, negative_scores: jax.Array, config: ELVARewardConfig
) -> dict[str, jax.Array]:
    """The reward's two terms per rollout, unweighted, for the training log."""
    return {
        "margin": margin_reward(positive_score, negative_scores, config.delta),
        "ranking": ranking_reward(positive_score, negative_scores, config.gamma, config.ranking),
    }


def elva_reward(
    positive_score: jax.Array, negative_scores: jax.Array, config: ELVARewardConfig
) -> jax.Array:
    """``alpha * margin + eps * ranking`` per rollout."""
    terms = elva_reward_terms(positive_score, negative_scores, config)
    return config.alpha * terms["margin"] + config.eps * terms["ranking"]
