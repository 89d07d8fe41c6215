"""The compiled MLLM step's parts against the host-driven step they replace
(``tests/helpers/mllm_host_step.GRPOStep``): one decoding pass gives the two-pass rule's flips,
forced openings, completions and log-probs for the same keys; the scorer's crop buffer gives
``rerank.score_actions``'s rankings whatever the number of crops; the step's program holds no
host callback and decodes once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fast_xla import fast_compile
from mllm_host_step import GRPOStep
from mllm_tiny import (
    POOL,
    QUESTIONS,
    B,
    ColourScorer,
    G,
    colour_embed,
    images,
    judged_batch,
    step_config,
    update_inputs,
)

from jaxrank import parallel
from jaxrank.region_r1 import mllm_step, rerank, tool_reader
from jaxrank.region_r1.action import FULL, REGION
from jaxrank.region_r1.mllm_recipe import place_step_batch
from jaxrank.region_r1.mllm_rollout import SPARES, balanced_completions, opening_table
from jaxrank.region_r1.mllm_scoring import score_region_crops
from jaxrank.train.step import TrainState
from jaxrank.vlm.programs import sampler_fn


class _ParityBase:
    """The policy's base with a host reader that reads a completion's decision from the parity
    of its second token: groups of both kinds, so flips go both ways."""

    def __init__(self, base):
        self.base = base

    def __getattr__(self, name):
        return getattr(self.base, name)

    def read(self, tokens, mask, size):
        del mask, size
        decisions = (np.asarray(tokens)[:, 1] % 2).astype(np.int32)
        return decisions, np.zeros((len(decisions), 4), np.float32), {}


def _parity_read(tokens, mask):
    del mask
    n = tokens.shape[0]
    decision = (tokens[:, 1] % 2).astype(jnp.int32)
    return tool_reader.Reading(decision, jnp.zeros((n, 4)), jnp.zeros(n, jnp.int32))


def _both_rollouts(base, forced_in_loss: bool, parity: bool, seeds):
    """(host two-pass, device one-pass) rollouts for each seed's keys."""
    cfg = step_config(forced_in_loss=forced_in_loss)
    mesh = parallel.make_mesh(data=1, devices=jax.devices()[:1])
    graphdef, adapters, rest, settings = update_inputs(base, cfg)
    reference = GRPOStep(cfg, base, graphdef, ColourScorer(), optax.sgd(0.1), QUESTIONS, mesh)
    reader = tool_reader.ToolReader.from_tokenizer(base.inputs.tokenizer)
    read = _parity_read if parity else reader.read
    if parity:
        reference.base = _ParityBase(base)
    prompts = base.prompts(QUESTIONS, images())
    sample = sampler_fn(graphdef, settings, G + SPARES, base.grid)
    openings = opening_table(mllm_step.forced_openings(base))

    @jax.jit
    def one_pass(adapters, rest, prompts, keys):
        draw = lambda forced, noise: sample(adapters, rest, prompts, keys[0], forced, noise)
        return balanced_completions(draw, read, openings, B, G, tuple(keys), forced_in_loss)

    out = []
    for seed in seeds:
        keys = jax.random.split(jax.random.key(seed), 3)
        host = reference.rollout(adapters, rest, prompts, keys, (96, 96))
        out.append((host, one_pass(adapters, rest, prompts, keys), reference))
    return out


def _assert_same(host, device, frame_scale: float):
    tokens, mask, log_probs, decisions, boxes, _, flip = host
    completions, reading, flipped = device
    np.testing.assert_array_equal(np.asarray(flipped), flip)
    np.testing.assert_array_equal(np.asarray(completions.tokens), tokens)
    np.testing.assert_array_equal(np.asarray(completions.mask), mask)
    np.testing.assert_allclose(np.asarray(completions.log_probs), log_probs, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(reading.decision), decisions)
    np.testing.assert_allclose(np.asarray(reading.box) * frame_scale, boxes, rtol=1e-6)


def test_one_pass_equals_the_two_pass_rule_with_the_real_reader(base):
    """The random tiny model writes no call: every group is all FULL and flips one slot to an
    opening ``<tool_call>``; with ``forced_in_loss`` off those tokens leave the mask."""
    with fast_compile():
        [(host, device, reference)] = _both_rollouts(base, False, parity=False, seeds=[3])
    assert reference.decoding_passes == 2
    assert host[-1].sum() == B  # one flip per group
    _assert_same(host, device, frame_scale=2.0)  # 48-pixel frame, 96-pixel images
    flipped_rows = host[-1].reshape(-1)
    width = len(mllm_step.forced_openings(base)[REGION])
    assert not np.asarray(device.completions.mask)[flipped_rows, :width].any()
    opening = mllm_step.forced_openings(base)[REGION]
    np.testing.assert_array_equal(
        np.asarray(device.completions.tokens)[flipped_rows, :width], np.tile(opening, (B, 1))
    )


