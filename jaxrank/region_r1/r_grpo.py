"""Region-aware GRPO (r-GRPO, PAPERS.md §1) for a structured crop policy, as pure functions.

One rollout per training step, with the pre-update parameters: the policy (and the frozen
reference) read the query, G actions are sampled per query (decision-balanced if asked), each
action's crop re-ranks the query's candidate pool with the frozen scorer, the Region-R1 reward
judges it against the full image, and group advantages follow. The loss then scores the same
actions under the parameters being trained: the clipped ratio objective with a k3 KL to the
reference, over the action's factors (decision, x1, y1, x2, y2) as GRPO's "tokens".

The three stages of the rollout (``act``, ``score``, ``judge``) are separate functions so that a
profiler can time each on its own (``rollout_stages``); ``make_rollout`` composes them for the
training step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from jaxrank import imaging, metrics
from jaxrank.region_r1 import rerank
from jaxrank.region_r1.action import (
    REGION,
    PolicyOutput,
    bins_to_boxes,
    entropy,
    log_prob,
    sample_boxes,
)
from jaxrank.region_r1.kb_rows import pool_rows
from jaxrank.region_r1.reward import RegionR1RewardConfig, region_r1_rewards
from jaxrank.rl.grpo import (
    GRPOConfig,
    clipped_policy_loss,
    compute_advantages,
    reward_term_means,
)
from jaxrank.rl.sampling import sample_balanced_decisions, sample_decisions

# (params, images uint8 [B, H, W, 3], question tokens [B, L]) -> PolicyOutput of shape [B]
PolicyFn = Callable[[Any, jax.Array, jax.Array], PolicyOutput]
# (scorer params, float32 pixels in [0, 255] [N, S, S, 3]) -> normalised embeddings [N, D]
ScorerFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class RegionGRPOConfig:
    """r-GRPO: GRPO's settings, the reward's, decision balancing, and whether a slot that
    balancing flipped (not drawn from the policy) still enters the loss."""

    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)
    reward: RegionR1RewardConfig = dataclasses.field(default_factory=RegionR1RewardConfig)
    balanced: bool = True
    forced_in_loss: bool = True


class Actions(NamedTuple):
    """G sampled actions per query and the per-factor log-probs the loss needs."""

    decision: jax.Array  # [B, G] int32, FULL or REGION
    bins: jax.Array  # [B, G, 4] int32
    forced: jax.Array  # [B, G] bool, flipped by decision balancing
    old_logp: jax.Array  # [B, G, 5] under the sampling policy
    ref_logp: jax.Array  # [B, G, 5] under the frozen reference
    mask: jax.Array  # [B, G, 5] the factors each action has (and is trained on)


def act(
    out: PolicyOutput, ref_out: PolicyOutput, key: jax.Array, config: RegionGRPOConfig
) -> Actions:
    """Sample G actions per query from ``out``; score them under ``out`` and ``ref_out``."""
    decision_key, box_key = jax.random.split(key)
    group = config.grpo.num_generations
    if config.balanced:
        decision, forced = sample_balanced_decisions(decision_key, out.decision_logits, group)
    else:
        decision = sample_decisions(decision_key, out.decision_logits, group)
        forced = jnp.zeros(decision.shape, bool)
    bins = sample_boxes(out, box_key, group)
    old_logp, mask = log_prob(out, decision, bins)
    ref_logp, _ = log_prob(ref_out, decision, bins)
    if not config.forced_in_loss:
        mask = mask & ~forced[..., None]
    return Actions(decision, bins, forced, old_logp, ref_logp, mask)


def score(
    embed: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    actions: Actions,
    pool: jax.Array,
    num_bins: int,
    scorer_size: int,
    view: str = "stretch",
) -> rerank.PoolScores:
    """Each action's crop (bins -> pixel box) re-ranks the query's pool ``[B, K, D]``, the
    scorer seeing it as ``view`` says (``rerank.VIEWS``)."""
    boxes = bins_to_boxes(actions.bins, images.shape[1], num_bins)
    return rerank.score_actions(embed, images, actions.decision, boxes, pool, scorer_size, view)


def judge(
    scored: rerank.PoolScores,
    decision: jax.Array,
    labels: jax.Array,
    pool_valid: jax.Array,
    config: RegionGRPOConfig,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Rewards ``[B, G]``, advantages ``[B, G]`` and the reward's components, for the
    decisions ``[B, G]`` whose crops were ``scored``."""
    rewards, components = region_r1_rewards(
        scored.scores,
        scored.base,
        labels,
        decision,
        scored.box_valid,
        pool_valid,
        config.reward,
        scored.crop_fails,
    )
    return rewards, compute_advantages(rewards, config.grpo.advantage), components


