"""Rule-based rewards: pure functions of scores and labels, computed inside the jitted step."""

from jaxrank.rewards.region_r1 import (
    FULL,
    REGION,
    RankingQuality,
    RegionR1RewardConfig,
    ranking_quality,
    region_r1_rewards,
    score_margin,
)

__all__ = [
    "FULL",
    "REGION",
    "RankingQuality",
    "RegionR1RewardConfig",
    "ranking_quality",
    "region_r1_rewards",
    "score_margin",
]
