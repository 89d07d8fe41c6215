"""Scanned and rematerialised layer stacks (``models.layer_stack``) against the unrolled models
they replace, loaded from the same transformers checkpoints: Qwen2.5-VL (window and full
attention blocks, M-RoPE decoder) forward, gradient and KV-cache decoding; CLIP's towers
forward; LoRA adapters on stacked linears; export of a scanned model back to per-layer
tensors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util
from hf_checkpoints import reference_inputs as clip_inputs
from hf_checkpoints import tiny_checkpoint
from qwen_checkpoints import jaxrank_inputs, tiny_vlm

from jaxrank.models.hf.export import checkpoint_tensors
from jaxrank.models.hf.files import SafetensorsCheckpoint
from jaxrank.models.hf.loading import load_pretrained, name_map
from jaxrank.models.hf.qwen2_vl import load_vlm
from jaxrank.models.hf.qwen_vision import load_vision_tower
from jaxrank.models.layer_stack import Stacking
from jaxrank.models.lm import KVCache
from jaxrank.models.lora import LoRAConfig, LoRAParam, apply_lora

pytest.importorskip("torch")

SCANNED = Stacking(scan=True, remat=True)


@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2_5_vl")
    tiny_vlm(folder, "qwen2_5_vl")
    return folder


@pytest.fixture(scope="module")
def vlms(vlm_folder):
    """The checkpoint loaded unrolled, and scanned + rematerialised."""
    return tuple(load_vlm(vlm_folder, stacking=s).model for s in (Stacking(), SCANNED))


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(nnx.to_pure_dict(tree))


def _as_stacked(flat: dict) -> dict:
    """An unrolled model's flat parameters in a scanned model's layout: every
    ``(..., layers|blocks, i, ...)`` path stacked over i (an independent re-implementation of
    the loaders' stacking, for comparing the two models' trees)."""
    groups: dict = {}
    for path, value in flat.items():
        cut = next((j for j, key in enumerate(path) if isinstance(key, int)), None)
        if cut is None:
            groups[path] = value
        else:
            groups.setdefault((*path[:cut], *path[cut + 1 :]), {})[path[cut]] = value
    return {
        path: np.stack([v[i] for i in sorted(v)]) if isinstance(v, dict) else np.asarray(v)
        for path, v in groups.items()
    }


def _logits(model, batch) -> np.ndarray:
    forward = nnx.jit(lambda m, *x: m(*x, grids=batch.grids).logits)
    return np.asarray(forward(model, batch.tokens, batch.mask, batch.positions, batch.patches))


def _logits_and_grad(model, batch):
    """Logits, and the gradient of a fixed random projection of them, w.r.t. every parameter."""
    patches = jnp.asarray(batch.patches)
    weights = jax.random.normal(jax.random.key(0), (*batch.tokens.shape, 272))
    mask = jnp.asarray(batch.mask)[..., None]

    def loss(model):
        logits = model(batch.tokens, batch.mask, batch.positions, patches, grids=batch.grids).logits
        return jnp.sum(jnp.where(mask, logits * weights, 0.0)), logits

    (_, logits), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    return np.asarray(logits), _flat(grads)


def test_scanned_vlm_matches_unrolled_forward_and_gradient(vlm_folder, vlms):
    batch = jaxrank_inputs(vlm_folder, True)
    unrolled, scanned = vlms
    assert scanned.language_model.layers.mlp.up_proj.kernel.shape == (2, 48, 64)
    real = batch.mask.astype(bool)
    want_logits, want_grads = _logits_and_grad(unrolled, batch)
    got_logits, got_grads = _logits_and_grad(scanned, batch)
    np.testing.assert_allclose(got_logits[real], want_logits[real], atol=1e-5, rtol=0)
    want_grads = _as_stacked(want_grads)
    assert set(got_grads) == set(want_grads)
    for path, want in want_grads.items():
        scale = max(np.abs(want).max(), 1.0)
        np.testing.assert_allclose(got_grads[path], want, atol=1e-5 * scale, rtol=0, err_msg=path)


def test_scanned_decoder_decodes_over_its_stacked_cache(vlms):
    """Prefill then three one-token steps through the KV cache: the same logits and cache."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 272, (2, 9)))
    outputs = []
    for vlm in vlms:
        lm = vlm.language_model

        @nnx.jit
        def run(lm, tokens):
            cache = KVCache.empty(lm.config, 2, 12, jnp.float32)
            out = lm(tokens[:, :6], cache=cache)
            logits = [out.logits]
            for t in range(6, 9):
                out = lm(tokens[:, t : t + 1], cache=out.cache)
                logits.append(out.logits)
            return jnp.concatenate(logits, axis=1), out.cache

        logits, cache = run(lm, tokens)
        outputs.append((np.asarray(logits), np.stack(cache.keys), np.stack(cache.values)))
    for want, got in zip(*outputs, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_lora_on_stacked_linears_equals_lora_on_each_layer(vlm_folder, vlms):
    """Adapters on a scanned model have a layer axis; with the unrolled model's adapters
    (random B) stacked into them the two models agree."""
    batch = jaxrank_inputs(vlm_folder, True)
    config = LoRAConfig(rank=2, alpha=4.0)
    unrolled, scanned = (
        apply_lora(nnx.clone(m), config, nnx.Rngs(params=1, dropout=2)) for m in vlms
    )
    assert scanned.language_model.layers.self_attn.q_proj.lora_a.shape == (2, 48, 2)
    adapters = _flat(nnx.state(unrolled, LoRAParam))
    rng = np.random.default_rng(1)
    adapters = {path: value + rng.normal(0, 0.3, value.shape) for path, value in adapters.items()}
    nnx.update(unrolled, nnx.State(traverse_util.unflatten_dict(adapters)))
    stacked = jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(_as_stacked(adapters)))
    nnx.update(scanned, nnx.State(stacked))
    want, got = _logits(unrolled, batch), _logits(scanned, batch)
    real = batch.mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=0)


