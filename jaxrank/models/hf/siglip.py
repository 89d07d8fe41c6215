"""Google SigLIP as transformers implements it: ``SiglipModel`` and its one-tower variants.

Its image embedding is the attention-pooling head's output (no projection); its text embedding is
the last position's state through a linear ``head`` with bias. The reference pools the last
position even when it is padding, which is why SigLIP texts are padded to ``max_length`` and the
model is called without an attention mask.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

from jaxrank.models.hf.errors import UnsupportedCheckpoint
from jaxrank.models.hf.family import (
    Family,
    Tower,
    Towers,
    projection_rules,
    text_config,
    text_fields,
    vision_config,
    vision_fields,
)
from jaxrank.models.hf.tensors import (
    Path,
    Tensor,
    layer_norm,
    linear,
    nest,
    packed_attention,
)
from jaxrank.models.text import TextConfig
from jaxrank.models.vit import VisionConfig

if TYPE_CHECKING:
    from transformers import PretrainedConfig, SiglipTextConfig, SiglipVisionConfig


def _vision(c: SiglipVisionConfig) -> VisionConfig:
    if not c.vision_use_head:
        raise UnsupportedCheckpoint(
            "vision_config.vision_use_head=False: without its pooling head a SigLIP image tower "
            "has no image embedding"
        )
    layout = {"class_token": False, "patch_bias": True, "pre_norm": False, "pool": "map"}
    return vision_config(c, "vision_config", **layout)


def _text(c: SiglipTextConfig) -> TextConfig:
    return text_config(c, "text_config", causal=False, pool="last")


class SiglipFamily(Family):
    name = "siglip"
    by_model_type: ClassVar[dict[str, str]] = {
        "siglip": "SiglipModel",
        "siglip_vision_model": "SiglipVisionModel",
        "siglip_text_model": "SiglipTextModel",
    }
    architectures: ClassVar[dict[str, tuple[Tower, ...]]] = {
        "SiglipModel": ("image", "text"),
        "SiglipVisionModel": ("image",),
        "SiglipTextModel": ("text",),
    }

    def towers(self, config: PretrainedConfig, architecture: str) -> Towers:
        if architecture == "SiglipModel":
            vision, text = _vision(config.vision_config), _text(config.text_config)
            projection = config.text_config.projection_size
            if projection != vision.width:
                raise UnsupportedCheckpoint(
                    f"text_config.projection_size={projection} must equal "
                    f"vision_config.hidden_size={vision.width}: the image embedding is unprojected"
                )
            return Towers(
                vision,
                text,
                text_embed_dim=projection,
                projection_bias=True,
                logit_scale_init=math.log(10.0),  # SigLIP's initial values (the paper's §3)
                logit_bias_init=-10.0,
            )
        if architecture == "SiglipVisionModel":
            return Towers(vision=_vision(config), text=None)
        return Towers(
            vision=None,
            text=_text(config),
            text_embed_dim=config.projection_size,
            projection_bias=True,
        )

    def extra_rules(self, towers: Towers, prefixes: dict[Tower, str]) -> dict[Tower, dict]:
        rules: dict[Tower, dict] = {}
        if "image" in prefixes:
            head = f"{prefixes['image']}head"
            width = towers.vision.width
            rules["image"] = nest(
                ("tower", "head"),
                {
                    ("probe",): Tensor(f"{head}.probe", checkpoint_shape=(1, 1, width)),
                    **nest(("attn",), packed_attention(f"{head}.attention", width)),
                    **nest(("norm",), layer_norm(f"{head}.layernorm")),
                    **nest(("mlp", "fc1"), linear(f"{head}.mlp.fc1")),
                    **nest(("mlp", "fc2"), linear(f"{head}.mlp.fc2")),
                },
            )
        if "text" in prefixes:
            rules["text"] = projection_rules(f"{prefixes['text']}head", bias=True)
        return rules

    def logit_rules(self, towers: Towers) -> dict[Path, Tensor]:
        return {
            ("logit_scale",): Tensor("logit_scale", checkpoint_shape=(1,)),
            ("logit_bias",): Tensor("logit_bias", checkpoint_shape=(1,)),
        }

    def export_config(self, towers: Towers, architecture: str) -> PretrainedConfig:
        from transformers import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

        if architecture == "SiglipModel":
            config = SiglipConfig(
                text_config={**text_fields(towers.text), "projection_size": towers.text_embed_dim},
                vision_config=vision_fields(towers.vision),
            )
        elif towers.vision is not None:
            config = SiglipVisionConfig(**vision_fields(towers.vision))
        else:
            config = SiglipTextConfig(
                **{**text_fields(towers.text), "projection_size": towers.text_embed_dim}
            )
        config.architectures = [architecture]
        return config


SIGLIP = SiglipFamily()
