"""Qwen2-VL and Qwen2.5-VL checkpoints (``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``) into ``jaxrank.models.vlm.VisionLanguageModel``.

Both tensor layouts in circulation load: the hub's original one (``model.layers.*``,
``visual.*``) and the one transformers v5 writes (``model.language_model.*``,
``model.visual.*``).
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
from jax.sharding import Mesh
from jax.typing import DTypeLike

from jaxrank.models.hf.files import SafetensorsCheckpoint, architecture, resolve_checkpoint
from jaxrank.models.hf.placement import PretrainedModule, load_configured
from jaxrank.models.hf.qwen2 import name_map as lm_name_map
from jaxrank.models.hf.qwen2 import text_config
from jaxrank.models.hf.qwen_vision import vision_config, vision_name_map, vision_prefix
from jaxrank.models.hf.tensors import nest
from jaxrank.models.layer_stack import UNROLLED, Stacking, with_stacking
from jaxrank.models.vlm import VisionLanguageModel, VLMConfig

ARCHITECTURES = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
_LM_PREFIXES = ("model.language_model.", "model.")


def vlm_config(folder: Path) -> VLMConfig:
    """jaxrank's VLMConfig from the checkpoint's ``config.json`` (read by transformers)."""
    from transformers import AutoConfig

    return translate_config(AutoConfig.from_pretrained(folder), folder)


def translate_config(c, where: Path) -> VLMConfig:
    """jaxrank's VLMConfig from a transformers ``Qwen2VLConfig`` / ``Qwen2_5_VLConfig`` (``where``
    names its source in errors)."""
    lm = text_config(
        c.text_config, tie_embeddings=bool(c.tie_word_embeddings), where=where, mrope=True
    )
    return VLMConfig(lm=lm, vision=vision_config(c), image_token_id=int(c.image_token_id))


def name_map(config: VLMConfig, checkpoint: SafetensorsCheckpoint) -> dict:
    """jaxrank parameter path -> checkpoint tensor, in whichever layout the checkpoint uses."""
    lm_prefix = next(p for p in _LM_PREFIXES if f"{p}embed_tokens.weight" in checkpoint)
    rules = nest(("language_model",), lm_name_map(config.lm, lm_prefix))
    return rules | nest(("visual",), vision_name_map(config.vision, vision_prefix(checkpoint)))


def load_vlm(
    source: str | Path,
    *,
    dtype: DTypeLike = jnp.float32,
    compute_dtype: DTypeLike | None = None,
    mesh: Mesh | None = None,
    fsdp: bool = False,
    revision: str | None = None,
    ignore_unused: bool = False,
    seed: int = 0,
    stacking: Stacking = UNROLLED,
) -> PretrainedModule:
    """Load a Qwen2-VL / Qwen2.5-VL folder or hub id: parameters in ``dtype`` (computing in
    ``compute_dtype``, default ``dtype``), each created directly with its sharding on ``mesh``
    (tensor-parallel over its ``model`` axis; ``fsdp`` also splits every parameter over
    ``data``), after checking every tensor exists, fits and is used. ``stacking`` scans the
    decoder's and the tower's layers (each parameter stacked from the per-layer tensors) and
    rematerialises them (``models.layer_stack``)."""
    folder = resolve_checkpoint(source, revision=revision)
    name = architecture(folder, ARCHITECTURES)
    config = vlm_config(folder)
    config = with_stacking(config, stacking)
    checkpoint = SafetensorsCheckpoint(folder)
    rules = name_map(config, checkpoint)
    return load_configured(
        VisionLanguageModel,
        config,
        rules,
        checkpoint,
        {t.name for t in rules.values()} | {"lm_head.weight"},
        dtype=dtype,
        compute_dtype=compute_dtype,
        mesh=mesh,
        fsdp=fsdp,
        seed=seed,
        ignore_unused=ignore_unused,
        what=name,
    )
