"""Tiny random Qwen2-VL / Qwen2.5-VL checkpoints written by transformers, with a tokenizer, chat
template and image processor, and both sides' inputs for them (shared by the VLM tests and
scripts/mllm_parity.py)."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch
import transformers
from hf_checkpoints import photos
from hf_tokenizer_fixtures import QWEN_CHAT_TEMPLATE, tiny_qwen_tokenizer

from jaxrank.models.hf.qwen_vl_inputs import QwenVLInputs, VLMBatch

# A tiny Qwen2 decoder (tests/models/test_lm.py, scripts/mllm_parity.py). Odd sizes: 6 query
# heads over 2 key/value heads (grouped), width 48, a large init so the logits are far from zero
# and a wrong layout cannot hide.
QWEN2 = {
    "vocab_size": 97,
    "hidden_size": 48,
    "intermediate_size": 72,
    "num_hidden_layers": 2,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "initializer_range": 0.2,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
}

VARIANTS = ("qwen2_vl", "qwen2_5_vl")
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
LENGTHS = (32, 64, 128)


def tiny_vlm(folder: Path, variant: str) -> tuple[torch.nn.Module, transformers.ProcessorMixin]:
    """Write a tiny random ``variant`` checkpoint (weights, tokenizer, image processor) to
    ``folder``; returns the PyTorch model and transformers' processor (left padding)."""
    torch.manual_seed(0)
    t = transformers
    config_class, model_class = {
        "qwen2_vl": (t.Qwen2VLConfig, t.Qwen2VLForConditionalGeneration),
        "qwen2_5_vl": (t.Qwen2_5_VLConfig, t.Qwen2_5_VLForConditionalGeneration),
    }[variant]
    tokenizer = tiny_qwen_tokenizer()
    ids = {
        f"{name}_token_id": tokenizer.convert_tokens_to_ids(f"<|{name}|>")
        for name in ("vision_start", "vision_end", "image_pad")
    }
    ids["image_token_id"] = ids.pop("image_pad_token_id")
    config = config_class(
        vision_config={**VISION[variant], "initializer_range": 0.2}, text_config=TEXT, **ids
    )
    model = model_class(config).eval()
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
    return model, processor


def conversations(with_images: bool) -> list[list[dict]]:
    image = [{"type": "image"}] if with_images else []
    return [[{"role": "user", "content": [*image, {"type": "text", "text": q}]}] for q in QUESTIONS]


def reference_inputs(processor: transformers.ProcessorMixin, with_images: bool) -> dict:
    """transformers' own chat rendering, placeholder expansion, padding and pre-processing."""
    texts = [
        processor.apply_chat_template(c, add_generation_prompt=True)
        for c in conversations(with_images)
    ]
    images = photos()[:2] if with_images else None
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


def jaxrank_inputs(folder: Path, with_images: bool) -> VLMBatch:
    inputs = QwenVLInputs.from_pretrained(folder)
    texts = [inputs.chat(c) for c in conversations(with_images)]
    images = [[photo] for photo in photos()[:2]] if with_images else [[], []]
    return inputs.batch(texts, images, lengths=LENGTHS)