def test_scanned_clip_matches_and_exports_per_layer_tensors(tmp_path):
    tiny_checkpoint(tmp_path, "clip")
    pixels, ids, mask = clip_inputs(tmp_path, "clip")
    unrolled = load_pretrained(tmp_path)
    scanned = load_pretrained(tmp_path, stacking=SCANNED)

    @nnx.jit
    def embed(model):
        out = model(jnp.asarray(pixels.transpose(0, 2, 3, 1)), jnp.asarray(ids), jnp.asarray(mask))
        return out.image_embeds, out.text_embeds

    for want, got in zip(embed(unrolled.model), embed(scanned.model), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
    family = unrolled.family
    from jaxrank.models.hf.clip import CLIP

    assert family == CLIP.name
    checkpoint = SafetensorsCheckpoint(tmp_path)
    prefixes = {"image": "vision_model.", "text": "text_model."}
    rules = name_map(CLIP, unrolled.towers, ("image", "text"), prefixes)
    exported = checkpoint_tensors(scanned.model, rules)
    for name, value in exported.items():
        np.testing.assert_array_equal(value, checkpoint.read(name), err_msg=name)


def test_scanned_qwen2_vl_tower_matches_unrolled(tmp_path):
    """Qwen2-VL's tower has no window attention: every scanned block sees whole images."""
    tiny_vlm(tmp_path, "qwen2_vl")
    batch = jaxrank_inputs(tmp_path, True)
    outputs = [
        np.asarray(nnx.jit(lambda m, p: m(p, batch.grids))(tower, jnp.asarray(batch.patches)))
        for tower in (
            load_vision_tower(tmp_path).model,
            load_vision_tower(tmp_path, stacking=SCANNED).model,
        )
    ]
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5, rtol=0)
