"""The r-GRPO step of the vision-language crop policy (Region-R1 as published), one program.

``make_step`` gives the un-jitted step ``train.stage.Stage`` compiles once: its rollout decodes
the decision-balanced groups in one pass (``mllm_rollout``), reads every completion on the
device (``tool_reader``), maps the boxes to the original image's pixels, embeds only the valid
REGION crops (``mllm_scoring``; the full image's ranking is the first stage's when the batch
carries ``pool_scores``), and computes the Region-R1 rewards and group advantages
(``r_grpo.judge``); the token-level clipped loss with the k3 KL to the base (adapters off)
then updates the LoRA adapters. Nothing leaves the device within a step: the host tokenises
the prompts when it places a batch and reads the metrics every ``log_every`` steps.

The host-driven step it replaces (sample, copy to the host, parse, decode a second time for
the flipped slots, score, update) is kept as the tests' reference in
``tests/helpers/mllm_host_step.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxrank.region_r1 import crop_tool, r_grpo, tool_reader
from jaxrank.region_r1.kb_rows import kb_layout, pool_rows
from jaxrank.region_r1.mllm_policy import CropPolicyBase
from jaxrank.region_r1.mllm_rollout import SPARES, balanced_completions, opening_table
from jaxrank.region_r1.mllm_scoring import full_image_scores, score_region_crops
from jaxrank.rl.token_grpo import make_token_grpo_loss
from jaxrank.train.stage import with_rollout
from jaxrank.vlm.programs import PROMPT_KEYS, completion_log_probs_fn, sampler_fn

BATCH_KEYS = ("images", "boxes", "pool_ids", "labels", "pool_valid")  # + pool_scores, prompts


def sampling_settings(cfg: ml_collections.ConfigDict, base: CropPolicyBase, greedy: bool):
    """The policy's sampling settings: the config's temperature, or greedy decoding."""
    temperature = 0.0 if greedy else cfg.policy.temperature
    return base.sampling(cfg.policy.max_new_tokens, temperature)


def forced_openings(base: CropPolicyBase) -> dict[int, list[int]]:
    """The token ids a forced slot opens with, per decision it is forced to."""
    return {
        crop_tool.FULL: base.token_ids(crop_tool.NO_CROP),
        crop_tool.REGION: base.token_ids(crop_tool.CALL_OPEN),
    }


def crop_capacity(cfg: ml_collections.ConfigDict, actions: int) -> int:
    """Crops embedded per trip of the scorer's buffer: ``rl.crop_capacity`` (0 or absent: all
    of the step's ``actions``)."""
    capacity = cfg.rl.get("crop_capacity", 0) or actions
    return max(1, min(int(capacity), actions))


def make_judge(cfg: ml_collections.ConfigDict, scorer, config: r_grpo.RegionGRPOConfig):
    """``judge(decision [B, G], boxes [B, G, 4], batch, frozen) -> (advantages, metrics)``:
    the crops re-rank the pools, then the reward, the advantages and the logged metrics.
    ``frozen["kb"]`` is laid out as ``kb_rows.kb_layout(cfg)`` says."""
    layout = kb_layout(cfg)

    def judge(decision, boxes, batch, frozen):
        embed = lambda pixels: scorer.embed(frozen["scorer"], pixels)
        pool = pool_rows(frozen["kb"], batch["pool_ids"], layout)
        images, size, view = batch["images"], scorer.input_size, config.reward.crop_view
        base = batch.get("pool_scores")
        if base is None or view != "stretch":  # the first stage saw the "stretch" view
            base = full_image_scores(embed, images, pool, size, view)
        capacity = crop_capacity(cfg, decision.size)
        scored, trips = score_region_crops(
            embed, images, decision, boxes, pool, base, size, capacity, view
        )
        labels, pool_valid = batch["labels"], batch["pool_valid"]
        rewards, advantages, components = r_grpo.judge(scored, decision, labels, pool_valid, config)
        logged = r_grpo.action_metrics(
            decision, boxes, scored, rewards, components, labels, pool_valid, batch["boxes"]
        )
        return advantages, {**logged, "crop_trips": trips}

    return judge