def test_one_pass_equals_the_two_pass_rule_in_both_directions(base):
    with fast_compile():
        runs = _both_rollouts(base, True, parity=True, seeds=range(4))
    seen = set()
    for host, device, _ in runs:
        _assert_same(host, device, frame_scale=1.0)
        flip, decisions = host[-1].reshape(-1), host[3]
        tokens = np.asarray(device.completions.tokens)
        for row in np.flatnonzero(flip):  # the flipped slot opens with the lacking decision
            group = slice(row - row % G, row - row % G + G)
            first = decisions[group][(np.arange(G) != row % G)][0]
            lacking = FULL if first == REGION else REGION
            opening = mllm_step.forced_openings(base)[lacking]
            np.testing.assert_array_equal(tokens[row, : len(opening)], opening)
            seen.add(lacking)
    assert seen == {FULL, REGION}


def _callbacks(jaxpr) -> list[str]:
    return sorted({line.split()[0] for line in str(jaxpr).split("=") if "callback" in line})


def test_step_program_has_no_host_callback_and_decodes_once(base, monkeypatch):
    calls = []

    def counting(*args, **kwargs):
        sample = sampler_fn(*args, **kwargs)
        return lambda *a: (calls.append(1), sample(*a))[1]

    monkeypatch.setattr(mllm_step, "sampler_fn", counting)
    cfg = step_config()
    mesh = parallel.make_mesh(data=1, devices=jax.devices()[:1])
    graphdef, adapters, rest, _ = update_inputs(base, cfg)
    optimizer = optax.sgd(0.1)
    step = mllm_step.make_step(cfg, base, graphdef, ColourScorer())(optimizer)
    frozen = {"kb": jnp.asarray(POOL), "scorer": None, "base": rest}
    batch = place_step_batch(base, QUESTIONS, mesh, judged_batch())
    jaxpr = jax.make_jaxpr(step)(TrainState.create(adapters, optimizer, 0), batch, frozen)
    assert calls == [1]  # one decoding loop per step
    assert "while" in str(jaxpr)
    assert _callbacks(jaxpr) == []
    # The check sees a callback where there is one.
    with_callback = jax.make_jaxpr(lambda x: jax.pure_callback(np.sin, x, x))(1.0)
    assert "callback" in str(with_callback)


@pytest.mark.parametrize(
    ("capacity", "view"), [(1, "stretch"), (3, "stretch"), (8, "stretch"), (3, "released")]
)
def test_crop_buffer_equals_scoring_every_action(capacity, view):
    rng = np.random.default_rng(0)
    b, g = 3, 4
    pixels = jnp.asarray(rng.integers(0, 256, (b, 32, 32, 3), dtype=np.uint8))
    decision = jnp.asarray(rng.random((b, g)) < 0.7, jnp.int32)
    corner = rng.uniform(-4, 20, (b, g, 2))
    boxes = jnp.asarray(np.concatenate([corner, corner + rng.uniform(1, 20, (b, g, 2))], -1))
    boxes = boxes.astype(jnp.float32)
    boxes = boxes.at[0, 0].set(jnp.asarray([5.0, 5.0, 5.0, 9.0]))  # zero width: invalid
    pool = jnp.asarray(np.tile(POOL, (b, 1, 1)))
    want = rerank.score_actions(colour_embed_jit, pixels, decision, boxes, pool, 8, view)
    got, trips = jax.jit(score_region_crops, static_argnums=(0, 6, 7, 8))(
        colour_embed_jit, pixels, decision, boxes, pool, want.base, 8, capacity, view
    )
    crops = int(((np.asarray(decision) == REGION) & np.asarray(want.box_valid)).sum())
    assert crops > capacity or capacity == 8  # several trips, and one
    assert int(trips) == -(-crops // capacity)
    np.testing.assert_allclose(np.asarray(got.scores), np.asarray(want.scores), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got.box_valid), np.asarray(want.box_valid))
    np.testing.assert_array_equal(np.asarray(got.crop_fails), np.asarray(want.crop_fails))


def colour_embed_jit(pixels):
    return colour_embed(None, pixels)
