"""Tiny random CLIP/SigLIP checkpoints as transformers writes them (weights, config, tokenizer,
image processor), real photos and texts to feed them, and both implementations' outputs: shared
by the Hugging Face tests and scripts/hf_parity.py."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx
from hf_tokenizer_fixtures import (
    CLIP_EOS_ID,
    CLIP_VOCAB_SIZE,
    SIGLIP_VOCAB_SIZE,
    write_tiny_clip_tokenizer,
    write_tiny_siglip_tokenizer,
)
from PIL import Image
from skimage import data as skdata

# Odd shapes on purpose: widths that are not powers of two, 3 or 5 heads, patch sizes 6 and 8.
CLIP_TEXT = {
    "vocab_size": CLIP_VOCAB_SIZE,
    "hidden_size": 40,
    "intermediate_size": 52,
    "num_hidden_layers": 2,
    "num_attention_heads": 5,
    "max_position_embeddings": 16,
    "bos_token_id": 0,
    "eos_token_id": CLIP_EOS_ID,
    "pad_token_id": CLIP_EOS_ID,
}
CLIP_VISION = {
    "hidden_size": 36,
    "intermediate_size": 60,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "image_size": 30,
    "patch_size": 6,
}
SIGLIP_TEXT = {
    "vocab_size": SIGLIP_VOCAB_SIZE,
    "hidden_size": 40,
    "intermediate_size": 56,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 12,
    "projection_size": 48,
    "hidden_act": "gelu_pytorch_tanh",
}
SIGLIP_VISION = {
    "hidden_size": 48,
    "intermediate_size": 72,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "image_size": 32,
    "patch_size": 8,
    "hidden_act": "gelu_pytorch_tanh",
}


def hf_config(kind: str):
    """The transformers config of 'clip', 'clip_legacy' or 'siglip'."""
    t = transformers
    if kind == "clip":
        return t.CLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION, projection_dim=24)
    if kind == "clip_legacy":  # eos_token_id=2: pooling at the largest id; exact gelu
        text = {**CLIP_TEXT, "eos_token_id": 2, "hidden_act": "gelu"}
        vision = {**CLIP_VISION, "hidden_act": "gelu", "patch_size": 10}
        return t.CLIPConfig(text_config=text, vision_config=vision, projection_dim=20)
    return t.SiglipConfig(text_config=SIGLIP_TEXT, vision_config=SIGLIP_VISION)


def save_reference(folder: Path, model, processor_kind: str, size: int) -> Path:
    """``model`` saved as transformers writes a checkpoint folder, with a tiny tokenizer and an
    image processor of the family ``processor_kind`` at ``size`` pixels."""
    model.save_pretrained(folder)
    if processor_kind == "clip":
        write_tiny_clip_tokenizer(folder)
        transformers.CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ).save_pretrained(folder)
    else:
        write_tiny_siglip_tokenizer(folder)
        transformers.SiglipImageProcessorPil(size={"height": size, "width": size}).save_pretrained(
            folder
        )
    return folder


def tiny_checkpoint(folder: Path, kind: str, seed: int = 0):
    """A random tiny two-tower model of ``kind`` saved into ``folder``; returns the PyTorch
    model (eval mode) with a non-trivial logit scale (and bias), so logit tests can fail."""
    import torch

    torch.manual_seed(seed)
    config = hf_config(kind)
    model_class = transformers.SiglipModel if kind == "siglip" else transformers.CLIPModel
    model = model_class(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(1.7)
        if kind == "siglip":
            model.logit_bias.fill_(-3.0)
    family = "siglip" if kind == "siglip" else "clip"
    save_reference(folder, model, family, config.vision_config.image_size)
    return model


TEXTS = ["a photo of a cat", "the dog", "a cat of the dog photo, and the cat", "photo"]
PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket")  # camera is grayscale


def photos() -> list[Image.Image]:
    return [Image.fromarray(getattr(skdata, name)()) for name in PHOTOS]


def reference_inputs(folder: Path, family: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """transformers' own pre-processing and tokenisation of ``photos()`` and ``TEXTS`` (padded
    to the text tower's length), so that a comparison isolates the models."""
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images=photos(), return_tensors="np")["pixel_values"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    length = transformers.AutoConfig.from_pretrained(folder).text_config.max_position_embeddings
    encoded = tokenizer(TEXTS, padding="max_length", max_length=length, truncation=True)
    ids = np.asarray(encoded["input_ids"])
    mask = np.asarray(encoded["attention_mask"]) if family == "clip" else np.ones_like(ids)
    return pixels, ids, mask


def torch_outputs(model, pixels, ids, mask, family: str) -> dict[str, np.ndarray]:
    """The PyTorch reference's embeddings and logits (SigLIP called without a mask, as trained)."""
    import torch

    kwargs = {"attention_mask": torch.tensor(mask)} if family == "clip" else {}
    with torch.no_grad():
        out = model(pixel_values=torch.tensor(pixels), input_ids=torch.tensor(ids), **kwargs)
    return {
        "image": out.image_embeds.numpy(),
        "text": out.text_embeds.numpy(),
        "logits": out.logits_per_text.numpy(),
    }


def jaxrank_outputs(model, pixels, ids, mask) -> dict[str, np.ndarray]:
    """jaxrank's embeddings and logits for channels-first ``pixels`` (as transformers takes)."""
    out = nnx.jit(lambda m, *xs: m(*xs))(
        model, jnp.asarray(pixels.transpose(0, 2, 3, 1)), jnp.asarray(ids), jnp.asarray(mask)
    )
    return {
        "image": np.asarray(out.image_embeds),
        "text": np.asarray(out.text_embeds),
        "logits": np.asarray(out.logits_per_text()),
    }