def make_rollout(
    cfg: ml_collections.ConfigDict,
    base: CropPolicyBase,
    graphdef,
    scorer,
    reader: tool_reader.ToolReader,
) -> Callable[[Any, dict, jax.Array, dict], tuple[dict, dict[str, jax.Array]]]:
    """``rollout(adapters, batch, key, frozen)`` for ``train.step.make_train_step``: the batch
    for the update (prompts, completions, old log-probs, advantages) and the rollout's
    metrics. ``frozen`` = ``{"base": ..., "kb": ..., "scorer": ...}``."""
    rl = r_grpo.grpo_config(cfg)
    group = rl.grpo.num_generations
    settings = sampling_settings(cfg, base, greedy=False)
    rows = group + SPARES if rl.balanced else group
    sample = sampler_fn(graphdef, settings, rows, base.grid)
    openings = opening_table(forced_openings(base))
    judge = make_judge(cfg, scorer, rl)
    box_frame = cfg.policy.get("box_frame", "model")  # crop_tool.BOX_FRAMES

    def rollout(adapters, batch, key, frozen):
        keys = tuple(jax.random.split(jax.random.fold_in(key, 1), 3))
        prompts = {k: batch[k] for k in PROMPT_KEYS}
        b = prompts["tokens"].shape[0]
        draw = lambda forced, noise: sample(
            adapters, frozen["base"], prompts, keys[0], forced, noise
        )
        if rl.balanced:
            completions, reading, flipped = balanced_completions(
                draw, reader.read, openings, b, group, keys, rl.forced_in_loss
            )
        else:
            completions = draw(jnp.full((b * group, 1), -1, jnp.int32), None)
            reading = reader.read(completions.tokens, completions.mask)
            flipped = jnp.zeros((b, group), bool)
        decision = reading.decision.reshape(b, group)
        original = batch["images"].shape[1:3]
        boxes = crop_tool.box_in_image(reading.box, jnp.asarray(base.frame), original, box_frame)
        advantages, logged = judge(decision, boxes.reshape(b, group, 4), batch, frozen)
        counts = jax.nn.one_hot(reading.outcome, len(tool_reader.OUTCOMES)).mean(axis=0)
        outcomes = {f"outcome/{o}": counts[i] for i, o in enumerate(tool_reader.OUTCOMES)}
        extra = {
            "forced_rate": flipped.mean(),
            "completion_tokens": completions.mask.sum(axis=1).mean(),
        }
        update_batch = dict(
            prompts,
            completion=completions.tokens,
            completion_mask=completions.mask,
            old_log_probs=completions.log_probs,
            advantages=advantages,
        )
        return update_batch, {**logged, **outcomes, **extra}

    return rollout


def make_step(
    cfg: ml_collections.ConfigDict,
    base: CropPolicyBase,
    graphdef,
    scorer,
    reader: tool_reader.ToolReader | None = None,
) -> Callable[[optax.GradientTransformation], Callable]:
    """The step factory ``train.stage.Stage`` takes (``stage.with_rollout``): one rollout with
    the pre-update adapters, then ``rl.updates_per_batch`` token-level r-GRPO updates."""
    rl = r_grpo.grpo_config(cfg)
    reader = reader or base.tool_reader()
    settings = sampling_settings(cfg, base, greedy=False)
    log_probs = completion_log_probs_fn(
        base.grid,
        rl.grpo.num_generations,
        settings.log_prob_temperature,
        cfg.policy.get("logit_chunk", 0),
    )
    token_loss = make_token_grpo_loss(graphdef, log_probs, rl.grpo)
    loss = lambda adapters, batch, rng, frozen: token_loss(adapters, batch, rng, frozen["base"])
    rollout = make_rollout(cfg, base, graphdef, scorer, reader)
    return with_rollout(loss, rollout, rl.grpo.updates_per_batch)
