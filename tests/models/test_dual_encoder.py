"""The dual encoder against plain-numpy re-implementations that read the module's own weights,
plus the invariances (causality, padding), sharding and functional round trips it promises."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxrank.models import (
    DualEncoder,
    DualEncoderConfig,
    MultiHeadAttention,
    TextConfig,
    TextTransformer,
    VisionConfig,
    VisionTransformer,
    tiny_clip,
    tiny_siglip,
)
from jaxrank.parallel import MODEL, batch_sharding, make_mesh

# ----------------------------------------------------------------------------- numpy reference


def np_params(module: nnx.Module) -> dict[str, np.ndarray]:
    """Every parameter as float64, keyed by its '/'-joined path."""
    return {
        "/".join(map(str, path)): np.asarray(var.get_value(), np.float64)
        for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param))
    }


def perturb(module: nnx.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Move every parameter off its initial value, so zero biases and unit LayerNorm scales
    cannot hide a misplaced or missing parameter."""
    rng = np.random.default_rng(seed)
    state = nnx.state(module, nnx.Param)
    values = jax.tree.map(
        lambda v: v + scale * rng.standard_normal(v.shape).astype(v.dtype),
        nnx.to_pure_dict(state),
    )
    nnx.replace_by_pure_dict(state, values)
    nnx.update(module, state)


NP_ACTIVATIONS = {
    "gelu": lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: (
        0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    ),
    "quick_gelu": lambda x: x / (1.0 + np.exp(-1.702 * x)),
    "relu": lambda x: np.maximum(x, 0.0),
}


def np_linear(x, p, name):
    y = x @ p[f"{name}/kernel"]
    return y + p[f"{name}/bias"] if f"{name}/bias" in p else y