def action_metrics(
    decision: jax.Array,
    boxes: jax.Array,
    scored: rerank.PoolScores,
    rewards: jax.Array,
    components: dict[str, jax.Array],
    labels: jax.Array,
    pool_valid: jax.Array,
    true_boxes: jax.Array,
) -> dict[str, jax.Array]:
    """Scalars for the training log of any crop policy's actions (decisions ``[B, G]``, pixel
    boxes ``[B, G, 4]``): reward, decisions, ranking quality of the actions, and how well
    REGION boxes cover the ground truth."""
    region = decision == REGION
    scored_region = region & scored.box_valid
    in_pool = metrics.has_positive(labels, pool_valid)  # [B]
    shape = scored.scores.shape
    hit = metrics.recall_at_k(
        scored.scores,
        jnp.broadcast_to(labels[:, None], shape),
        1,
        jnp.broadcast_to(pool_valid[:, None], shape),
    )
    base_hit = metrics.recall_at_k(scored.base, labels, 1, pool_valid)
    iou = imaging.box_iou(boxes, true_boxes[:, None])
    return {
        "reward": rewards.mean(),
        "region_rate": region.mean(),
        "invalid_box_rate": metrics.masked_mean(~scored.box_valid, region),
        "cond_r1": metrics.masked_mean(hit, jnp.broadcast_to(in_pool[:, None], hit.shape)),
        "full_cond_r1": metrics.masked_mean(base_hit, in_pool),
        "region_iou": metrics.masked_mean(iou, scored_region),
        **reward_term_means(components, scored_region),
    }


def rollout_metrics(
    out: PolicyOutput,
    actions: Actions,
    scored: rerank.PoolScores,
    rewards: jax.Array,
    components: dict[str, jax.Array],
    labels: jax.Array,
    pool_valid: jax.Array,
    true_boxes: jax.Array,
    num_bins: int,
    image_size: int,
) -> dict[str, jax.Array]:
    """``action_metrics`` of the structured policy's actions, its entropy and forced rate."""
    boxes = bins_to_boxes(actions.bins, image_size, num_bins)
    logged = action_metrics(
        actions.decision, boxes, scored, rewards, components, labels, pool_valid, true_boxes
    )
    return {**logged, "forced_rate": actions.forced.mean(), "entropy": entropy(out).mean()}


class RolloutStages(NamedTuple):
    """The rollout's three stages on a batch dict (see ``make_rollout``), each jittable alone:
    ``act(params, batch, key, frozen) -> (PolicyOutput, Actions)``,
    ``score(actions, batch, frozen) -> PoolScores``,
    ``judge(scored, actions, batch) -> (rewards, advantages, components)``."""

    act: Callable[[Any, dict, jax.Array, dict], tuple[PolicyOutput, Actions]]
    score: Callable[[Actions, dict, dict], rerank.PoolScores]
    judge: Callable[[rerank.PoolScores, Actions, dict], tuple[Any, Any, dict]]


def rollout_stages(
    policy: PolicyFn,
    scorer: ScorerFn,
    config: RegionGRPOConfig,
    num_bins: int,
    scorer_size: int,
) -> RolloutStages:
    """``batch``: images [B, H, W, 3] uint8, tokens [B, L], pool_ids [B, K] (rows of
    ``frozen["kb"]``), labels [B, K], pool_valid [B, K], boxes [B, 4] (ground truth, for
    logging). ``frozen``: ``kb`` [N, D] candidate embeddings, ``scorer`` and ``ref`` params."""

    def act_on(params, batch, key, frozen):
        images, tokens = batch["images"], batch["tokens"]
        out = policy(params, images, tokens)
        return out, act(out, policy(frozen["ref"], images, tokens), key, config)

    def score_on(actions, batch, frozen):
        embed = lambda pixels: scorer(frozen["scorer"], pixels)
        pool = frozen["kb"][batch["pool_ids"]]
        images, view = batch["images"], config.reward.crop_view
        return score(embed, images, actions, pool, num_bins, scorer_size, view)

    def judge_on(scored, actions, batch):
        return judge(scored, actions.decision, batch["labels"], batch["pool_valid"], config)

    return RolloutStages(act_on, score_on, judge_on)


