"""Region-R1's reward for one sampled crop action (PAPERS.md §1, "Reward").

A pure function of the frozen scorer's scores, so the whole reward is computed inside the jitted
training step. Each of the G actions of a query is judged against the same query's FULL-image
ranking ("base"):

- FULL: 1 when a positive is already at rank 1 with the full image, else 0.
- REGION with an invalid box (zero area after clamping, or NaN): ``invalid_reward`` (-1).
- REGION otherwise: ``scale * max(delta, floor)`` where ``delta`` weighs the changes in MRR, NDCG,
  ln(rank + 1) of the first positive and the positive/negative score margin.

Pools without a positive (and empty pools, every candidate padding) stay finite: both rankings
have MRR 0, NDCG 0, first-positive rank K + 1 and margin 0, so every change is 0 and a valid
REGION action earns ``scale * max(0, floor) = 0``; FULL earns 0; an invalid box still earns
``invalid_reward``. Ranks, ties and padding follow ``jaxrank.metrics``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrank import metrics
from jaxrank.region_r1.action import REGION


@dataclasses.dataclass(frozen=True)
class RegionR1RewardConfig:
    """The paper's constants. ``weights`` multiply (dMRR, dNDCG, dRank, dMargin)."""

    weights: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.4)
    floor: float = -0.05
    scale: float = 5.0
    invalid_reward: float = -1.0

    def __post_init__(self) -> None:
        if len(self.weights) != 4:
            raise ValueError(
                f"weights must hold 4 values (dMRR, dNDCG, dRank, dMargin), got {self.weights}"
            )


class RankingQuality(NamedTuple):
    """Per-query quality of one ranking of the pool; each field has the scores' shape minus K."""

    mrr: jax.Array  # 1 / rank of the first positive; 0 without a positive
    ndcg: jax.Array  # linear gains over all K candidates; 0 without a positive
    rank: jax.Array  # int32, 1-based rank of the first positive; K + 1 without one
    margin: jax.Array  # mean(positive scores) - max(negative scores); see ``score_margin``


def score_margin(scores: jax.Array, labels: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """mean(positive scores) - max(negative scores), 1.0 without a negative, 0.0 without a positive.

    A pool with neither (all padding) counts as having no positive: 0.0.
    """
    scores = jnp.asarray(scores, jnp.float32)
    real = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
    positive = (jnp.asarray(labels) > 0) & real
    negative = ~(jnp.asarray(labels) > 0) & real
    num_positive = positive.sum(axis=-1)
    positive_mean = jnp.where(positive, scores, 0.0).sum(axis=-1) / jnp.maximum(num_positive, 1)
    has_negative = negative.any(axis=-1)
    negative_max = jnp.where(negative, scores, -jnp.inf).max(axis=-1)
    margin = positive_mean - jnp.where(has_negative, negative_max, 0.0)
    margin = jnp.where(has_negative, margin, 1.0)
    return jnp.where(num_positive > 0, margin, 0.0)


def ranking_quality(
    scores: jax.Array, labels: jax.Array, valid: jax.Array | None = None
) -> RankingQuality:
    """MRR, NDCG, first-positive rank and margin of ``scores [..., K]``; labels/valid broadcast."""
    scores = jnp.asarray(scores)
    labels = jnp.broadcast_to(jnp.asarray(labels), scores.shape)
    if valid is not None:
        valid = jnp.broadcast_to(jnp.asarray(valid, bool), scores.shape)
    return RankingQuality(
        mrr=metrics.reciprocal_rank(scores, labels, valid=valid),
        ndcg=metrics.ndcg(scores, labels, valid=valid),
        rank=metrics.first_positive_rank(scores, labels, valid),
        margin=score_margin(scores, labels, valid),
    )


def region_r1_rewards(
    scores: jax.Array,
    base_scores: jax.Array,
    labels: jax.Array,
    decision: jax.Array,
    box_valid: jax.Array,
    valid: jax.Array | None = None,
    config: RegionR1RewardConfig = RegionR1RewardConfig(),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Rewards ``[B, G]`` for G actions per query, and their components for logging.

    Args:
      scores: ``[B, G, K]`` the scorer's scores of the pool for each action's (cropped) image.
      base_scores: ``[B, K]`` the scores with the full image.
      labels: ``[B, K]`` graded relevance, > 0 relevant.
      decision: ``[B, G]`` ``FULL`` (0) or ``REGION`` (1).
      box_valid: ``[B, G]`` False for a zero-area or NaN box; read only for REGION actions.
      valid: optional ``[B, K]`` pool mask (False = padding).
      config: the reward's constants.

    The components (``d_mrr``, ``d_ndcg``, ``d_rank``, ``d_margin``, ``delta``) are ``[B, G]``
    and 0 wherever the action is not a REGION with a valid box, so NaN scores of a degenerate
    crop never reach the logs; average them under ``(decision == REGION) & box_valid``.
    """
    crop_valid = None if valid is None else jnp.asarray(valid, bool)[..., None, :]
    crop = ranking_quality(scores, jnp.asarray(labels)[..., None, :], crop_valid)
    base = ranking_quality(base_scores, labels, valid)
    base = RankingQuality(*(field[..., None] for field in base))

    changes = {
        "d_mrr": crop.mrr - base.mrr,
        "d_ndcg": crop.ndcg - base.ndcg,
        "d_rank": jnp.log1p(base.rank.astype(jnp.float32))
        - jnp.log1p(crop.rank.astype(jnp.float32)),
        "d_margin": crop.margin - base.margin,
    }
    delta = sum(w * c for w, c in zip(config.weights, changes.values(), strict=True))
    region_reward = config.scale * jnp.maximum(delta, config.floor)
    full_reward = jnp.broadcast_to(jnp.where(base.rank == 1, 1.0, 0.0), region_reward.shape)

    is_region = jnp.asarray(decision) == REGION
    scored = is_region & jnp.asarray(box_valid, bool)
    rewards = jnp.where(
        scored, region_reward, jnp.where(is_region, config.invalid_reward, full_reward)
    )
    components = {name: jnp.where(scored, value, 0.0) for name, value in changes.items()}
    components["delta"] = jnp.where(scored, delta, 0.0)
    return rewards.astype(jnp.float32), components
