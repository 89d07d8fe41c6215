"""Qwen2-VL and Qwen2.5-VL end to end against transformers: a tiny random checkpoint with a
tokenizer, chat template and image processor, loaded by jaxrank; token ids and M-RoPE
positions equal the reference processor's and model's, logits equal for image+text and
text-only batches (left-padded, photos of different sizes), greedy decoding equals
``generate``."""

from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_checkpoints import photos
from hf_tokenizer_fixtures import QWEN_CHAT_TEMPLATE, tiny_qwen_tokenizer

from jaxrank.models.hf.export_decoder import save_decoder
from jaxrank.models.hf.qwen2_vl import load_vlm
from jaxrank.models.hf.qwen_vl_inputs import QwenVLInputs
from jaxrank.parallel import make_mesh
from jaxrank.rl.rollout import SamplingSettings, generate

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXT = {
    "vocab_size": 272,
    "hidden_size": 48,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "initializer_range": 0.1,
    "rope_parameters": {"rope_type": "default", "mrope_section": [2, 2, 2], "rope_theta": 1e4},
}
# Patch size 4 and at most 48x48 pixels keep images at <= 36 merged tokens; Qwen2.5-VL's
# 16-pixel windows split each photo into several windows, block 1 attends to the whole image.
VISION = {
    "qwen2_vl": {"depth": 2, "embed_dim": 40, "hidden_size": 48, "num_heads": 2, "patch_size": 4},
    "qwen2_5_vl": {
        "depth": 2,
        "hidden_size": 36,
        "intermediate_size": 52,
        "num_heads": 3,
        "patch_size": 4,
        "out_hidden_size": 48,
        "window_size": 16,
        "fullatt_block_indexes": [1],
    },
}
PROCESSOR = {"patch_size": 4, "merge_size": 2, "min_pixels": 32 * 32, "max_pixels": 48 * 48}
QUESTIONS = ("what is in the picture?", "crop?")


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def checkpoint(request, tmp_path_factory):
    """(folder, PyTorch model, transformers processor) of a tiny random VL checkpoint."""
    torch.manual_seed(0)
    t = transformers
    config_class, model_class = {
        "qwen2_vl": (t.Qwen2VLConfig, t.Qwen2VLForConditionalGeneration),
        "qwen2_5_vl": (t.Qwen2_5_VLConfig, t.Qwen2_5_VLForConditionalGeneration),
    }[request.param]
    tokenizer = tiny_qwen_tokenizer()
    ids = {
        f"{name}_token_id": tokenizer.convert_tokens_to_ids(f"<|{name}|>")
        for name in ("vision_start", "vision_end")
    }
    config = config_class(
        vision_config={**VISION[request.param], "initializer_range": 0.2},
        text_config=TEXT,
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        **ids,
    )
    model = model_class(config).eval()
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    # The processor insists on a video processor, which needs torchvision (not installable
    # here); images never touch it, so its class check is skipped.
    with mock.patch.object(t.ProcessorMixin, "check_argument_for_proper_class", lambda *a: None):
        processor = t.Qwen2VLProcessor(
            image_processor=t.Qwen2VLImageProcessorPil(**PROCESSOR),
            tokenizer=tokenizer,
            chat_template=QWEN_CHAT_TEMPLATE,
        )
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    processor.tokenizer.padding_side = "left"
    return folder, model, processor


def _conversations(with_images: bool) -> list[list[dict]]:
    image = [{"type": "image"}] if with_images else []
    return [[{"role": "user", "content": [*image, {"type": "text", "text": q}]}] for q in QUESTIONS]


def _reference_inputs(processor, with_images: bool) -> dict:
    texts = [
        processor.apply_chat_template(c, add_generation_prompt=True)
        for c in _conversations(with_images)
    ]
    images = photos()[:2] if with_images else None
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


def _ours(folder, with_images: bool):
    inputs = QwenVLInputs.from_pretrained(folder)
    texts = [inputs.chat(c) for c in _conversations(with_images)]
    images = [[photo] for photo in photos()[:2]] if with_images else [[], []]
    return inputs.batch(texts, images, lengths=(32, 64, 128))


def _logits(model, batch) -> np.ndarray:
    forward = jax.jit(lambda m, *x: m(*x, grids=batch.grids).logits)
    patches = None if batch.patches is None else jnp.asarray(batch.patches)
    return np.asarray(forward(model, batch.tokens, batch.mask, batch.positions, patches))


@pytest.mark.parametrize("with_images", [True, False], ids=["image+text", "text"])
def test_inputs_and_logits_match_transformers(checkpoint, with_images):
    folder, reference, processor = checkpoint
    want_inputs = _reference_inputs(processor, with_images)
    batch = _ours(folder, with_images)
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
    want_inputs = _reference_inputs(processor, True)
    with torch.no_grad():
        width = want_inputs["input_ids"].shape[1]
        want = reference.generate(**want_inputs, max_new_tokens=5, do_sample=False)[:, width:]
    batch = _ours(folder, True)
    model = load_vlm(folder).model

    def run(model, tokens, mask, positions, patches):
        prompt = model.prompt(tokens, mask, positions, patches, batch.grids)
        settings = SamplingSettings(max_new_tokens=5, temperature=0.0)
        return generate(model.language_model, prompt, jax.random.key(0), settings).tokens

    got = jax.jit(run)(model, batch.tokens, batch.mask, batch.positions, batch.patches)
    np.testing.assert_array_equal(np.asarray(got), want.numpy())


def test_fully_sharded_vlm_equals_single_device(checkpoint):
    folder, _, _ = checkpoint
    batch = _ours(folder, True)
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
    want_inputs = _reference_inputs(processor, True)
    with torch.no_grad():
        want = exported(**want_inputs).logits.numpy()
    batch = _ours(folder, True)
    shift = batch.tokens.shape[1] - want.shape[1]
    real = want_inputs["attention_mask"].numpy().astype(bool)
    got = _logits(model, batch)[:, shift:]
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)
