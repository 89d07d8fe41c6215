"""The RL core shared by Region-R1 and ELVA: group advantages, losses, group sampling."""

from jaxrank.rl.grpo import (
    ADVANTAGES,
    AGGREGATIONS,
    GRPOConfig,
    clipped_policy_loss,
    compute_advantages,
    dr_grpo_advantages,
    grpo_advantages,
    kl_k3,
    rloo_advantages,
)
from jaxrank.rl.sampling import sample_balanced_decisions, sample_decisions, slots_to_flip

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "GRPOConfig",
    "clipped_policy_loss",
    "compute_advantages",
    "dr_grpo_advantages",
    "grpo_advantages",
    "kl_k3",
    "rloo_advantages",
    "sample_balanced_decisions",
    "sample_decisions",
    "slots_to_flip",
]