def np_layer_norm(x, p, name, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p[f"{name}/scale"] + p[f"{name}/bias"]


def np_attention(x, context, p, name, heads, key_mask=None, causal=False):
    q = np_linear(x, p, f"{name}/q_proj")
    k = np_linear(context, p, f"{name}/k_proj")
    v = np_linear(context, p, f"{name}/v_proj")
    batch, n_q, width = q.shape
    n_k, d = k.shape[1], width // heads
    out = np.zeros_like(q)
    for b in range(batch):
        allowed = np.ones((n_q, n_k), bool)
        if causal:
            allowed &= np.tril(allowed)
        if key_mask is not None:
            allowed &= np.asarray(key_mask[b], bool)[None, :]
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            scores = np.where(allowed, q[b, :, cols] @ k[b, :, cols].T / math.sqrt(d), -np.inf)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            out[b, :, cols] = (weights / weights.sum(-1, keepdims=True)) @ v[b, :, cols]
    return np_linear(out, p, f"{name}/out_proj")


def np_mlp(x, p, name, act):
    return np_linear(NP_ACTIVATIONS[act](np_linear(x, p, f"{name}/fc1")), p, f"{name}/fc2")


def np_encoder(x, p, name, depth, heads, act, eps, key_mask=None, causal=False):
    for i in range(depth):
        blk = f"{name}/blocks/{i}"
        h = np_layer_norm(x, p, f"{blk}/attn_norm", eps)
        x = x + np_attention(h, h, p, f"{blk}/attn", heads, key_mask, causal)
        x = x + np_mlp(np_layer_norm(x, p, f"{blk}/mlp_norm", eps), p, f"{blk}/mlp", act)
    return x


def np_vision(cfg: VisionConfig, p, pixels):
    """Patches cut by reshaping and embedded by a matmul: an independent check of the conv."""
    b, s, c, g = pixels.shape[0], cfg.patch_size, cfg.channels, cfg.grid_size
    patches = pixels.reshape(b, g, s, g, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1)
    x = patches @ p["patch_embedding/kernel"].reshape(s * s * c, cfg.width)
    if cfg.patch_bias:
        x = x + p["patch_embedding/bias"]
    if cfg.class_token:
        x = np.concatenate([np.broadcast_to(p["class_embedding"], (b, 1, cfg.width)), x], 1)
    x = x + p["position_embedding"]
    eps = cfg.layer_norm_eps
    if cfg.pre_norm:
        x = np_layer_norm(x, p, "pre_norm", eps)
    x = np_encoder(x, p, "encoder", cfg.depth, cfg.heads, cfg.act, eps)
    if cfg.post_norm:
        x = np_layer_norm(x, p, "post_norm", eps)
    if cfg.pool == "cls":
        return x[:, 0], x
    if cfg.pool == "mean":
        return x[:, int(cfg.class_token) :].mean(1), x
    probe = np.broadcast_to(p["head/probe"], (b, 1, cfg.width))
    pooled = np_attention(probe, x, p, "head/attn", cfg.heads)
    pooled = pooled + np_mlp(np_layer_norm(pooled, p, "head/norm", eps), p, "head/mlp", cfg.act)
    return pooled[:, 0], x


def np_text(cfg: TextConfig, p, ids, mask):
    x = p["token_embedding/embedding"][ids] + p["position_embedding"][: ids.shape[1]]
    eps = cfg.layer_norm_eps
    x = np_encoder(x, p, "encoder", cfg.depth, cfg.heads, cfg.act, eps, mask, cfg.causal)
    return np_layer_norm(x, p, "final_norm", eps)


@nnx.jit
def forward(module: nnx.Module, *args):
    """One compiled call instead of op-by-op dispatch, which is slow on CPU."""
    return module(*args)


def close(actual, expected, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize(
    ("causal", "padded"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_self_attention_matches_numpy(causal, padded):
    attn = MultiHeadAttention(16, 4, rngs=nnx.Rngs(0))
    perturb(attn)
    x = np.random.default_rng(1).standard_normal((2, 6, 16)).astype(np.float32)
    key_mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]) if padded else None
    out = attn(jnp.asarray(x), key_mask=key_mask, causal=causal)
    p = {f"attn/{k}": v for k, v in np_params(attn).items()}
    close(out, np_attention(x.astype(np.float64), x, p, "attn", 4, key_mask, causal))


def test_cross_attention_matches_numpy():
    attn = MultiHeadAttention(16, 2, rngs=nnx.Rngs(0))
    perturb(attn)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 1, 16)).astype(np.float32)
    context = rng.standard_normal((2, 5, 16)).astype(np.float32)
    p = {f"attn/{k}": v for k, v in np_params(attn).items()}
    expected = np_attention(x.astype(np.float64), context.astype(np.float64), p, "attn", 2)
    close(attn(jnp.asarray(x), jnp.asarray(context)), expected)


def test_query_with_no_visible_key_gives_finite_output():
    attn = MultiHeadAttention(8, 2, rngs=nnx.Rngs(0))
    out = attn(jnp.ones((1, 3, 8)), key_mask=jnp.zeros((1, 3), bool))
    assert np.isfinite(np.asarray(out)).all()


# ----------------------------------------------------------------------------- towers vs numpy

SIGLIP_VISION_LAYOUT = {
    "act": "gelu_tanh",
    "layer_norm_eps": 1e-6,
    "class_token": False,
    "patch_bias": True,
    "pre_norm": False,
    "pool": "map",
}
VISION_VARIANTS = {
    "clip": VisionConfig(16, 4, 32, 2, 4, 64),
    "siglip": VisionConfig(16, 4, 32, 2, 4, 64, **SIGLIP_VISION_LAYOUT),
    "mean": VisionConfig(16, 8, 32, 1, 2, 48, act="gelu", pool="mean", post_norm=False),
}


