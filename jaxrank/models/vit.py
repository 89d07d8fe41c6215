"""Vision transformer image tower with the options that tell CLIP and SigLIP apart.

CLIP: class token, bias-free patch embedding, a LayerNorm before the encoder, pooling at the class
token. SigLIP: no class token, patch embedding with bias, no pre-norm, attention pooling ('map').
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxrank.models.layer_stack import UNROLLED, Stacking
from jaxrank.models.transformer import ACTIVATIONS, MLP, Encoder, MultiHeadAttention, layer_norm
from jaxrank.models.validation import require_choice, require_divisible, require_positive

VisionPool = Literal["cls", "mean", "map"]
_EMBEDDING_INIT = nnx.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Shape and layout of the image tower. Defaults are CLIP's layout choices.

    ``pool``: 'cls' takes the class token, 'mean' averages the patch tokens, 'map' is SigLIP's
    attention-pooling head (a learned probe attends to the tokens, then a residual MLP).
    ``post_norm`` normalises every output token (so the pooled vector too; for CLIP, whose
    checkpoint applies it to the pooled class token only, the pooled vector is the same).
    """

    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    class_token: bool = True
    patch_bias: bool = False
    pre_norm: bool = True
    pool: VisionPool = "cls"
    post_norm: bool = True
    channels: int = 3
    stacking: Stacking = UNROLLED

    def __post_init__(self) -> None:
        owner = type(self).__name__
        require_positive(
            owner,
            image_size=self.image_size,
            patch_size=self.patch_size,
            width=self.width,
            depth=self.depth,
            heads=self.heads,
            mlp_dim=self.mlp_dim,
            layer_norm_eps=self.layer_norm_eps,
            channels=self.channels,
        )
        require_divisible(owner, "image_size", self.image_size, "patch_size", self.patch_size)
        require_divisible(owner, "width", self.width, "heads", self.heads)
        require_choice(owner, "act", self.act, ACTIVATIONS)
        require_choice(owner, "pool", self.pool, ("cls", "mean", "map"))
        if self.pool == "cls" and not self.class_token:
            raise ValueError(f"{owner}.pool='cls' needs class_token=True")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2 + int(self.class_token)


class AttentionPoolingHead(nnx.Module):
    """SigLIP's 'map' head: one learned probe attends to all tokens, then a residual MLP."""

    def __init__(
        self,
        config: VisionConfig,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        dtypes = {"dtype": dtype, "param_dtype": param_dtype}
        self.probe = nnx.Param(_EMBEDDING_INIT(rngs.params(), (config.width,), param_dtype))
        self.attn = MultiHeadAttention(config.width, config.heads, **dtypes, rngs=rngs)
        self.norm = layer_norm(config.width, config.layer_norm_eps, **dtypes, rngs=rngs)
        self.mlp = MLP(config.width, config.mlp_dim, config.act, **dtypes, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        probe = jnp.broadcast_to(self.probe[...], (tokens.shape[0], 1, tokens.shape[-1]))
        pooled = self.attn(probe.astype(tokens.dtype), tokens)
        pooled = pooled + self.mlp(self.norm(pooled))
        return pooled[:, 0]


class VisionTransformer(nnx.Module):
    """Pixels [B, H, W, C] (channels-last, already normalised) -> (pooled [B, width], tokens)."""

    def __init__(
        self,
        config: VisionConfig,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.dtype = dtype
        dtypes = {"dtype": dtype, "param_dtype": param_dtype}
        width, eps = config.width, config.layer_norm_eps
        self.patch_embedding = nnx.Conv(
            config.channels,
            width,
            kernel_size=(config.patch_size, config.patch_size),
            strides=(config.patch_size, config.patch_size),
            padding="VALID",
            use_bias=config.patch_bias,
            **dtypes,
            rngs=rngs,
        )
        self.class_embedding = (
            nnx.Param(_EMBEDDING_INIT(rngs.params(), (width,), param_dtype))
            if config.class_token
            else None
        )
        self.position_embedding = nnx.Param(
            _EMBEDDING_INIT(rngs.params(), (config.num_tokens, width), param_dtype)
        )
        self.pre_norm = layer_norm(width, eps, **dtypes, rngs=rngs) if config.pre_norm else None
        self.encoder = Encoder(
            width,
            config.depth,
            config.heads,
            config.mlp_dim,
            config.act,
            eps,
            **dtypes,
            stacking=config.stacking,
            rngs=rngs,
        )
        self.post_norm = layer_norm(width, eps, **dtypes, rngs=rngs) if config.post_norm else None
        self.head = (
            AttentionPoolingHead(config, **dtypes, rngs=rngs) if config.pool == "map" else None
        )

    def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        expected = (cfg.image_size, cfg.image_size, cfg.channels)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(
                f"pixels must have shape [B, {', '.join(map(str, expected))}] for "
                f"VisionConfig(image_size={cfg.image_size}, channels={cfg.channels}); "
                f"got {tuple(pixels.shape)}"
            )
        patches = self.patch_embedding(pixels.astype(self.dtype))
        tokens = patches.reshape(patches.shape[0], -1, cfg.width)
        if self.class_embedding is not None:
            cls = jnp.broadcast_to(self.class_embedding[...], (tokens.shape[0], 1, cfg.width))
            tokens = jnp.concatenate([cls.astype(tokens.dtype), tokens], axis=1)
        tokens = tokens + self.position_embedding[...].astype(tokens.dtype)
        if self.pre_norm is not None:
            tokens = self.pre_norm(tokens)
        tokens = self.encoder(tokens)
        if self.post_norm is not None:
            tokens = self.post_norm(tokens)

        if cfg.pool == "cls":
            pooled = tokens[:, 0]
        elif cfg.pool == "mean":
            patch_tokens = tokens[:, int(cfg.class_token) :]
            pooled = patch_tokens.mean(axis=1, dtype=jnp.float32).astype(tokens.dtype)
        else:
            pooled = self.head(tokens)
        return pooled, tokens
