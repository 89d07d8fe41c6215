"""Generic Flax NNX models the papers share: ViT and text transformers, the CLIP/SigLIP-style
dual encoder (exported here), the Qwen2 decoder with its KV cache, the Qwen2-VL vision towers and
vision-language model, LoRA; ``hf/`` loads and exports their Hugging Face checkpoints."""

from jaxrank.models.dual_encoder import (
    DualEncoder,
    DualEncoderConfig,
    DualEncoderOutput,
    ImageEncoder,
    TextEncoder,
    l2_normalize,
)
from jaxrank.models.presets import (
    clip_vit_b16,
    clip_vit_l14_336,
    siglip_base_patch16_224,
    tiny_clip,
    tiny_siglip,
)
from jaxrank.models.text import TextConfig, TextTransformer
from jaxrank.models.transformer import MLP, Encoder, EncoderBlock, MultiHeadAttention
from jaxrank.models.vit import AttentionPoolingHead, VisionConfig, VisionTransformer

__all__ = [
    "MLP",
    "AttentionPoolingHead",
    "DualEncoder",
    "DualEncoderConfig",
    "DualEncoderOutput",
    "Encoder",
    "EncoderBlock",
    "ImageEncoder",
    "MultiHeadAttention",
    "TextConfig",
    "TextEncoder",
    "TextTransformer",
    "VisionConfig",
    "VisionTransformer",
    "clip_vit_b16",
    "clip_vit_l14_336",
    "l2_normalize",
    "siglip_base_patch16_224",
    "tiny_clip",
    "tiny_siglip",
]
