"""Region-R1's vision-language policy: answers written for the warm start parse back to the
same actions in the original image's frame, decision balancing forces the other decision's
opening, and one token-level r-GRPO update sharded over 8 devices equals the single-device
update (sampling included)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from fast_xla import fast_compile
from mllm_tiny import (
    POOL,
    QUESTIONS,
    B,
    ColourScorer,
    G,
    images,
    judged_batch,
    step_config,
    update_inputs,
)

from jaxrank import parallel
from jaxrank.region_r1 import crop_tool
from jaxrank.region_r1.mllm_policy import completion_text
from jaxrank.region_r1.mllm_recipe import place_step_batch
from jaxrank.region_r1.mllm_step import forced_openings, make_step
from jaxrank.rl.grpo import GRPOConfig, dr_grpo_advantages
from jaxrank.rl.token_grpo import make_token_grpo_loss
from jaxrank.train.step import TrainState, make_train_step
from jaxrank.vlm.programs import completion_log_probs_fn, make_sampler


def test_taught_answers_read_back_in_the_original_frame(base):
    assert base.frame == (48, 48) and base.grid == (1, 6, 6)
    texts = [
        completion_text(crop_tool.REGION, (3.4, 5.6, 40, 47.5), label="red thing"),
        crop_tool.NO_CROP,
        completion_text(crop_tool.REGION, (0, 0, 48, 48)),
        crop_tool.CALL_OPEN + '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2',
    ]
    assert crop_tool.parse_completion(texts[0]).outcome == "tool_call_json"
    targets = base.targets(texts, 64)
    assert targets["completion_mask"].sum(axis=1).min() > 1  # the end-of-turn token included
    decisions, boxes, counts = base.read(
        targets["completion"], targets["completion_mask"], (96, 192)
    )
    np.testing.assert_array_equal(decisions, [1, 0, 1, 0])
    # Whole pixels of the 48 x 48 frame, scaled to 96 rows x 192 columns.
    np.testing.assert_array_equal(boxes[0], [3 * 4, 6 * 2, 40 * 4, 48 * 2])
    np.testing.assert_array_equal(boxes[2], [0, 0, 192, 96])
    assert counts["tool_call_json"] == 2 and counts["no_crop"] == 1 and counts["truncated"] == 1


def test_prompts_hold_one_image_per_row(base):
    prompts = base.prompts(QUESTIONS, images())
    image_tokens = (prompts["tokens"] == base.inputs.image_token_id).sum(axis=1)
    np.testing.assert_array_equal(image_tokens, 9)  # 6 x 6 patches merged 2 x 2
    assert prompts["patches"].shape[:2] == (B, 36)
    assert prompts["positions"].shape == (B, 3, prompts["tokens"].shape[1])


def test_forced_openings_decode_to_the_decision_markers(base):
    openings = forced_openings(base)
    decode = base.inputs.tokenizer.decode
    assert decode(openings[crop_tool.FULL]) == crop_tool.NO_CROP
    assert decode(openings[crop_tool.REGION]) == crop_tool.CALL_OPEN


@fast_compile()  # compilation is most of its time; both meshes compile alike
def _step(base, mesh):
    """Sample G completions per prompt and take one r-GRPO update on ``mesh``."""
    graphdef, adapters, rest, settings = update_inputs(base)
    put = lambda tree: parallel.shard_batch(tree, mesh)
    adapters, rest = parallel.put_replicated((adapters, rest), mesh)
    prompts = put(base.prompts(QUESTIONS, images()))
    sample = make_sampler(graphdef, settings, G, base.grid)
    with jax.set_mesh(mesh):
        out = sample(adapters, rest, prompts, jax.random.key(1), np.full((B * G, 1), -1, np.int32))
        rewards = jnp.arange(B * G, dtype=jnp.float32).reshape(B, G) % 3
        batch = dict(
            prompts,
            completion=out.tokens,
            completion_mask=out.mask,
            old_log_probs=out.log_probs,
            advantages=put(np.asarray(dr_grpo_advantages(rewards))),
        )
        grpo = GRPOConfig(num_generations=G, beta=0.1, aggregation="token_mean")
        log_probs = completion_log_probs_fn(base.grid, G, settings.temperature)
        loss = make_token_grpo_loss(graphdef, log_probs, grpo)
        optimizer = optax.sgd(1.0)  # the update is the gradient itself
        state = TrainState.create(adapters, optimizer, 0)
        state, metrics = jax.jit(make_train_step(loss, optimizer))(state, batch, rest)
    return jax.device_get((out.tokens, state.params, metrics["loss"]))


def test_sharded_step_equals_single_device(base):
    devices = np.asarray(jax.devices())
    single = parallel.make_mesh(data=1, devices=devices[:1])
    eight = parallel.make_mesh(data=4, model=2, devices=devices[:8])
    tokens_1, adapters_1, loss_1 = _step(base, single)
    tokens_8, adapters_8, loss_8 = _step(base, eight)
    np.testing.assert_array_equal(tokens_1, tokens_8)
    np.testing.assert_allclose(loss_1, loss_8, rtol=1e-5)
    before = jax.tree.leaves(update_inputs(base)[1])
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(adapters_1), before, strict=True)]
    assert min(moved) > 1e-6  # every adapter got a gradient
    for a, b in zip(jax.tree.leaves(adapters_1), jax.tree.leaves(adapters_8), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_compiled_step_is_a_function_of_the_state(base):
    """One jitted program per step (``mllm_step.make_step`` through ``Stage``'s jit): every
    draw is keyed by the state's rng and step, so the same state gives the same update (what
    exact resumption needs), and a one-sided group gets its forced slot."""
    cfg = step_config()
    mesh = parallel.make_mesh(data=1, devices=jax.devices()[:1])
    graphdef, adapters, rest, _ = update_inputs(base, cfg)
    optimizer = optax.adam(1e-2)
    step = jax.jit(make_step(cfg, base, graphdef, ColourScorer())(optimizer))
    frozen = {"kb": jnp.asarray(POOL), "scorer": None, "base": rest}
    batch = place_step_batch(base, QUESTIONS, mesh, judged_batch())
    with fast_compile():
        state = TrainState.create(adapters, optimizer, 0)
        first, metrics = step(state, batch, frozen)
        again, metrics_again = step(state, batch, frozen)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    assert metrics["loss"] == metrics_again["loss"]
    # The random tiny model writes no tool call: every group is all FULL, so one slot per
    # group opens with <tool_call> instead (and, unable to write a box, reads as truncated or
    # malformed: still FULL).
    assert metrics["forced_rate"] == 1 / G
    assert metrics["outcome/no_tool_call"] + metrics["outcome/no_crop"] == 1 - 1 / G
    assert sum(float(v) for k, v in metrics.items() if k.startswith("outcome/")) == 1.0
    assert int(first.step) == 1
