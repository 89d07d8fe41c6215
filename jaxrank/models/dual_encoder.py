"""Two-tower image/text encoder with a learned temperature (CLIP) and optional bias (SigLIP).

Embeddings come back L2-normalised in float32 whatever the compute dtype, so that cosine scores,
rankings and search indexes do not depend on it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.typing import DTypeLike

from jaxrank.losses import contrastive_logits
from jaxrank.models.text import TextConfig, TextTransformer
from jaxrank.models.validation import require_choice, require_positive
from jaxrank.models.vit import VisionConfig, VisionTransformer

_FLOAT_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class DualEncoderConfig:
    """Both towers plus the shared embedding space.

    Each tower's pooled vector goes through a linear projection to ``embed_dim`` unless its
    ``*_projection`` flag is off (SigLIP's image tower), in which case its width must already be
    ``embed_dim``. Logits are ``exp(logit_scale) * cosine + logit_bias``.
    """

    vision: VisionConfig
    text: TextConfig
    embed_dim: int
    vision_projection: bool = True
    text_projection: bool = True
    projection_bias: bool = False
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: float | None = None
    dtype: DTypeLike = jnp.float32
    param_dtype: DTypeLike = jnp.float32

    def __post_init__(self) -> None:
        owner = type(self).__name__
        require_positive(owner, embed_dim=self.embed_dim)
        for name in ("dtype", "param_dtype"):
            value = getattr(self, name)
            try:
                dtype_name = jnp.dtype(value).name
            except TypeError as err:
                raise ValueError(f"{owner}.{name}={value!r} is not a dtype") from err
            require_choice(owner, name, dtype_name, _FLOAT_DTYPES)
        for tower, projected in (
            ("vision", self.vision_projection),
            ("text", self.text_projection),
        ):
            width = getattr(self, tower).width
            if not projected and width != self.embed_dim:
                raise ValueError(
                    f"{owner}.embed_dim={self.embed_dim} must equal {tower}.width={width} "
                    f"when {tower}_projection=False"
                )


@struct.dataclass
class DualEncoderOutput:
    """Unit-norm embeddings [B, D] (float32) and the raw (log-space) logit scale and bias."""

    image_embeds: jax.Array
    text_embeds: jax.Array
    logit_scale: jax.Array
    logit_bias: jax.Array | None

    def logits_per_text(self) -> jax.Array:
        """[B_text, B_image] logits, as transformers' ``logits_per_text``."""
        return contrastive_logits(
            self.text_embeds, self.image_embeds, self.logit_scale, self.logit_bias
        )


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """Unit vectors along ``axis``, computed and returned in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-24))


class _ProjectedTower(nnx.Module):
    """A tower (``tower_class`` built from ``config``) whose pooled vector is linearly projected
    to the embedding space when ``embed_dim`` is set (no projection when the tower width already
    is the embedding width), then L2-normalised in float32."""

    tower_class: ClassVar[type[VisionTransformer] | type[TextTransformer]]

    def __init__(
        self,
        config: VisionConfig | TextConfig,
        embed_dim: int | None,
        projection_bias: bool = False,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        dtypes = {"dtype": dtype, "param_dtype": param_dtype}
        self.tower = self.tower_class(config, **dtypes, rngs=rngs)
        self.projection = (
            None
            if embed_dim is None
            else nnx.Linear(config.width, embed_dim, use_bias=projection_bias, **dtypes, rngs=rngs)
        )

    def _embed(self, pooled: jax.Array) -> jax.Array:
        if self.projection is not None:
            pooled = self.projection(pooled)
        return l2_normalize(pooled)


class ImageEncoder(_ProjectedTower):
    """Image tower + projection: pixels [B, H, W, C] (channels-last, normalised) -> unit
    embeddings [B, D] float32. Alone, it is what a ``CLIPVisionModelWithProjection`` loads into."""

    tower_class = VisionTransformer

    def __call__(self, pixels: jax.Array) -> jax.Array:
        pooled, _ = self.tower(pixels)
        return self._embed(pooled)


class TextEncoder(_ProjectedTower):
    """Text tower + projection: token ids [B, L] (+ mask, 1 = real token) -> unit embeddings
    [B, D] float32. Alone, it is what a ``CLIPTextModelWithProjection`` loads into."""

    tower_class = TextTransformer

    def __call__(self, token_ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        pooled, _ = self.tower(token_ids, mask)
        return self._embed(pooled)


class DualEncoder(nnx.Module):
    """An image encoder and a text encoder that share one embedding space, and the logit scale
    (and SigLIP's bias) that turn their cosine similarities into logits."""

    def __init__(self, config: DualEncoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        shared = {
            "projection_bias": config.projection_bias,
            "dtype": config.dtype,
            "param_dtype": config.param_dtype,
            "rngs": rngs,
        }
        self.image = ImageEncoder(
            config.vision, config.embed_dim if config.vision_projection else None, **shared
        )
        self.text = TextEncoder(
            config.text, config.embed_dim if config.text_projection else None, **shared
        )
        self.logit_scale = nnx.Param(jnp.asarray(config.logit_scale_init, config.param_dtype))
        self.logit_bias = (
            None
            if config.logit_bias_init is None
            else nnx.Param(jnp.asarray(config.logit_bias_init, config.param_dtype))
        )

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        """Pixels [B, H, W, C] (channels-last, normalised) -> unit embeddings [B, D] float32."""
        return self.image(pixels)

    def encode_text(self, token_ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Token ids [B, L] (+ mask, 1 = real token) -> unit embeddings [B, D] float32."""
        return self.text(token_ids, mask)

    def encode_pair(
        self, pixels: jax.Array, token_ids: jax.Array, mask: jax.Array | None = None
    ) -> jax.Array:
        """One embedding for an entry that has both an image and a text (Region-R1's candidate):
        the normalised sum of the two unit embeddings."""
        return l2_normalize(self.encode_image(pixels) + self.encode_text(token_ids, mask))

    def __call__(
        self, pixels: jax.Array, token_ids: jax.Array, mask: jax.Array | None = None
    ) -> DualEncoderOutput:
        return DualEncoderOutput(
            image_embeds=self.encode_image(pixels),
            text_embeds=self.encode_text(token_ids, mask),
            logit_scale=self.logit_scale[...],
            logit_bias=None if self.logit_bias is None else self.logit_bias[...],
        )
