"""What a model family (CLIP, SigLIP) tells the loader: its architectures, how its transformers
config becomes jaxrank's tower configs and back, and where its tensors are named."""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from jaxrank.models.hf.errors import UnsupportedCheckpoint
from jaxrank.models.hf.tensors import (
    CONV,
    Path,
    Tensor,
    encoder_blocks,
    layer_norm,
    linear,
    nest,
)
from jaxrank.models.text import TextConfig
from jaxrank.models.vit import VisionConfig

if TYPE_CHECKING:
    from transformers import PretrainedConfig

Tower = Literal["image", "text"]

# transformers' ACT2FN names -> jaxrank's ACTIVATIONS (gelu_new / gelu_fast are the tanh form).
_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
_EXPORTED_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
    "relu": "relu",
}


def activation(name: str, key: str) -> str:
    if name not in _ACTIVATIONS:
        raise UnsupportedCheckpoint(
            f"{key}={name!r} is not supported; expected one of {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]


def exported_activation(name: str) -> str:
    return _EXPORTED_ACTIVATIONS[name]


def _shape(c: PretrainedConfig, key: str) -> dict[str, Any]:
    return {
        "width": c.hidden_size,
        "depth": c.num_hidden_layers,
        "heads": c.num_attention_heads,
        "mlp_dim": c.intermediate_size,
        "act": activation(c.hidden_act, f"{key}.hidden_act"),
        "layer_norm_eps": c.layer_norm_eps,
    }


def vision_config(c: PretrainedConfig, key: str, **layout: Any) -> VisionConfig:
    """jaxrank's VisionConfig from a CLIP/SigLIP vision config (the two share field names);
    ``layout`` holds the family's options (class token, pooling...)."""
    return VisionConfig(
        image_size=c.image_size,
        patch_size=c.patch_size,
        channels=c.num_channels,
        **_shape(c, key),
        **layout,
    )


def text_config(c: PretrainedConfig, key: str, **layout: Any) -> TextConfig:
    """jaxrank's TextConfig from a CLIP/SigLIP text config; ``layout`` as for vision."""
    return TextConfig(
        vocab_size=c.vocab_size, max_len=c.max_position_embeddings, **_shape(c, key), **layout
    )


def _shape_fields(tower: VisionConfig | TextConfig) -> dict[str, Any]:
    return {
        "hidden_size": tower.width,
        "num_hidden_layers": tower.depth,
        "num_attention_heads": tower.heads,
        "intermediate_size": tower.mlp_dim,
        "hidden_act": exported_activation(tower.act),
        "layer_norm_eps": tower.layer_norm_eps,
    }


def vision_fields(v: VisionConfig) -> dict[str, Any]:
    """transformers vision-config fields for ``v`` (export)."""
    return {
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "num_channels": v.channels,
        **_shape_fields(v),
    }


def text_fields(t: TextConfig) -> dict[str, Any]:
    """transformers text-config fields for ``t`` (export); special token ids are the family's."""
    return {
        "vocab_size": t.vocab_size,
        "max_position_embeddings": t.max_len,
        **_shape_fields(t),
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }


@dataclasses.dataclass(frozen=True)
class Towers:
    """A checkpoint's encoders in jaxrank terms. ``*_embed_dim`` is a tower's projection output
    width, None when the tower has no projection; ``logit_*`` are a two-tower model's initial
    logit scale (log-space) and bias (None: no bias)."""

    vision: VisionConfig | None
    text: TextConfig | None
    vision_embed_dim: int | None = None
    text_embed_dim: int | None = None
    projection_bias: bool = False
    logit_scale_init: float = 0.0
    logit_bias_init: float | None = None


def tower_rules(kind: Tower, config: VisionConfig | TextConfig, prefix: str) -> dict:
    """The name map of one tower, whose checkpoint tensors start with ``prefix``."""
    if kind == "text":
        return {
            ("token_embedding", "embedding"): Tensor(f"{prefix}embeddings.token_embedding.weight"),
            ("position_embedding",): Tensor(f"{prefix}embeddings.position_embedding.weight"),
            **nest(("encoder",), encoder_blocks(f"{prefix}encoder", config.depth)),
            **nest(("final_norm",), layer_norm(f"{prefix}final_layer_norm")),
        }
    rules: dict[Path, Tensor] = {
        ("patch_embedding", "kernel"): Tensor(f"{prefix}embeddings.patch_embedding.weight", CONV),
        ("position_embedding",): Tensor(f"{prefix}embeddings.position_embedding.weight"),
        **nest(("encoder",), encoder_blocks(f"{prefix}encoder", config.depth)),
    }
    if config.patch_bias:
        rules[("patch_embedding", "bias")] = Tensor(f"{prefix}embeddings.patch_embedding.bias")
    if config.class_token:
        rules[("class_embedding",)] = Tensor(f"{prefix}embeddings.class_embedding")
    if config.pre_norm:
        rules |= nest(("pre_norm",), layer_norm(f"{prefix}pre_layrnorm"))
    if config.post_norm:
        rules |= nest(("post_norm",), layer_norm(f"{prefix}post_layernorm"))
    return rules


class Family(abc.ABC):
    """One model family. ``architectures`` maps each transformers class name to the towers its
    checkpoint holds; ``by_model_type`` names the architecture a config without ``architectures``
    means by its ``model_type``."""

    name: str
    by_model_type: ClassVar[dict[str, str]]
    architectures: ClassVar[dict[str, tuple[Tower, ...]]]
    # Where each tower's tensors may start: transformers v5 saves a standalone tower without the
    # ``vision_model.`` / ``text_model.`` prefix that checkpoints saved by earlier versions carry.
    prefixes: ClassVar[dict[Tower, tuple[str, ...]]] = {
        "image": ("vision_model.", ""),
        "text": ("text_model.", ""),
    }

    @abc.abstractmethod
    def towers(self, config: PretrainedConfig, architecture: str) -> Towers:
        """jaxrank configs for the checkpoint's config (a transformers config object)."""

    @abc.abstractmethod
    def extra_rules(self, towers: Towers, prefixes: dict[Tower, str]) -> dict[Tower, dict]:
        """Per tower, rules beyond the shared tower layout (pooling heads, projections)."""

    @abc.abstractmethod
    def logit_rules(self, towers: Towers) -> dict[Path, Tensor]:
        """Rules for a two-tower model's logit scale and bias."""

    @abc.abstractmethod
    def export_config(self, towers: Towers, architecture: str) -> PretrainedConfig:
        """The transformers config that describes ``towers`` (for export)."""

    def tensor_rules(self, towers: Towers, prefixes: dict[Tower, str]) -> dict[Tower, dict]:
        configs: dict[Tower, Any] = {"image": towers.vision, "text": towers.text}
        extra = self.extra_rules(towers, prefixes)
        return {
            kind: nest(("tower",), tower_rules(kind, configs[kind], prefix)) | extra[kind]
            for kind, prefix in prefixes.items()
        }


def projection_rules(name: str, bias: bool) -> dict[Path, Tensor]:
    return nest(("projection",), linear(name, bias))
