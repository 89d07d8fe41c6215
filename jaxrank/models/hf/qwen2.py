"""Qwen2 causal language models (``Qwen2ForCausalLM``) from Hugging Face checkpoints into
``jaxrank.models.lm.CausalLM``, with the same checks and sharded placement as the encoders."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
from jax.sharding import Mesh
from jax.typing import DTypeLike

from jaxrank.models.hf.errors import UnsupportedCheckpoint
from jaxrank.models.hf.files import (
    CONFIG_FILE,
    SafetensorsCheckpoint,
    architecture,
    resolve_checkpoint,
)
from jaxrank.models.hf.placement import PretrainedModule, load_configured
from jaxrank.models.hf.tensors import LINEAR, Tensor, linear, nest
from jaxrank.models.layer_stack import UNROLLED, Stacking, with_stacking
from jaxrank.models.lm import CausalLM, LMConfig

ARCHITECTURES = ("Qwen2ForCausalLM",)


def lm_config(where: Path) -> LMConfig:
    """jaxrank's LMConfig from the Qwen2 ``config.json`` in ``where`` (read by transformers)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(where)
    return text_config(c, tie_embeddings=bool(c.tie_word_embeddings), where=where)


def text_config(c, *, tie_embeddings: bool, where: Path, mrope: bool = False) -> LMConfig:
    """LMConfig from a transformers Qwen2 (or Qwen2-VL ``text_config``) config object. With
    ``mrope``, the rotary sections default as the reference's do ([16, 24, 24])."""
    rope = getattr(c, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 1e4}
    if rope.get("rope_type", "default") not in ("default", "mrope"):
        raise UnsupportedCheckpoint(
            f"{where / CONFIG_FILE}: rope_type={rope['rope_type']!r}; only 'default' is supported"
        )
    if c.hidden_act != "silu":
        raise UnsupportedCheckpoint(f"{where / CONFIG_FILE}: hidden_act={c.hidden_act!r}, not silu")
    if getattr(c, "use_sliding_window", False):
        raise UnsupportedCheckpoint(
            f"{where / CONFIG_FILE}: sliding-window attention is not supported"
        )
    return LMConfig(
        vocab_size=c.vocab_size,
        width=c.hidden_size,
        depth=c.num_hidden_layers,
        heads=c.num_attention_heads,
        kv_heads=c.num_key_value_heads,
        mlp_dim=c.intermediate_size,
        head_dim=getattr(c, "head_dim", None),
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=float(rope["rope_theta"]),
        tie_embeddings=tie_embeddings,
        mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))) if mrope else None,
    )


def name_map(config: LMConfig, prefix: str = "model.") -> dict:
    """jaxrank parameter path -> checkpoint tensor, for ``CausalLM``; ``prefix`` is where the
    decoder's tensors live (Qwen2-VL checkpoints nest it)."""
    rules = {
        ("embed_tokens", "embedding"): Tensor(f"{prefix}embed_tokens.weight"),
        ("norm", "weight"): Tensor(f"{prefix}norm.weight"),
    }
    if not config.tie_embeddings:
        rules[("lm_head", "kernel")] = Tensor("lm_head.weight", LINEAR)
    for i in range(config.depth):
        layer = f"{prefix}layers.{i}"
        block = {
            ("input_layernorm", "weight"): Tensor(f"{layer}.input_layernorm.weight"),
            ("post_attention_layernorm", "weight"): Tensor(
                f"{layer}.post_attention_layernorm.weight"
            ),
        }
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            bias = name != "o_proj"
            block |= nest(("self_attn", name), linear(f"{layer}.self_attn.{name}", bias))
        for name in ("gate_proj", "up_proj", "down_proj"):
            block |= nest(("mlp", name), linear(f"{layer}.mlp.{name}", bias=False))
        rules |= nest(("layers", i), block)
    return rules


def load_causal_lm(
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
    """Load a ``Qwen2ForCausalLM`` folder or hub id (options as ``qwen2_vl.load_vlm``).
    A tied checkpoint may also carry ``lm_head.weight``; it is then the embedding and ignored."""
    folder = resolve_checkpoint(source, revision=revision)
    name = architecture(folder, ARCHITECTURES)
    config = lm_config(folder)
    config = with_stacking(config, stacking)
    rules = name_map(config)
    return load_configured(
        CausalLM,
        config,
        rules,
        SafetensorsCheckpoint(folder),
        {t.name for t in rules.values()} | {"lm_head.weight"},
        dtype=dtype,
        compute_dtype=compute_dtype,
        mesh=mesh,
        fsdp=fsdp,
        seed=seed,
        ignore_unused=ignore_unused,
        what=name,
    )
