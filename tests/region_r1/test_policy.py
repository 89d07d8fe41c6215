"""The crop policy's action distribution against numpy, its initial state, gradients, sharding,
and a supervised smoke run showing that it learns to localise from image + question."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxrank.data.synthetic import QUERY_PRESETS, World, WorldConfig, world_vocabulary
from jaxrank.data.vocabulary import PAD
from jaxrank.imaging import UNIT_MEAN, UNIT_STD, normalize, resize
from jaxrank.models.text import TextConfig
from jaxrank.models.vit import VisionConfig
from jaxrank.parallel import MODEL, batch_sharding, make_mesh
from jaxrank.region_r1.action import (
    FULL,
    REGION,
    PolicyOutput,
    action_log_prob,
    bins_to_boxes,
    boxes_to_bins,
    entropy,
    log_prob,
    mode,
    sample_boxes,
)
from jaxrank.region_r1.policy import CropPolicy, CropPolicyConfig, tiny_crop_policy

NUM_BINS = 6


def random_output(rng: np.random.Generator, batch: int = 3, num_bins: int = NUM_BINS):
    return PolicyOutput(
        decision_logits=jnp.asarray(rng.normal(size=(batch, 2)) * 2, jnp.float32),
        box_logits=jnp.asarray(rng.normal(size=(batch, 4, num_bins)) * 2, jnp.float32),
    )


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def small_config(**overrides) -> CropPolicyConfig:
    sizes = {"image_size": 16, "width": 32, "depth": 1, "fusion_depth": 1, "num_bins": NUM_BINS}
    return tiny_crop_policy(vocab_size=24, max_len=8, **{**sizes, **overrides})


def small_inputs(cfg: CropPolicyConfig, batch: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    size = cfg.vision.image_size
    pixels = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
    ids = rng.integers(3, cfg.text.vocab_size, (batch, cfg.text.max_len)).astype(np.int32)
    lengths = rng.integers(3, cfg.text.max_len + 1, batch)
    mask = np.arange(cfg.text.max_len)[None] < lengths[:, None]
    return pixels, jnp.asarray(np.where(mask, ids, PAD)), jnp.asarray(mask)


@nnx.jit
def forward(model: CropPolicy, *inputs: jax.Array) -> PolicyOutput:
    return model(*inputs)


def perturb(module: nnx.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Move every parameter off its initial value (the zero-initialised heads included)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(module, nnx.Param)
    values = jax.tree.map(
        lambda v: v + scale * rng.standard_normal(v.shape).astype(v.dtype),
        nnx.to_pure_dict(state),
    )
    nnx.replace_by_pure_dict(state, values)
    nnx.update(module, state)


# ----------------------------------------------------------------------------- action functions


def test_log_prob_matches_numpy_and_full_masks_the_box():
    rng = np.random.default_rng(0)
    out = random_output(rng)
    groups = 5
    decision = rng.integers(0, 2, (3, groups)).astype(np.int32)
    decision[0, 0], decision[0, 1] = FULL, REGION  # both kinds present whatever the draw
    bins = rng.integers(0, NUM_BINS, (3, groups, 4)).astype(np.int32)

    factor_logp, factor_mask = jax.jit(log_prob)(out, jnp.asarray(decision), jnp.asarray(bins))
    assert factor_logp.shape == factor_mask.shape == (3, groups, 5)
    assert factor_logp.dtype == jnp.float32 and factor_mask.dtype == jnp.bool_

    decision_lp = np_log_softmax(out.decision_logits)
    box_lp = np_log_softmax(out.box_logits)
    for b in range(3):
        for g in range(groups):
            region = decision[b, g] == REGION
            assert factor_mask[b, g].tolist() == [True] + [bool(region)] * 4
            np.testing.assert_allclose(factor_logp[b, g, 0], decision_lp[b, decision[b, g]], 1e-5)
            want = [box_lp[b, c, bins[b, g, c]] if region else 0.0 for c in range(4)]
            np.testing.assert_allclose(factor_logp[b, g, 1:], want, rtol=1e-5, atol=1e-6)

    total = action_log_prob(out, jnp.asarray(decision), jnp.asarray(bins))
    np.testing.assert_allclose(total, np.where(factor_mask, factor_logp, 0).sum(-1), rtol=1e-6)
    # FULL: the decision alone; REGION: decision + four coordinates.
    np.testing.assert_allclose(total[0, 0], decision_lp[0, FULL], rtol=1e-5)
    want_region = decision_lp[0, REGION] + sum(box_lp[0, c, bins[0, 1, c]] for c in range(4))
    np.testing.assert_allclose(total[0, 1], want_region, rtol=1e-5)


def test_log_prob_without_sample_dims_and_under_vmap():
    rng = np.random.default_rng(1)
    out = random_output(rng)
    decision = jnp.asarray([REGION, FULL, REGION], jnp.int32)
    bins = jnp.asarray(rng.integers(0, NUM_BINS, (3, 4)), jnp.int32)
    direct = action_log_prob(out, decision, bins)
    mapped = jax.vmap(action_log_prob)(out, decision, bins)
    grouped = action_log_prob(out, decision[:, None], bins[:, None])[:, 0]
    np.testing.assert_allclose(direct, mapped, rtol=1e-6)
    np.testing.assert_allclose(direct, grouped, rtol=1e-6)
    with pytest.raises(ValueError, match=r"bins shape \(3, 5\) must be decision shape"):
        log_prob(out, decision, jnp.zeros((3, 5), jnp.int32))


def test_sample_frequencies_match_softmax_and_mode_is_argmax():
    rng = np.random.default_rng(2)
    out = random_output(rng, batch=2)
    draws = 20_000
    bins = jax.jit(sample_boxes, static_argnums=2)(out, jax.random.key(0), draws)
    assert bins.shape == (2, draws, 4) and bins.dtype == jnp.int32
    probs = np.exp(np_log_softmax(out.box_logits))
    per_coordinate = np.moveaxis(np.asarray(bins), 1, -1).reshape(-1, draws)  # [B * 4, G]
    counts = np.stack([np.bincount(row, minlength=NUM_BINS) for row in per_coordinate])
    frequencies = counts.reshape(2, 4, NUM_BINS) / draws
    # 20k draws: one standard error is at most 0.0036, so 0.02 is over five of them.
    np.testing.assert_allclose(frequencies, probs, atol=0.02)

    decision, greedy = mode(out)
    np.testing.assert_array_equal(decision, np.argmax(out.decision_logits, -1))
    np.testing.assert_array_equal(greedy, np.argmax(out.box_logits, -1))


def test_bins_and_boxes_by_hand():
    size, n = 96, 16
    np.testing.assert_allclose(
        bins_to_boxes(jnp.asarray([0, 15, 5, 3]), size, n), [0, 96, 32, 19.2]
    )
    np.testing.assert_array_equal(
        boxes_to_bins(jnp.asarray([0.0, 96.0, 33.5, 35.3]), size, n), [0, 15, 5, 6]
    )
    np.testing.assert_array_equal(
        boxes_to_bins(jnp.asarray([-10.0, 200.0, 3.1, 3.3]), size, n), [0, 15, 0, 1]
    )
    every = jnp.arange(n * 16).reshape(2, 2, n, 4) % n  # extra leading dims
    round_trip = boxes_to_bins(bins_to_boxes(every, size, n), size, n)
    np.testing.assert_array_equal(round_trip, every)
    assert bins_to_boxes(every, size, n).dtype == jnp.float32


def test_entropy_matches_numpy():
    rng = np.random.default_rng(3)
    out = random_output(rng, batch=4)

    def np_entropy(logits):
        lp = np_log_softmax(logits)
        return -(np.exp(lp) * lp).sum(-1)

    p_region = np.exp(np_log_softmax(out.decision_logits))[:, REGION]
    want = np_entropy(out.decision_logits) + p_region * np_entropy(out.box_logits).sum(-1)
    np.testing.assert_allclose(jax.jit(entropy)(out), want, rtol=1e-5, atol=1e-6)
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), out)  # [2, B] leading dims
    np.testing.assert_allclose(entropy(stacked), np.stack([want, want]), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the module


def test_initial_policy_is_even_and_near_uniform():
    cfg = small_config(num_bins=16)
    model = CropPolicy(cfg, rngs=nnx.Rngs(0))
    out = forward(model, *small_inputs(cfg))
    assert out.decision_logits.shape == (4, 2) and out.box_logits.shape == (4, 4, 16)
    assert out.decision_logits.dtype == out.box_logits.dtype == jnp.float32
    np.testing.assert_array_equal(out.decision_logits, 0.0)
    probs = jax.nn.softmax(out.box_logits, axis=-1)
    np.testing.assert_allclose(probs, 1 / 16, rtol=0.1)
    np.testing.assert_allclose(entropy(out), math.log(2) + 2 * math.log(16), atol=1e-2)


def test_padding_is_ignored_and_the_question_matters():
    cfg = small_config()
    model = CropPolicy(cfg, rngs=nnx.Rngs(0))
    perturb(model)
    pixels, ids, mask = small_inputs(cfg)
    base = forward(model, pixels, ids, mask)
    repadded = forward(model, pixels, jnp.where(mask, ids, 5), mask)
    np.testing.assert_allclose(repadded.box_logits, base.box_logits, atol=1e-5)
    np.testing.assert_allclose(repadded.decision_logits, base.decision_logits, atol=1e-5)
    reworded = forward(model, pixels, jnp.where(mask, (ids + 1) % cfg.text.vocab_size, PAD), mask)
    assert not np.allclose(reworded.box_logits, base.box_logits, atol=1e-3)


def test_box_head_matches_numpy():
    cfg = small_config()
    model = CropPolicy(cfg, rngs=nnx.Rngs(0))
    perturb(model, scale=0.3)
    head = model.box_head
    rng = np.random.default_rng(4)
    grid = cfg.vision.grid_size
    patches = rng.normal(size=(2, grid * grid, cfg.vision.width))
    query = rng.normal(size=(2, cfg.text.width))
    got = head(jnp.asarray(patches, jnp.float32), jnp.asarray(query, jnp.float32))

    p = {
        "/".join(map(str, k)): np.asarray(v.get_value(), np.float64)
        for k, v in nnx.to_flat_state(nnx.state(head, nnx.Param))
    }
    width = cfg.vision.width
    q = (query @ p["query/kernel"] + p["query/bias"]).reshape(2, 4, width)
    k = patches @ p["key/kernel"] + p["key/bias"]
    scores = np.einsum("bcd,bnd->bnc", q, k) / np.sqrt(width)
    w = np.exp(scores - scores.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)  # over patches, per coordinate
    centre = (np.arange(grid) + 0.5) / grid
    xs, ys = np.tile(centre, grid), np.repeat(centre, grid)
    anchors = np.stack([xs, ys, xs, ys], -1)
    votes = anchors + patches @ p["offset/kernel"] + p["offset/bias"]
    mean = np.einsum("bnc,bnc->bc", w, votes) * (NUM_BINS - 1)
    log_prec = patches @ p["log_precision/kernel"] + p["log_precision/bias"]
    precision = np.exp(np.einsum("bnc,bnc->bc", w, log_prec))
    want = -0.5 * precision[..., None] * (np.arange(NUM_BINS) - mean[..., None]) ** 2
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def action_log_prob_grads(model: CropPolicy, decision: int):
    cfg = model.config
    pixels, ids, mask = small_inputs(cfg)
    decisions = jnp.full((4, 3), decision, jnp.int32)
    bins = jnp.asarray(np.random.default_rng(5).integers(0, cfg.num_bins, (4, 3, 4)), jnp.int32)
    return _grads(model, pixels, ids, mask, decisions, bins)


@nnx.jit
def _grads(model, pixels, ids, mask, decisions, bins):
    def objective(m: CropPolicy) -> jax.Array:
        return action_log_prob(m(pixels, ids, mask), decisions, bins).sum()

    return nnx.grad(objective)(model)


def test_gradients_flow_for_region_and_skip_the_box_head_for_full():
    model = CropPolicy(small_config(), rngs=nnx.Rngs(0))
    region = action_log_prob_grads(model, REGION)
    leaves = jax.tree.leaves(region)
    assert all(np.isfinite(leaf).all() for leaf in leaves)
    assert all(np.abs(leaf).sum() > 0 for leaf in jax.tree.leaves(nnx.state(region)["box_head"])), (
        "every box-head parameter should learn from REGION actions"
    )
    vision_norm = optax.tree.norm(nnx.state(region)["vision"])
    assert np.isfinite(vision_norm) and vision_norm > 0

    full = action_log_prob_grads(model, FULL)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(full))
    for leaf in jax.tree.leaves(nnx.state(full)["box_head"]):
        np.testing.assert_array_equal(leaf, 0.0)
    assert np.abs(nnx.state(full)["decision_head"]["kernel"][...]).sum() > 0


def test_sharded_policy_matches_single_device():
    cfg = small_config(image_size=32, heads=4)
    single = CropPolicy(cfg, rngs=nnx.Rngs(0))
    perturb(single)
    pixels, ids, mask = small_inputs(cfg, batch=8)
    want = forward(single, pixels, ids, mask)

    mesh = make_mesh(data=4, model=2)
    with jax.set_mesh(mesh):
        sharded = CropPolicy(cfg, rngs=nnx.Rngs(1))
        block = sharded.fusion.encoder.blocks[0]
        assert block.mlp.fc1.kernel[...].sharding.spec == P(None, MODEL)
        assert block.attn.out_proj.kernel[...].sharding.spec == P(MODEL, None)
        state = nnx.state(sharded)
        placed = jax.tree.map(
            lambda value, target: jax.device_put(value, target.sharding),
            nnx.to_pure_dict(nnx.state(single)),
            nnx.to_pure_dict(state),
        )
        nnx.replace_by_pure_dict(state, placed)
        nnx.update(sharded, state)
        batch = [jax.device_put(x, batch_sharding(mesh, x.ndim)) for x in (pixels, ids, mask)]
        got = forward(sharded, *batch)
        assert got.box_logits.sharding.spec[0] == "data"
    np.testing.assert_allclose(got.decision_logits, want.decision_logits, atol=1e-5)
    np.testing.assert_allclose(got.box_logits, want.box_logits, rtol=1e-5, atol=1e-5)


VISION = VisionConfig(16, 8, 32, 1, 4, 64, pool="mean")
TEXT = TextConfig(24, 8, 32, 1, 4, 64, causal=False, pool="mean")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fusion_depth": 0}, r"CropPolicyConfig\.fusion_depth=0"),
        ({"num_bins": 1}, r"CropPolicyConfig\.num_bins=1"),
        ({"dtype": jnp.int32}, r"CropPolicyConfig\.dtype='int32'"),
        ({"param_dtype": "nope"}, r"CropPolicyConfig\.param_dtype='nope'"),
        (
            {"vision": dataclasses.replace(VISION, class_token=False, pool="map")},
            r"CropPolicyConfig\.vision\.pool='map'",
        ),
    ],
)
def test_bad_config_names_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        CropPolicyConfig(**{"vision": VISION, "text": TEXT, **overrides})


# ----------------------------------------------------------------------------- learnability

SCENE_BINS = 16
STEPS = 1200
BATCH = 16


@jax.jit
def _to_policy_pixels(images: jax.Array) -> jax.Array:
    return normalize(resize(images, 48), UNIT_MEAN, UNIT_STD)


def synthetic_scenes(world: World, split: str, count: int):
    """Default-preset scenes asked about by position: (pixels at the policy's 48 px, question
    ids, mask), ground-truth box bins, and the region each question names."""
    qcfg = dataclasses.replace(QUERY_PRESETS["default"], question_kind="position")
    queries = world.queries(split, count, qcfg)
    ids = world_vocabulary().encode(queries["questions"], 16)
    pixels = _to_policy_pixels(jnp.asarray(queries["images"]))
    bins = np.asarray(boxes_to_bins(queries["boxes"], world.config.image_size, SCENE_BINS))
    return (
        (pixels, jnp.asarray(ids), jnp.asarray(ids != PAD)),
        bins,
        np.asarray(queries["question_cues"]),
    )


def train_supervised(graphdef, params, rest, inputs, bins):
    """Maximise log pi(REGION, ground-truth bins) with Adam: all steps in one compiled scan."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 100, STEPS, 1.5e-4)
    tx = optax.adam(schedule)
    bins = jnp.asarray(bins)
    region = jnp.full((BATCH,), REGION, jnp.int32)

    def step(carry, key):
        params, opt_state = carry
        rows = jax.random.choice(key, bins.shape[0], (BATCH,), replace=False)

        def loss(params):
            out = nnx.merge(graphdef, params, rest)(*(x[rows] for x in inputs))
            return -action_log_prob(out, region, bins[rows]).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    @jax.jit
    def run(params, key):
        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, STEPS))
        return params

    return run(params, jax.random.key(0))


