"""Named dual-encoder configs: tiny ones for tests and CPU runs, and the shapes of real checkpoints
(openai CLIP, google SigLIP) that the Hugging Face loaders fill in."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxrank.models.dual_encoder import DualEncoderConfig
from jaxrank.models.text import TextConfig
from jaxrank.models.vit import VisionConfig

CLIP_EOS_TOKEN_ID = 49407
_SIGLIP_VISION = {
    "act": "gelu_tanh",
    "layer_norm_eps": 1e-6,
    "class_token": False,
    "patch_bias": True,
    "pre_norm": False,
    "pool": "map",
}
_SIGLIP_TEXT = {"act": "gelu_tanh", "layer_norm_eps": 1e-6, "causal": False, "pool": "last"}
_SIGLIP_HEADS = {
    "vision_projection": False,
    "projection_bias": True,
    "logit_scale_init": math.log(10.0),
    "logit_bias_init": -10.0,
}


def tiny_clip(
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 64,
    depth: int = 2,
    heads: int = 4,
    vocab_size: int = 128,
    max_len: int = 16,
    embed_dim: int = 32,
    dtype: DTypeLike = jnp.float32,
    eos_token_id: int | None = None,
) -> DualEncoderConfig:
    """CLIP's layout at toy size; the end-of-text token defaults to the largest id."""
    return DualEncoderConfig(
        vision=VisionConfig(image_size, patch_size, width, depth, heads, mlp_dim=4 * width),
        text=TextConfig(
            vocab_size,
            max_len,
            width,
            depth,
            heads,
            mlp_dim=4 * width,
            eos_token_id=vocab_size - 1 if eos_token_id is None else eos_token_id,
        ),
        embed_dim=embed_dim,
        dtype=dtype,
    )


def tiny_siglip(
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 64,
    depth: int = 2,
    heads: int = 4,
    vocab_size: int = 128,
    max_len: int = 16,
    dtype: DTypeLike = jnp.float32,
) -> DualEncoderConfig:
    """SigLIP's layout at toy size (embedding width = tower width, as SigLIP has no image
    projection)."""
    return DualEncoderConfig(
        vision=VisionConfig(
            image_size, patch_size, width, depth, heads, mlp_dim=4 * width, **_SIGLIP_VISION
        ),
        text=TextConfig(vocab_size, max_len, width, depth, heads, 4 * width, **_SIGLIP_TEXT),
        embed_dim=width,
        **_SIGLIP_HEADS,
        dtype=dtype,
    )


def clip_vit_b16(dtype: DTypeLike = jnp.float32) -> DualEncoderConfig:
    """openai/clip-vit-base-patch16."""
    return DualEncoderConfig(
        vision=VisionConfig(224, 16, 768, 12, 12, 3072),
        text=TextConfig(49408, 77, 512, 12, 8, 2048, eos_token_id=CLIP_EOS_TOKEN_ID),
        embed_dim=512,
        dtype=dtype,
    )


def clip_vit_l14_336(dtype: DTypeLike = jnp.float32) -> DualEncoderConfig:
    """openai/clip-vit-large-patch14-336."""
    return DualEncoderConfig(
        vision=VisionConfig(336, 14, 1024, 24, 16, 4096),
        text=TextConfig(49408, 77, 768, 12, 12, 3072, eos_token_id=CLIP_EOS_TOKEN_ID),
        embed_dim=768,
        dtype=dtype,
    )


def siglip_base_patch16_224(dtype: DTypeLike = jnp.float32) -> DualEncoderConfig:
    """google/siglip-base-patch16-224."""
    return DualEncoderConfig(
        vision=VisionConfig(224, 16, 768, 12, 12, 3072, **_SIGLIP_VISION),
        text=TextConfig(32000, 64, 768, 12, 12, 3072, **_SIGLIP_TEXT),
        embed_dim=768,
        **_SIGLIP_HEADS,
        dtype=dtype,
    )