@pytest.mark.parametrize("variant", list(VISION_VARIANTS))
def test_vision_transformer_matches_numpy(variant):
    cfg = VISION_VARIANTS[variant]
    vit = VisionTransformer(cfg, rngs=nnx.Rngs(0))
    perturb(vit)
    pixels = np.random.default_rng(3).standard_normal((2, 16, 16, 3)).astype(np.float32)
    pooled, tokens = forward(vit, jnp.asarray(pixels))
    want_pooled, want_tokens = np_vision(cfg, np_params(vit), pixels.astype(np.float64))
    assert tokens.shape == (2, cfg.num_tokens, cfg.width)
    close(tokens, want_tokens, rtol=1e-4, atol=1e-4)
    close(pooled, want_pooled, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pool", ["eos", "last"])
def test_text_transformer_matches_numpy(pool):
    cfg = TextConfig(50, 8, 32, 2, 4, 64, causal=pool == "eos", pool=pool, eos_token_id=49)
    text = TextTransformer(cfg, rngs=nnx.Rngs(0))
    perturb(text)
    ids = np.array([[3, 7, 9, 49, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10, 11, 49]], np.int32)
    mask = (np.arange(8) < np.array([[4], [8]])).astype(np.int32)
    pooled, tokens = forward(text, jnp.asarray(ids), jnp.asarray(mask))
    want = np_text(cfg, np_params(text), ids, mask)
    close(tokens[0, :4], want[0, :4], rtol=1e-4, atol=1e-4)
    close(tokens[1], want[1], rtol=1e-4, atol=1e-4)
    close(pooled, np.stack([want[0, 3], want[1, 7]]), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- text invariances


def small_text(**overrides) -> TextTransformer:
    fields = {"causal": False, "pool": "mean", "eos_token_id": 63, **overrides}
    text = TextTransformer(TextConfig(64, 10, 32, 2, 4, 64, **fields), rngs=nnx.Rngs(0))
    perturb(text)
    return text


def test_causal_text_ignores_later_tokens():
    text = small_text(causal=True)
    ids = np.random.default_rng(4).integers(0, 64, (2, 10)).astype(np.int32)
    changed = ids.copy()
    changed[:, 6:] = (changed[:, 6:] + 17) % 64
    _, before = forward(text, jnp.asarray(ids))
    _, after = forward(text, jnp.asarray(changed))
    close(after[:, :6], np.asarray(before[:, :6], np.float64), rtol=1e-6, atol=1e-6)
    assert not np.allclose(after[:, 6:], before[:, 6:])


@pytest.mark.parametrize(
    ("pool", "causal", "eos_token_id"),
    [
        ("eos", True, 63),
        ("eos", True, None),
        ("last", False, None),
        ("mean", False, None),
        ("first", False, None),
    ],
)
def test_pooled_text_ignores_padding(pool, causal, eos_token_id):
    text = small_text(pool=pool, causal=causal, eos_token_id=eos_token_id)
    rng = np.random.default_rng(5)
    lengths = np.array([[4], [7]])
    ids = rng.integers(0, 60, (2, 10)).astype(np.int32)
    ids[np.arange(2), lengths[:, 0] - 1] = 63
    mask = (np.arange(10) < lengths).astype(np.int32)
    repadded = np.where(mask, ids, rng.integers(0, 64, (2, 10))).astype(np.int32)
    repadded[0, 8] = 63  # an end-of-text id (the largest id) among the padding
    pooled, _ = forward(text, jnp.asarray(ids), jnp.asarray(mask))
    pooled_repadded, _ = forward(text, jnp.asarray(repadded), jnp.asarray(mask))
    close(pooled_repadded, np.asarray(pooled, np.float64), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- dual encoder


def inputs(cfg: DualEncoderConfig, batch: int = 8, seed: int = 6):
    rng = np.random.default_rng(seed)
    size, channels = cfg.vision.image_size, cfg.vision.channels
    pixels = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
    ids = rng.integers(0, cfg.text.vocab_size - 1, (batch, cfg.text.max_len)).astype(np.int32)
    lengths = rng.integers(2, cfg.text.max_len + 1, (batch, 1))
    ids[np.arange(batch), lengths[:, 0] - 1] = cfg.text.vocab_size - 1
    mask = (np.arange(cfg.text.max_len) < lengths).astype(np.int32)
    return jnp.asarray(pixels), jnp.asarray(ids), jnp.asarray(mask)


TINY = {
    "clip": lambda **kw: tiny_clip(image_size=16, patch_size=8, width=32, vocab_size=64, **kw),
    "siglip": lambda **kw: tiny_siglip(image_size=16, patch_size=8, width=32, vocab_size=64, **kw),
}


@pytest.mark.parametrize("family", list(TINY))
def test_embeddings_are_unit_norm_and_bfloat16_agrees(family):
    cfg = TINY[family]()
    model = DualEncoder(cfg, rngs=nnx.Rngs(0))
    low = DualEncoder(dataclasses.replace(cfg, dtype=jnp.bfloat16), rngs=nnx.Rngs(0))
    pixels, ids, mask = inputs(cfg)
    out, out_low = forward(model, pixels, ids, mask), forward(low, pixels, ids, mask)
    for emb in (out.image_embeds, out.text_embeds, out_low.image_embeds, out_low.text_embeds):
        assert emb.dtype == jnp.float32 and emb.shape == (8, cfg.embed_dim)
        close(jnp.linalg.norm(emb, axis=-1), np.ones(8), rtol=0, atol=1e-5)
    assert np.min(np.sum(out.image_embeds * out_low.image_embeds, -1)) > 0.98
    assert np.min(np.sum(out.text_embeds * out_low.text_embeds, -1)) > 0.98
    assert (out.logit_bias is None) == (family == "clip")


def test_pair_embedding_is_normalised_sum():
    cfg = TINY["clip"]()
    model = DualEncoder(cfg, rngs=nnx.Rngs(0))
    pixels, ids, mask = inputs(cfg)
    image, text, pair = nnx.jit(
        lambda m, *xs: (m.encode_image(xs[0]), m.encode_text(*xs[1:]), m.encode_pair(*xs))
    )(model, pixels, ids, mask)
    total = np.asarray(image, np.float64) + np.asarray(text, np.float64)
    close(pair, total / np.linalg.norm(total, axis=-1, keepdims=True), atol=1e-6)


def test_model_built_without_mesh_keeps_sharding_annotations():
    model = DualEncoder(TINY["clip"](), rngs=nnx.Rngs(0))
    specs = nnx.get_partition_spec(nnx.state(model))
    block = specs["image"]["tower"]["encoder"]["blocks"][0]
    assert block["mlp"]["fc1"]["kernel"].get_value() == P(None, MODEL)
    assert block["attn"]["out_proj"]["kernel"].get_value() == P(MODEL, None)
    assert block["attn_norm"]["scale"].get_value() == P()


@pytest.mark.parametrize("family", list(TINY))
def test_sharded_model_matches_single_device(family):
    cfg = TINY[family]()
    single = DualEncoder(cfg, rngs=nnx.Rngs(0))
    perturb(single)
    pixels, ids, mask = inputs(cfg)
    want = forward(single, pixels, ids, mask)

    mesh = make_mesh(data=4, model=2)
    with jax.set_mesh(mesh):
        sharded = DualEncoder(cfg, rngs=nnx.Rngs(1))
        block = sharded.text.tower.encoder.blocks[0]
        assert block.mlp.fc1.kernel[...].sharding.spec == P(None, MODEL)
        assert block.mlp.fc2.kernel[...].sharding.spec == P(MODEL, None)
        assert block.attn.q_proj.kernel[...].sharding.spec == P(None, MODEL)
        assert block.attn.out_proj.kernel[...].sharding.spec == P(MODEL, None)

        state = nnx.state(sharded)
        placed = jax.tree.map(
            lambda value, target: jax.device_put(value, target.sharding),
            nnx.to_pure_dict(nnx.state(single)),
            nnx.to_pure_dict(state),
        )
        nnx.replace_by_pure_dict(state, placed)
        nnx.update(sharded, state)
        assert block.mlp.fc1.kernel[...].sharding.spec == P(None, MODEL)

        batch = [jax.device_put(x, batch_sharding(mesh, x.ndim)) for x in (pixels, ids, mask)]
        got = forward(sharded, *batch)
    close(got.image_embeds, np.asarray(want.image_embeds, np.float64), atol=1e-6)
    close(got.text_embeds, np.asarray(want.text_embeds, np.float64), atol=1e-6)


def test_split_merge_and_pure_jit_match_stateful_module():
    cfg = TINY["siglip"]()
    model = DualEncoder(cfg, rngs=nnx.Rngs(0))
    perturb(model)
    pixels, ids, mask = inputs(cfg)
    want = forward(model, pixels, ids, mask)

    graphdef, state = nnx.split(model)

    @jax.jit
    def embed(state, pixels, ids, mask):
        return nnx.merge(graphdef, state)(pixels, ids, mask)

    got = embed(state, pixels, ids, mask)
    for name in ("image_embeds", "text_embeds", "logit_scale", "logit_bias"):
        close(getattr(got, name), np.asarray(getattr(want, name), np.float64), atol=1e-6)
    merged = forward(nnx.merge(graphdef, state), pixels, ids, mask)
    close(merged.text_embeds, np.asarray(want.text_embeds, np.float64), atol=1e-6)


# ----------------------------------------------------------------------------- validation

VISION = {"image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "heads": 4, "mlp_dim": 64}
TEXT = {"vocab_size": 64, "max_len": 8, "width": 32, "depth": 1, "heads": 4, "mlp_dim": 64}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: VisionConfig(**{**VISION, "image_size": 30}), r"VisionConfig\.image_size=30"),
        (lambda: VisionConfig(**{**VISION, "heads": 5}), r"VisionConfig\.width=32 .*heads=5"),
        (lambda: VisionConfig(**{**VISION, "depth": 0}), r"VisionConfig\.depth=0"),
        (lambda: VisionConfig(**VISION, act="swish"), r"VisionConfig\.act='swish'"),
        (lambda: VisionConfig(**VISION, pool="max"), r"VisionConfig\.pool='max'"),
        (lambda: VisionConfig(**VISION, class_token=False), r"VisionConfig\.pool='cls'"),
        (lambda: TextConfig(**{**TEXT, "heads": 3}), r"TextConfig\.width=32"),
        (lambda: TextConfig(**TEXT, pool="cls"), r"TextConfig\.pool='cls'"),
        (lambda: TextConfig(**TEXT, eos_token_id=64), r"TextConfig\.eos_token_id=64"),
        (
            lambda: DualEncoderConfig(
                VisionConfig(**VISION), TextConfig(**TEXT), 16, vision_projection=False
            ),
            r"DualEncoderConfig\.embed_dim=16 .*vision\.width=32",
        ),
        (
            lambda: DualEncoderConfig(
                VisionConfig(**VISION), TextConfig(**TEXT), 16, dtype=jnp.int32
            ),
            r"DualEncoderConfig\.dtype='int32'",
        ),
        (
            lambda: DualEncoderConfig(VisionConfig(**VISION), TextConfig(**TEXT), 0),
            r"DualEncoderConfig\.embed_dim=0",
        ),
    ],
)
def test_bad_config_names_the_field(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_wrong_input_shapes_are_refused():
    cfg = TINY["clip"]()
    model = DualEncoder(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"pixels must have shape \[B, 16, 16, 3\]"):
        model.encode_image(jnp.zeros((1, 3, 16, 16)))
    with pytest.raises(ValueError, match=r"TextConfig\.max_len=16"):
        model.encode_text(jnp.zeros((1, 17), jnp.int32))
