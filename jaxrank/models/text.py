"""Text transformer tower: token + learned position embeddings, encoder, final LayerNorm, pooling.

CLIP attends causally and pools at the end-of-text token; SigLIP attends in both directions and
pools at the last position (its tokenizer pads every text to ``max_len``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxrank.models.layer_stack import UNROLLED, Stacking
from jaxrank.models.transformer import ACTIVATIONS, Encoder, layer_norm
from jaxrank.models.validation import require_choice, require_divisible, require_positive

TextPool = Literal["eos", "last", "first", "mean"]
_EMBEDDING_INIT = nnx.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Shape and layout of the text tower. Defaults are CLIP's layout choices.

    ``pool``: 'eos' takes the first position holding ``eos_token_id`` (or, when that is None, the
    position of the largest token id, as the original CLIP code did: its end-of-text token has the
    largest id); 'last' the last position the mask keeps; 'first' position 0; 'mean' the masked
    average. Masked (padding) positions are never pooled.
    """

    vocab_size: int
    max_len: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    causal: bool = True
    pool: TextPool = "eos"
    eos_token_id: int | None = None
    stacking: Stacking = UNROLLED

    def __post_init__(self) -> None:
        owner = type(self).__name__
        require_positive(
            owner,
            vocab_size=self.vocab_size,
            max_len=self.max_len,
            width=self.width,
            depth=self.depth,
            heads=self.heads,
            mlp_dim=self.mlp_dim,
            layer_norm_eps=self.layer_norm_eps,
        )
        require_divisible(owner, "width", self.width, "heads", self.heads)
        require_choice(owner, "act", self.act, ACTIVATIONS)
        require_choice(owner, "pool", self.pool, ("eos", "last", "first", "mean"))
        if self.eos_token_id is not None and not 0 <= self.eos_token_id < self.vocab_size:
            raise ValueError(
                f"{owner}.eos_token_id={self.eos_token_id} must be a token id below "
                f"vocab_size={self.vocab_size}"
            )


class TextTransformer(nnx.Module):
    """Token ids [B, L] (+ mask [B, L], 1 = real token) -> (pooled [B, width], tokens)."""

    def __init__(
        self,
        config: TextConfig,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.config = config
        dtypes = {"dtype": dtype, "param_dtype": param_dtype}
        self.token_embedding = nnx.Embed(
            config.vocab_size, config.width, embedding_init=_EMBEDDING_INIT, **dtypes, rngs=rngs
        )
        self.position_embedding = nnx.Param(
            _EMBEDDING_INIT(rngs.params(), (config.max_len, config.width), param_dtype)
        )
        self.encoder = Encoder(
            config.width,
            config.depth,
            config.heads,
            config.mlp_dim,
            config.act,
            config.layer_norm_eps,
            **dtypes,
            stacking=config.stacking,
            rngs=rngs,
        )
        self.final_norm = layer_norm(config.width, config.layer_norm_eps, **dtypes, rngs=rngs)

    def __call__(
        self, token_ids: jax.Array, mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        if token_ids.ndim != 2 or token_ids.shape[1] > cfg.max_len:
            raise ValueError(
                f"token ids must have shape [B, L] with L <= TextConfig.max_len={cfg.max_len}; "
                f"got {tuple(token_ids.shape)}"
            )
        if mask is not None and mask.shape != token_ids.shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} must equal token ids shape "
                f"{tuple(token_ids.shape)}"
            )
        length = token_ids.shape[1]
        x = self.token_embedding(token_ids)
        x = x + self.position_embedding[:length].astype(x.dtype)
        x = self.encoder(x, key_mask=mask, causal=cfg.causal)
        tokens = self.final_norm(x)
        return self._pool(tokens, token_ids, mask), tokens

    def _pool(self, tokens: jax.Array, token_ids: jax.Array, mask: jax.Array | None) -> jax.Array:
        cfg = self.config
        keep = jnp.ones(token_ids.shape, bool) if mask is None else mask.astype(bool)
        if cfg.pool == "mean":
            weights = keep.astype(jnp.float32)[..., None]
            total = (tokens.astype(jnp.float32) * weights).sum(axis=1)
            return (total / jnp.maximum(weights.sum(axis=1), 1.0)).astype(tokens.dtype)

        if cfg.pool == "first":
            position = jnp.zeros(token_ids.shape[:1], jnp.int32)
        elif cfg.pool == "last":
            position = jnp.where(keep, jnp.arange(token_ids.shape[1]), 0).max(axis=1)
        elif cfg.eos_token_id is None:
            position = jnp.where(keep, token_ids, -1).argmax(axis=1)
        else:
            position = (keep & (token_ids == cfg.eos_token_id)).argmax(axis=1)
        return jnp.take_along_axis(tokens, position[:, None, None], axis=1)[:, 0]
