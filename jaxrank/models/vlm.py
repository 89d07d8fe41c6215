"""Qwen2-VL / Qwen2.5-VL as one nnx module: the vision tower's image tokens replace the
embeddings of the image placeholder tokens, and the decoder runs with M-RoPE positions.

The result of ``prompt`` is an ordinary ``Prompt`` with embeddings, so the sampler
(``jaxrank.rl.sampler.generate``) and the scorer (``jaxrank.models.lm_scoring``) serve the VLM
through its ``language_model`` exactly as they serve a text-only decoder.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxrank.models.lm import CausalLM, LMConfig, LMOutput
from jaxrank.models.lm_prompt import Prompt
from jaxrank.models.qwen_vision import Grid, QwenVisionConfig, QwenVisionTower


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    lm: LMConfig
    vision: QwenVisionConfig
    image_token_id: int

    def __post_init__(self) -> None:
        if self.lm.mrope_section is None:
            raise ValueError("VLMConfig.lm needs mrope_section: Qwen2-VL decoders use M-RoPE")
        if self.vision.out_width != self.lm.width:
            raise ValueError(
                f"VLMConfig: vision out_width {self.vision.out_width} != lm width {self.lm.width}"
            )


class VisionLanguageModel(nnx.Module):
    def __init__(
        self,
        config: VLMConfig,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.visual = QwenVisionTower(
            config.vision, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.language_model = CausalLM(config.lm, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def prompt(
        self,
        tokens: jax.Array,
        mask: jax.Array,
        positions: jax.Array,
        patches: jax.Array | None = None,
        grids: tuple[Grid, ...] = (),
    ) -> Prompt:
        """Token embeddings with every image placeholder (in reading order, row by row)
        replaced by the next image token of ``visual(patches, grids)``. ``grids`` are static
        (close over them under jit); their token count must equal the placeholders'."""
        embeddings = self.language_model.embed_tokens(tokens)
        if grids:
            features = self.visual(patches, grids)
            width = embeddings.shape[-1]
            placeholders = (tokens == self.config.image_token_id) & mask.astype(bool)
            slots = jnp.nonzero(placeholders.reshape(-1), size=features.shape[0])[0]
            flat = embeddings.reshape(-1, width).at[slots].set(features.astype(embeddings.dtype))
            embeddings = flat.reshape(embeddings.shape)
        return Prompt(tokens, mask.astype(bool), positions, embeddings)

    def __call__(
        self,
        tokens: jax.Array,
        mask: jax.Array,
        positions: jax.Array,
        patches: jax.Array | None = None,
        grids: tuple[Grid, ...] = (),
    ) -> LMOutput:
        """Logits and hidden states of the whole sequence (teacher forcing)."""
        p = self.prompt(tokens, mask, positions, patches, grids)
        return self.language_model(p.tokens, p.mask, p.positions, embeddings=p.embeddings)
