"""The transformers config of a Qwen2-VL / Qwen2.5-VL model that has no checkpoint behind it (a
tiny random model trained in jaxrank): ``qwen2_vl.translate_config`` run backwards, so that
``vlm_config`` of the written folder is the model's own config again."""

from __future__ import annotations

from typing import Any

from jaxrank.models.hf.errors import UnsupportedCheckpoint
from jaxrank.models.vlm import VLMConfig

_ARCHITECTURES = {
    "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
}


def _vision(config: VLMConfig) -> dict[str, Any]:
    v = config.vision
    common = {
        "depth": v.depth,
        "num_heads": v.heads,
        "hidden_act": v.act,
        "patch_size": v.patch_size,
        "temporal_patch_size": v.temporal_patch_size,
        "spatial_merge_size": v.spatial_merge_size,
        "in_channels": v.channels,
        "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
    }
    if v.norm_eps != 1e-6:  # transformers' vision blocks hard-code their norms' epsilon
        raise UnsupportedCheckpoint(f"vision norm_eps={v.norm_eps}; transformers uses 1e-6")
    if v.variant == "qwen2_vl":
        if v.mlp_dim % v.width:
            raise UnsupportedCheckpoint(
                f"Qwen2-VL's vision MLP is a whole multiple of its width; {v.mlp_dim}/{v.width}"
            )
        return {
            **common,
            "embed_dim": v.width,
            "mlp_ratio": v.mlp_dim // v.width,
            "hidden_size": v.out_width,
        }
    # No window: every block attends to the whole image, which transformers does when every
    # block is listed as a full-attention block.
    full = tuple(range(v.depth)) if v.window_size is None else v.fullatt_block_indexes
    return {
        **common,
        "hidden_size": v.width,
        "intermediate_size": v.mlp_dim,
        "out_hidden_size": v.out_width,
        "window_size": v.window_size or 112,
        "fullatt_block_indexes": list(full),
    }


def _text(config: VLMConfig, tokenizer: Any) -> dict[str, Any]:
    lm = config.lm
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "vocab_size": lm.vocab_size,
        "hidden_size": lm.width,
        "intermediate_size": lm.mlp_dim,
        "num_hidden_layers": lm.depth,
        "num_attention_heads": lm.heads,
        "num_key_value_heads": lm.kv_heads,
        "head_dim": lm.head_dim or lm.width // lm.heads,
        "hidden_act": "silu",
        "rms_norm_eps": lm.rms_norm_eps,
        "tie_word_embeddings": lm.tie_embeddings,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": lm.rope_theta,
            "mrope_section": list(lm.mrope_section),
        },
    }


def transformers_config(config: VLMConfig, tokenizer: Any, dtype: str) -> dict[str, Any]:
    """``config.json`` (as a dict) of ``config``; the vision special tokens' ids come from
    ``tokenizer`` (a video token it lacks keeps transformers' default id, never in range)."""
    import transformers

    class_name, architecture = _ARCHITECTURES[config.vision.variant]
    vocab = tokenizer.get_vocab()
    ids = {
        f"{name}_token_id": vocab[f"<|{name}|>"]
        for name in ("vision_start", "vision_end")
        if f"<|{name}|>" in vocab
    }
    if "<|video_pad|>" in vocab:
        ids["video_token_id"] = vocab["<|video_pad|>"]
    hf = getattr(transformers, class_name)(
        vision_config=_vision(config),
        text_config=_text(config, tokenizer),
        image_token_id=config.image_token_id,
        tie_word_embeddings=config.lm.tie_embeddings,
        architectures=[architecture],
        dtype=dtype,
        **ids,
    )
    return hf.to_dict()
