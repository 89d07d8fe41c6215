"""The papers' released checkpoints as architectures, with no download: each one's
``config.json`` (the keys jaxrank's translators read, as the file on the Hugging Face hub has
them) turned into jaxrank configs by the same functions that read a local checkpoint, so the
planner builds the real sizes and a local folder's ``config.json`` takes precedence when given.

Values were read from the hub's files (huggingface.co/<repo id>/blob/main/config.json, as
mirrored by several public copies that agree). Sizes a file leaves out (most of Qwen2-VL's and
Qwen2.5-VL's vision tower) are transformers' defaults for its ``model_type``, exactly as when
``AutoConfig`` reads the real file; tests/models/hf/test_published.py pins what they resolve to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jax.typing import DTypeLike

from jaxrank.models import presets
from jaxrank.models.dual_encoder import DualEncoderConfig
from jaxrank.models.hf.errors import UnsupportedCheckpoint
from jaxrank.models.hf.files import CONFIG_FILE
from jaxrank.models.hf.loading import describe, dual_config
from jaxrank.models.hf.qwen2_vl import translate_config, vlm_config
from jaxrank.models.vlm import VLMConfig

QWEN2_5_VL_3B = "Qwen/Qwen2.5-VL-3B-Instruct"
QWEN2_VL_7B = "Qwen/Qwen2-VL-7B-Instruct"
QWEN2_VL_2B = "Qwen/Qwen2-VL-2B-Instruct"
CLIP_VIT_B16 = "openai/clip-vit-base-patch16"
CLIP_VIT_L14_336 = "openai/clip-vit-large-patch14-336"

_MROPE = {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"}
_QWEN_TOKENS = {"image_token_id": 151655, "hidden_act": "silu", "use_sliding_window": False}

CONFIG_JSON: dict[str, dict[str, Any]] = {
    # huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/config.json (transformers 4.49.0.dev0)
    QWEN2_5_VL_3B: {
        "model_type": "qwen2_5_vl",
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_attention_heads": 16,
        "num_hidden_layers": 36,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": _MROPE,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "vocab_size": 151936,
        **_QWEN_TOKENS,
        "vision_config": {
            "model_type": "qwen2_5_vl",
            "hidden_size": 1280,
            "in_chans": 3,
            "out_hidden_size": 2048,
            "spatial_patch_size": 14,
            "tokens_per_second": 2,
        },
    },
    # huggingface.co/Qwen/Qwen2-VL-7B-Instruct/blob/main/config.json (transformers 4.45-4.47)
    QWEN2_VL_7B: {
        "model_type": "qwen2_vl",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_attention_heads": 28,
        "num_hidden_layers": 28,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06,
        "rope_scaling": _MROPE,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "vocab_size": 152064,
        **_QWEN_TOKENS,
        "vision_config": {"model_type": "qwen2_vl", "in_chans": 3, "spatial_patch_size": 14},
    },
    # huggingface.co/Qwen/Qwen2-VL-2B-Instruct/blob/main/config.json (transformers 4.45-4.46)
    QWEN2_VL_2B: {
        "model_type": "qwen2_vl",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_attention_heads": 12,
        "num_hidden_layers": 28,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": _MROPE,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "vocab_size": 151936,
        **_QWEN_TOKENS,
        "vision_config": {
            "model_type": "qwen2_vl",
            "hidden_size": 1536,
            "in_chans": 3,
            "spatial_patch_size": 14,
        },
    },
}

# The hub's own parameter count of each checkpoint (its model page, "Model size", from the
# safetensors headers): what a preset built at full depth must add up to.
PUBLISHED_PARAMS = {
    QWEN2_5_VL_3B: 3.75e9,
    QWEN2_VL_7B: 8.29e9,
    QWEN2_VL_2B: 2.21e9,
    CLIP_VIT_B16: 150e6,
    CLIP_VIT_L14_336: 428e6,
}

_DUAL_ENCODERS: dict[str, Callable[..., DualEncoderConfig]] = {
    CLIP_VIT_B16: presets.clip_vit_b16,
    CLIP_VIT_L14_336: presets.clip_vit_l14_336,
}


def _local(source: str | Path) -> Path | None:
    folder = Path(source)
    return folder if (folder / CONFIG_FILE).is_file() else None


def vlm_preset(source: str | Path) -> VLMConfig:
    """The VLMConfig of ``source``: a local checkpoint folder's ``config.json`` when it is one,
    else the recorded ``config.json`` of that hub id."""
    folder = _local(source)
    if folder is not None:
        return vlm_config(folder)
    if str(source) not in CONFIG_JSON:
        raise UnsupportedCheckpoint(
            f"{source}: no recorded architecture (known: {sorted(CONFIG_JSON)}); pass a local "
            "checkpoint folder with its config.json"
        )
    from transformers import AutoConfig

    fields = dict(CONFIG_JSON[str(source)])
    return translate_config(AutoConfig.for_model(fields.pop("model_type"), **fields), Path(source))


def dual_encoder_preset(
    source: str | Path, dtype: DTypeLike, param_dtype: DTypeLike
) -> DualEncoderConfig:
    """The DualEncoderConfig of ``source`` (a local folder's ``config.json`` first, else the
    recorded preset), computing in ``dtype`` with parameters in ``param_dtype``."""
    folder = _local(source)
    if folder is not None:
        return dual_config(describe(folder)[2], dtype, param_dtype)
    if str(source) not in _DUAL_ENCODERS:
        raise UnsupportedCheckpoint(
            f"{source}: no recorded architecture (known: {sorted(_DUAL_ENCODERS)}); pass a local "
            "checkpoint folder with its config.json"
        )
    return dataclasses.replace(_DUAL_ENCODERS[str(source)](dtype), param_dtype=param_dtype)


def at_depth(config: VLMConfig | DualEncoderConfig, depth: int):
    """``config`` with every tower ``depth`` layers deep and its widths unchanged (a planner's
    reduced copy that compiles in CI time). A Qwen2.5-VL tower keeps its full-attention blocks
    below ``depth``, or makes its last block one, so both block kinds stay in the program."""
    if isinstance(config, DualEncoderConfig):
        return dataclasses.replace(
            config,
            vision=dataclasses.replace(config.vision, depth=depth),
            text=dataclasses.replace(config.text, depth=depth),
        )
    vision = config.vision
    full = tuple(i for i in vision.fullatt_block_indexes if i < depth)
    if vision.window_size is not None and not full:
        full = (depth - 1,)
    return dataclasses.replace(
        config,
        lm=dataclasses.replace(config.lm, depth=depth),
        vision=dataclasses.replace(vision, depth=depth, fullatt_block_indexes=full),
    )
