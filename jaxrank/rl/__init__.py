"""The RL core the papers share: GRPO advantages, the clipped loss with its k3 KL, group and
decision-balanced sampling, token-level GRPO for language policies, and the LM sampler."""

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
