"""Cost models of jaxrank's distributed steps: matmul FLOPs and the bytes their collectives
carry, as functions of the shapes that scale (batch, group, pool, knowledge-base size,
devices). docs/SCALING.md states them; scripts/scaling_study.py and tests/test_step_costs.py
check them against compiled programs.
"""

from __future__ import annotations

from typing import NamedTuple


class PerExampleFlops(NamedTuple):
    """Forward matmul FLOPs of one example through each part of the r-GRPO step."""

    policy: int  # the crop policy's forward on one query (its own resize included)
    policy_update: int  # forward + backward of the policy's outputs on one query
    scorer: int  # the frozen scorer's image tower on one image
    crop_resize: int  # one crop resized to the scorer's input
    full_resize: int  # the full query image resized to the scorer's input
    embed_dim: int  # the scorer's embedding width D


def region_grpo_step_flops(
    per_example: PerExampleFlops, batch: int, group: int, pool: int, updates: int = 1
) -> int:
    """One r-GRPO step over ``batch`` queries: the rollout's policy and reference forwards,
    ``group`` crops and the full image through the scorer, each embedding against the ``pool``
    candidates, then the policy's forward + backward per update (less than 3x the forward:
    nothing differentiates the parameter-free resize or the input of the first layer)."""
    e = per_example
    policy = 2 * e.policy + updates * e.policy_update
    images = group * (e.crop_resize + e.scorer) + e.full_resize + e.scorer
    pool_scores = 2 * (group + 1) * pool * e.embed_dim
    return batch * (policy + images + pool_scores)


def gradient_all_reduce_bytes(params: int, devices: int, updates: int = 1) -> int:
    """Payload of a data-parallel step's collectives: one float32 all-reduce of the gradient
    per update (parameters replicated, batch split); nothing on one device."""
    return 4 * params * updates if devices > 1 else 0


def search_flops_per_device(queries: int, stored_rows: int, devices: int, dim: int) -> int:
    """Each device scores every query against its share of the stored (padded) rows."""
    return 2 * queries * (stored_rows // devices) * dim


def search_gather_bytes(queries: int, k: int, devices: int) -> int:
    """Payload of the search's all-gathers: every device's top-k float32 scores and int32 ids,
    gathered whole on every device before the merge (on one device the gather is still in
    the program, and moves nothing)."""
    return queries * k * devices * (4 + 4)
