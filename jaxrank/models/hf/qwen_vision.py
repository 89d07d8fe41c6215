"""The vision tower of a Qwen2-VL / Qwen2.5-VL checkpoint (``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``) into ``jaxrank.models.qwen_vision.QwenVisionTower``.

Checkpoints name the tower's tensors ``visual.*`` (the hub's checkpoints, and what transformers v5
writes: it converts back to that layout on save) or ``model.visual.*`` (written by transformers
4.52-4.57); the loader takes whichever the checkpoint holds. The fused ``attn.qkv`` tensors are
read as three projections so that tensor parallelism splits whole heads.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
from jax.sharding import Mesh
from jax.typing import DTypeLike

from jaxrank.models.hf.errors import CheckpointMismatch, UnsupportedCheckpoint
from jaxrank.models.hf.family import activation
from jaxrank.models.hf.files import SafetensorsCheckpoint, architecture, resolve_checkpoint
from jaxrank.models.hf.placement import PretrainedModule, load_configured
from jaxrank.models.hf.tensors import LINEAR, Tensor, layer_norm, linear, nest
from jaxrank.models.hf.tensors import Path as ParamPath
from jaxrank.models.layer_stack import UNROLLED, Stacking, with_stacking
from jaxrank.models.qwen_vision import QwenVisionConfig, QwenVisionTower

ARCHITECTURES = {
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
}
PREFIXES = ("visual.", "model.visual.")
CONV3D = (1, 2, 3, 4, 0)  # torch Conv3d [out, in, t, h, w] -> [in, t, h, w, out]


def vision_config(config) -> QwenVisionConfig:
    """jaxrank's tower config from a transformers ``Qwen2VLConfig`` / ``Qwen2_5_VLConfig``."""
    variant = config.model_type
    if variant not in ARCHITECTURES.values():
        raise UnsupportedCheckpoint(f"model_type={variant!r}; expected qwen2_vl or qwen2_5_vl")
    v = config.vision_config
    rope = getattr(v, "rope_parameters", None) or {"rope_type": "axial", "rope_theta": 1e4}
    if rope.get("rope_type", "axial") != "axial":
        raise UnsupportedCheckpoint(f"vision_config.rope_type={rope['rope_type']!r}, not axial")
    act = v.hidden_act
    common = {
        "variant": variant,
        "depth": v.depth,
        "heads": v.num_heads,
        "act": act if act == "silu" else activation(act, "vision_config.hidden_act"),
        "patch_size": v.patch_size,
        "temporal_patch_size": v.temporal_patch_size,
        "spatial_merge_size": v.spatial_merge_size,
        "channels": v.in_channels,
        "rope_theta": float(rope["rope_theta"]),
    }
    if variant == "qwen2_vl":  # hidden_size is the language model's width here
        return QwenVisionConfig(
            **common,
            width=v.embed_dim,
            mlp_dim=int(v.embed_dim * v.mlp_ratio),
            out_width=v.hidden_size,
        )
    return QwenVisionConfig(
        **common,
        width=v.hidden_size,
        mlp_dim=v.intermediate_size,
        out_width=v.out_hidden_size,
        window_size=v.window_size,
        fullatt_block_indexes=tuple(v.fullatt_block_indexes),
    )


def _norm(config: QwenVisionConfig, name: str) -> dict[ParamPath, Tensor]:
    if config.variant == "qwen2_vl":
        return layer_norm(name)
    return {("weight",): Tensor(f"{name}.weight")}


def vision_name_map(config: QwenVisionConfig, prefix: str = "visual.") -> dict[ParamPath, Tensor]:
    """jaxrank parameter path -> checkpoint tensor, for ``QwenVisionTower``."""
    width = config.width
    rules = {("patch_embed",): Tensor(f"{prefix}patch_embed.proj.weight", CONV3D)}
    mlp = ("fc1", "fc2") if config.variant == "qwen2_vl" else ("gate_proj", "up_proj", "down_proj")
    for i in range(config.depth):
        block = f"{prefix}blocks.{i}"
        rules |= nest(("blocks", i, "norm1"), _norm(config, f"{block}.norm1"))
        rules |= nest(("blocks", i, "norm2"), _norm(config, f"{block}.norm2"))
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            rows = (j * width, (j + 1) * width)
            rules[("blocks", i, "attn", name, "kernel")] = Tensor(
                f"{block}.attn.qkv.weight", LINEAR, rows
            )
            rules[("blocks", i, "attn", name, "bias")] = Tensor(f"{block}.attn.qkv.bias", rows=rows)
        rules |= nest(("blocks", i, "attn", "proj"), linear(f"{block}.attn.proj"))
        for name in mlp:
            rules |= nest(("blocks", i, "mlp", name), linear(f"{block}.mlp.{name}"))
    rules |= nest(("merger", "ln_q"), _norm(config, f"{prefix}merger.ln_q"))
    rules |= nest(("merger", "fc1"), linear(f"{prefix}merger.mlp.0"))
    rules |= nest(("merger", "fc2"), linear(f"{prefix}merger.mlp.2"))
    return rules


def vision_prefix(checkpoint: SafetensorsCheckpoint) -> str:
    """Where ``checkpoint`` keeps the tower: ``visual.`` or ``model.visual.``."""
    for prefix in PREFIXES:
        if f"{prefix}patch_embed.proj.weight" in checkpoint:
            return prefix
    raise CheckpointMismatch(
        f"{checkpoint.folder} has no vision tower: no patch_embed.proj.weight under "
        f"{' or '.join(PREFIXES)}"
    )


def load_vision_tower(
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
    """The vision tower of a Qwen2-VL / Qwen2.5-VL folder or hub id (options as
    ``qwen2_vl.load_vlm``). The language model's tensors are skipped; every tower tensor must
    be used and fit (``ignore_unused`` skips unknown tower tensors too)."""
    folder = resolve_checkpoint(source, revision=revision)
    name = architecture(folder, tuple(ARCHITECTURES))
    from transformers import AutoConfig

    config = vision_config(AutoConfig.from_pretrained(folder))
    config = with_stacking(config, stacking)
    checkpoint = SafetensorsCheckpoint(folder)
    prefix = vision_prefix(checkpoint)
    rules = vision_name_map(config, prefix)
    language = {tensor for tensor in checkpoint if not tensor.startswith(prefix)}
    return load_configured(
        QwenVisionTower,
        config,
        rules,
        checkpoint,
        {t.name for t in rules.values()} | language,
        dtype=dtype,
        compute_dtype=compute_dtype,
        mesh=mesh,
        fsdp=fsdp,
        seed=seed,
        ignore_unused=ignore_unused,
        what=f"the vision tower of {name}",
    )
