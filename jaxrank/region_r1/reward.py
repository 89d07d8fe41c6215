"""Region-R1's reward for one sampled crop action (PAPERS.md §1, "Reward").

A pure function of the frozen scorer's scores, so the whole reward is computed inside the jitted
training step. Each of the G actions of a query is judged against the same query's FULL-image
ranking ("base"):

- FULL: 1 when a positive is already at rank 1 with the full image, else 0.
- REGION with an invalid box (zero area after clamping, or NaN): ``invalid_reward`` (-1).
- REGION otherwise: ``scale * max(delta, floor)`` where ``delta`` weighs the changes in MRR, NDCG,
  ln(rank + 1) of the first positive and the positive/negative score margin.

``kind="absolute"`` is the released code's other reward (``src/rewards.py``
``clip_reranking_reward``): ``0.5 * MRR + 0.5 * NDCG`` of the ranking the action produces (the
crop's, or the full image's for FULL and for a box that is empty after clamping, as the released
crop returns the original image there), whatever the full image's ranking was.

The weights: the paper and ``main.py``'s command-line defaults give (0.2, 0.2, 0.2, 0.4), which
jaxrank uses; ``clip_mixture_reward``'s own keyword defaults are (0.5, 0.5, 0.0, 0.1), and
``train.py``'s docstring lists (0.3, 0.3, 0.2, 0.2). ``main.py`` is the entry point that trains,
so its values are the ones the paper's runs had (docs/FIDELITY.md).

Boxes whose released crop raises (``rerank.released_crop_fails``: a side under one pixel) take
``crop_error_reward`` when it is set (released: 0.0 for the difference reward, 0.3 for the
absolute one, the values of their ``except`` branches); unset (jaxrank), they are scored as
one-pixel crops.

``positives``: ``"any"`` (jaxrank) takes a label > 0 as relevant; ``"top_grade"`` (the released
``calculate_mrr`` / rank / margin) only labels equal to the pool's highest, NDCG keeping the
graded gains in both. The two agree on binary labels (E-VQA's, InfoSeek's and the synthetic
world's).

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
from jaxrank.region_r1.rerank import VIEWS

KINDS = ("difference", "absolute")


@dataclasses.dataclass(frozen=True)
class RegionR1RewardConfig:
    """The paper's constants. ``weights`` multiply (dMRR, dNDCG, dRank, dMargin); the other
    fields select the released code's variants (module doc). ``crop_view`` is how the scorer
    sees a crop (``rerank.VIEWS``), read where the actions are scored."""

    weights: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.4)
    floor: float = -0.05
    scale: float = 5.0
    invalid_reward: float = -1.0
    kind: str = "difference"
    absolute_weights: tuple[float, float] = (0.5, 0.5)
    positives: str = "any"
    crop_error_reward: float | None = None
    crop_view: str = "stretch"

    def __post_init__(self) -> None:
        if len(self.weights) != 4:
            raise ValueError(
                f"weights must hold 4 values (dMRR, dNDCG, dRank, dMargin), got {self.weights}"
            )
        for name, value, allowed in (
            ("kind", self.kind, KINDS),
            ("positives", self.positives, metrics.POSITIVES),
            ("crop_view", self.crop_view, VIEWS),
        ):
            if value not in allowed:
                raise ValueError(f"reward {name} must be one of {allowed}, got {value!r}")


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
    scores: jax.Array,
    labels: jax.Array,
    valid: jax.Array | None = None,
    positives: str = "any",
) -> RankingQuality:
    """MRR, NDCG, first-positive rank and margin of ``scores [..., K]``; labels/valid broadcast.
    ``positives`` picks which graded labels are relevant (``metrics.positives``); NDCG always
    weighs the graded labels."""
    scores = jnp.asarray(scores)
    labels = jnp.broadcast_to(jnp.asarray(labels), scores.shape)
    if valid is not None:
        valid = jnp.broadcast_to(jnp.asarray(valid, bool), scores.shape)
    relevant = metrics.positives(labels, valid, positives)
    return RankingQuality(
        mrr=metrics.reciprocal_rank(scores, relevant, valid=valid),
        ndcg=metrics.ndcg(scores, labels, valid=valid),
        rank=metrics.first_positive_rank(scores, relevant, valid),
        margin=score_margin(scores, relevant, valid),
    )


def region_r1_rewards(
    scores: jax.Array,
    base_scores: jax.Array,
    labels: jax.Array,
    decision: jax.Array,
    box_valid: jax.Array,
    valid: jax.Array | None = None,
    config: RegionR1RewardConfig = RegionR1RewardConfig(),
    crop_fails: jax.Array | None = None,
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
      crop_fails: optional ``[B, G]`` boxes whose released crop raises
        (``rerank.released_crop_fails``); read when ``config.crop_error_reward`` is set.

    The components (``d_mrr``, ``d_ndcg``, ``d_rank``, ``d_margin``, ``delta``) are ``[B, G]``
    and 0 wherever the action is not a REGION with a valid box, so NaN scores of a degenerate
    crop never reach the logs; average them under ``(decision == REGION) & box_valid``.
    """
    crop_valid = None if valid is None else jnp.asarray(valid, bool)[..., None, :]
    crop = ranking_quality(scores, jnp.asarray(labels)[..., None, :], crop_valid, config.positives)
    base = ranking_quality(base_scores, labels, valid, config.positives)
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
    if config.kind == "absolute":  # ``scores`` already hold the full image's for FULL/empty
        w_mrr, w_ndcg = config.absolute_weights
        rewards = w_mrr * crop.mrr + w_ndcg * crop.ndcg
    else:
        rewards = jnp.where(
            scored, region_reward, jnp.where(is_region, config.invalid_reward, full_reward)
        )
    if config.crop_error_reward is not None and crop_fails is not None:
        fails = scored & jnp.asarray(crop_fails, bool)
        rewards = jnp.where(fails, config.crop_error_reward, rewards)
    components = {name: jnp.where(scored, value, 0.0) for name, value in changes.items()}
    components["delta"] = jnp.where(scored, delta, 0.0)
    return rewards.astype(jnp.float32), components
