"""OpenAI CLIP as transformers implements it: ``CLIPModel`` and its one-tower variants."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

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
from jaxrank.models.hf.tensors import Path, Tensor
from jaxrank.models.text import TextConfig
from jaxrank.models.vit import VisionConfig

if TYPE_CHECKING:
    from transformers import CLIPTextConfig, CLIPVisionConfig, PretrainedConfig

# Checkpoints written before transformers PR #24773 carry eos_token_id=2; their text tower pools
# at the largest token id instead (jaxrank's TextConfig.eos_token_id=None).
_LEGACY_EOS_TOKEN_ID = 2


def _vision(c: CLIPVisionConfig) -> VisionConfig:
    return vision_config(c, "vision_config")


def _text(c: CLIPTextConfig) -> TextConfig:
    eos = None if c.eos_token_id == _LEGACY_EOS_TOKEN_ID else c.eos_token_id
    return text_config(c, "text_config", eos_token_id=eos)


def _text_export(t: TextConfig) -> dict:
    eos = _LEGACY_EOS_TOKEN_ID if t.eos_token_id is None else t.eos_token_id
    return {**text_fields(t), "eos_token_id": eos}


class CLIPFamily(Family):
    name = "clip"
    by_model_type: ClassVar[dict[str, str]] = {
        "clip": "CLIPModel",
        "clip_vision_model": "CLIPVisionModel",
        "clip_text_model": "CLIPTextModel",
    }
    architectures: ClassVar[dict[str, tuple[Tower, ...]]] = {
        "CLIPModel": ("image", "text"),
        "CLIPVisionModel": ("image",),
        "CLIPVisionModelWithProjection": ("image",),
        "CLIPTextModel": ("text",),
        "CLIPTextModelWithProjection": ("text",),
    }

    def towers(self, config: PretrainedConfig, architecture: str) -> Towers:
        if architecture == "CLIPModel":
            return Towers(
                vision=_vision(config.vision_config),
                text=_text(config.text_config),
                vision_embed_dim=config.projection_dim,
                text_embed_dim=config.projection_dim,
                logit_scale_init=config.logit_scale_init_value,
            )
        projected = architecture.endswith("WithProjection")
        embed_dim = config.projection_dim if projected else None
        if architecture.startswith("CLIPVision"):
            return Towers(vision=_vision(config), text=None, vision_embed_dim=embed_dim)
        return Towers(vision=None, text=_text(config), text_embed_dim=embed_dim)

    def extra_rules(self, towers: Towers, prefixes: dict[Tower, str]) -> dict[Tower, dict]:
        del prefixes  # CLIP's projections sit at the top level whatever the tower prefix
        rules: dict[Tower, dict] = {"image": {}, "text": {}}
        if towers.vision_embed_dim is not None:
            rules["image"] = projection_rules("visual_projection", bias=False)
        if towers.text_embed_dim is not None:
            rules["text"] = projection_rules("text_projection", bias=False)
        return rules

    def logit_rules(self, towers: Towers) -> dict[Path, Tensor]:
        return {("logit_scale",): Tensor("logit_scale")}

    def export_config(self, towers: Towers, architecture: str) -> PretrainedConfig:
        from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

        if architecture == "CLIPModel":
            config = CLIPConfig(
                text_config=_text_export(towers.text),
                vision_config=vision_fields(towers.vision),
                projection_dim=towers.vision_embed_dim,
                logit_scale_init_value=towers.logit_scale_init,
            )
        elif towers.vision is not None:
            config = CLIPVisionConfig(
                **vision_fields(towers.vision), projection_dim=towers.vision_embed_dim or 512
            )
        else:
            config = CLIPTextConfig(
                **_text_export(towers.text), projection_dim=towers.text_embed_dim or 512
            )
        config.architectures = [architecture]
        return config


CLIP = CLIPFamily()