def make_rollout(
    policy: PolicyFn,
    scorer: ScorerFn,
    config: RegionGRPOConfig,
    num_bins: int,
    scorer_size: int,
) -> Callable[[Any, dict, jax.Array, dict], tuple[dict, dict[str, jax.Array]]]:
    """``rollout(params, batch, key, frozen)`` for ``make_train_step``: the three
    ``rollout_stages`` in a row. Returns the batch with its ``Actions`` and advantages added,
    and the rollout's metrics."""
    stages = rollout_stages(policy, scorer, config, num_bins, scorer_size)

    def rollout(params, batch, key, frozen):
        out, actions = stages.act(params, batch, key, frozen)
        scored = stages.score(actions, batch, frozen)
        rewards, advantages, components = stages.judge(scored, actions, batch)
        logged = rollout_metrics(
            out,
            actions,
            scored,
            rewards,
            components,
            batch["labels"],
            batch["pool_valid"],
            batch["boxes"],
            num_bins,
            batch["images"].shape[1],
        )
        return dict(batch, actions=actions, advantages=advantages), logged

    return rollout


def make_loss(
    policy: PolicyFn, config: RegionGRPOConfig
) -> Callable[[Any, dict, jax.Array, Any], tuple[jax.Array, dict[str, jax.Array]]]:
    """``loss_fn(params, batch, rng, frozen)`` over a batch that ``make_rollout`` filled."""
    grpo = config.grpo

    def loss_fn(params, batch, rng, frozen):
        del rng, frozen
        actions: Actions = batch["actions"]
        out = policy(params, batch["images"], batch["tokens"])
        logp, _ = log_prob(out, actions.decision, actions.bins)
        loss_sum, count, logged = clipped_policy_loss(
            logp,
            actions.old_logp,
            actions.ref_logp,
            batch["advantages"],
            actions.mask,
            **grpo.loss_options(),
        )
        return loss_sum / jnp.maximum(count, 1.0), logged

    return loss_fn


def grpo_config(cfg: ml_collections.ConfigDict) -> RegionGRPOConfig:
    """The r-GRPO settings of a Region-R1 config's ``rl`` and ``reward`` sections."""
    rl = cfg.rl.to_dict()
    balanced, forced_in_loss = rl.pop("balanced"), rl.pop("forced_in_loss")
    rl.pop("crop_capacity", None)  # the scorer's buffer (mllm_step.crop_capacity), not GRPO's
    reward = cfg.reward.to_dict()
    reward["weights"] = tuple(reward["weights"])
    return RegionGRPOConfig(
        GRPOConfig(**rl), RegionR1RewardConfig(**reward), balanced, forced_in_loss
    )


def make_judge(
    scorer: ScorerFn, config: RegionGRPOConfig, scorer_size: int, kb_layout: str = "replicated"
) -> Callable[[jax.Array, jax.Array, dict, dict], tuple[jax.Array, dict[str, jax.Array]]]:
    """``judge(decision [B, G], pixel boxes [B, G, 4], batch, frozen) -> (advantages, metrics)``:
    the rollout's score and judge stages for a policy that writes pixel boxes itself (the
    vision-language policy): crop every action, re-rank the pools, reward, advantage, log.
    ``frozen["kb"]`` is laid out as ``kb_layout`` says (``kb_rows``)."""

    def judge_actions(decision, boxes, batch, frozen):
        embed = lambda pixels: scorer(frozen["scorer"], pixels)
        pool = pool_rows(frozen["kb"], batch["pool_ids"], kb_layout)
        scored = rerank.score_actions(
            embed, batch["images"], decision, boxes, pool, scorer_size, config.reward.crop_view
        )
        labels, pool_valid = batch["labels"], batch["pool_valid"]
        rewards, advantages, components = judge(scored, decision, labels, pool_valid, config)
        logged = action_metrics(
            decision, boxes, scored, rewards, components, labels, pool_valid, batch["boxes"]
        )
        return advantages, logged

    return judge_actions