def test_supervised_policy_localises_from_image_and_question():
    """Trained on the ground-truth boxes, the policy must beat a uniform policy, and also the
    best image-blind guess: the median training box of the region the question names. Beating
    that needs the image (where exactly the object sits, how large it is) and the question
    (which object) together; showing each held-out question another scene's image must then
    hurt."""
    world = World(WorldConfig())
    train_inputs, train_bins, train_cues = synthetic_scenes(world, "train", 1024)
    test_inputs, test_bins, test_cues = synthetic_scenes(world, "val", 256)

    uniform_error = np.abs(np.arange(SCENE_BINS) - test_bins[..., None]).mean()
    medians = {cue: np.median(train_bins[train_cues == cue], axis=0) for cue in set(train_cues)}
    question_only_error = np.abs(np.stack([medians[c] for c in test_cues]) - test_bins).mean()

    cfg = tiny_crop_policy(world_vocabulary().size, width=32, depth=1, num_bins=SCENE_BINS)
    graphdef, params, rest = nnx.split(CropPolicy(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    params = train_supervised(graphdef, params, rest, train_inputs, train_bins)

    greedy = jax.jit(lambda params, *xs: mode(nnx.merge(graphdef, params, rest)(*xs))[1])
    error = np.abs(greedy(params, *test_inputs) - test_bins).mean()
    other_images = (jnp.roll(test_inputs[0], 1, axis=0), *test_inputs[1:])
    mismatched_error = np.abs(greedy(params, *other_images) - test_bins).mean()
    print(
        f"mean |bin error|: policy {error:.3f}, with another scene's image "
        f"{mismatched_error:.3f}, question-only {question_only_error:.3f}, "
        f"uniform {uniform_error:.3f}"
    )
    assert error < 0.6 * uniform_error
    assert error < 0.95 * question_only_error
    assert mismatched_error > 1.2 * error
