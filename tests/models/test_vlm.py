"""Qwen2-VL and Qwen2.5-VL end to end against transformers: a tiny random checkpoint with a
tokenizer, chat template and image processor, loaded by jaxrank; token ids and M-RoPE
positions equal the reference processor's and model's, logits equal for image+text and
text-only batches (left-padded, photos of different sizes), greedy decoding equals
``generate``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from qwen_checkpoints import VARIANTS, jaxrank_inputs, reference_inputs, tiny_vlm

from jaxrank.models.hf.export_decoder import save_decoder
from jaxrank.models.hf.qwen2_vl import load_vlm
from jaxrank.models.lora import LoRAConfig, LoRALinear, apply_lora, merge_lora
from jaxrank.parallel import make_mesh
from jaxrank.rl.sampler import SamplingSettings, generate

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=VARIANTS)
def checkpoint(request, tmp_path_factory):
    """(folder, PyTorch model, transformers processor) of a tiny random VL checkpoint."""
    folder = tmp_path_factory.mktemp(request.param)
    return folder, *tiny_vlm(folder, request.param)


def _logits(model, batch) -> np.ndarray:
    forward = jax.jit(lambda m, *x: m(*x, grids=batch.grids).logits)
    patches = None if batch.patches is None else jnp.asarray(batch.patches)
    return np.asarray(forward(model, batch.tokens, batch.mask, batch.positions, patches))


@pytest.mark.parametrize("with_images", [True, False], ids=["image+text", "text"])
def test_inputs_and_logits_match_transformers(checkpoint, with_images):
    folder, reference, processor = checkpoint
    want_inputs = reference_inputs(processor, with_images)
    batch = jaxrank_inputs(folder, with_images)
    # Same ids (after aligning the left padding to our bucket) and the same M-RoPE positions.
    ids, mask = want_inputs["input_ids"].numpy(), want_inputs["attention_mask"].numpy()
    shift = batch.tokens.shape[1] - ids.shape[1]
    np.testing.assert_array_equal(
        batch.tokens[:, shift:][mask.astype(bool)], ids[mask.astype(bool)]
    )
    np.testing.assert_array_equal(batch.mask[:, shift:], mask.astype(bool))
    assert not batch.mask[:, :shift].any()
    if with_images:
        np.testing.assert_array_equal(batch.patches, want_inputs["pixel_values"].numpy())
        assert batch.grids == tuple(map(tuple, want_inputs["image_grid_thw"].tolist()))
        positions, _ = reference.model.get_rope_index(
            want_inputs["input_ids"],
            mm_token_type_ids=want_inputs["mm_token_type_ids"],
            image_grid_thw=want_inputs["image_grid_thw"],
            attention_mask=want_inputs["attention_mask"],
        )
        np.testing.assert_array_equal(batch.positions[:, :, shift:], positions.numpy())
    with torch.no_grad():
        want = reference(**want_inputs).logits.numpy()
    got = _logits(load_vlm(folder).model, batch)[:, shift:]
    real = mask.astype(bool)
    assert np.abs(want[real]).max() > 0.5
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


def test_greedy_decoding_with_images_matches_generate(checkpoint):
    folder, reference, processor = checkpoint
    want_inputs = reference_inputs(processor, True)
    with torch.no_grad():
        width = want_inputs["input_ids"].shape[1]
        want = reference.generate(**want_inputs, max_new_tokens=5, do_sample=False)[:, width:]
    batch = jaxrank_inputs(folder, True)
    model = load_vlm(folder).model

    def run(model, tokens, mask, positions, patches):
        prompt = model.prompt(tokens, mask, positions, patches, batch.grids)
        settings = SamplingSettings(max_new_tokens=5, temperature=0.0)
        return generate(model.language_model, prompt, jax.random.key(0), settings).tokens

    got = jax.jit(run)(model, batch.tokens, batch.mask, batch.positions, batch.patches)
    np.testing.assert_array_equal(np.asarray(got), want.numpy())


def test_fully_sharded_vlm_equals_single_device(checkpoint):
    folder, _, _ = checkpoint
    batch = jaxrank_inputs(folder, True)
    want = _logits(load_vlm(folder).model, batch)
    mesh = make_mesh(data=4, model=2)
    sharded = load_vlm(folder, mesh=mesh, fsdp=True).model
    with jax.set_mesh(mesh):
        got = _logits(sharded, batch)
    np.testing.assert_allclose(got[batch.mask], want[batch.mask], atol=1e-5)


def test_export_loads_in_transformers(checkpoint, tmp_path):
    """A changed model written back is what transformers then computes, image tokens included."""
    folder, reference, processor = checkpoint
    model = load_vlm(folder).model
    for param in (
        model.visual.merger.fc2.kernel,
        model.language_model.layers[0].mlp.up_proj.kernel,
    ):
        param[...] = param[...] * 1.5 + 0.01
    out = save_decoder(model, tmp_path / "export", base=folder)
    exported = type(reference).from_pretrained(out).eval()
    want_inputs = reference_inputs(processor, True)
    with torch.no_grad():
        want = exported(**want_inputs).logits.numpy()
    batch = jaxrank_inputs(folder, True)
    shift = batch.tokens.shape[1] - want.shape[1]
    real = want_inputs["attention_mask"].numpy().astype(bool)
    got = _logits(model, batch)[:, shift:]
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


# One variant suffices: LoRA sees only the nnx.Linear layers, which both variants share.
@pytest.mark.parametrize("checkpoint", ["qwen2_vl"], indirect=True)
def test_lora_on_the_vlm_starts_at_the_base_and_merges_back(checkpoint):
    """Adapters on every linear of both towers (B = 0) leave the logits unchanged; trained
    (here: random) adapters merged into the weights give the unmerged model's logits."""
    folder, _, _ = checkpoint
    batch = jaxrank_inputs(folder, True)
    model = load_vlm(folder).model
    base = _logits(model, batch)
    apply_lora(model, LoRAConfig(rank=2, alpha=4.0), nnx.Rngs(0))
    assert isinstance(model.visual.merger.fc1, LoRALinear)
    assert isinstance(model.language_model.layers[0].self_attn.q_proj, LoRALinear)
    np.testing.assert_array_equal(_logits(model, batch), base)
    for _, layer in nnx.iter_graph(model):
        if isinstance(layer, LoRALinear):
            layer.lora_b[...] = jax.random.normal(jax.random.key(1), layer.lora_b.shape) * 0.1
    adapted = _logits(model, batch)
    assert np.abs(adapted - base)[batch.mask].max() > 1e-3
    merged = _logits(merge_lora(model), batch)
    np.testing.assert_allclose(merged[batch.mask], adapted[batch.mask], atol=1e-4)
