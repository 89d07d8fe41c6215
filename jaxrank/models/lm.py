"""Decoder-only language model of the Qwen2 family: RMSNorm, SwiGLU MLP, grouped-query attention
with q/k/v biases and rotary position embeddings (the layout of Qwen2 checkpoints, so their
weights map one tensor at a time; see ``jaxrank.models.hf.qwen2``).

The model is a pure function of (token ids, positions, mask): positions are passed explicitly so
that left-padded batches and, later, multimodal rotary positions reuse the same code.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxrank.models.sharding import (
    COLUMN_PARALLEL,
    ROW_PARALLEL,
    partitioned,
    place_on_mesh_if_set,
)
from jaxrank.models.validation import require_divisible, require_positive

_INIT = nnx.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Shape of the decoder. ``kv_heads`` < ``heads`` is grouped-query attention; ``head_dim``
    defaults to ``width // heads``; ``tie_embeddings`` reuses the token embedding as the output
    layer (small Qwen2 models do)."""

    vocab_size: int
    width: int
    depth: int
    heads: int
    kv_heads: int
    mlp_dim: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        require_positive(
            owner,
            vocab_size=self.vocab_size,
            width=self.width,
            depth=self.depth,
            heads=self.heads,
            kv_heads=self.kv_heads,
            mlp_dim=self.mlp_dim,
            rope_theta=self.rope_theta,
        )
        require_divisible(owner, "heads", self.heads, "kv_heads", self.kv_heads)
        if self.head_dim is None:
            require_divisible(owner, "width", self.width, "heads", self.heads)
        if self.dim_per_head % 2:
            raise ValueError(f"{owner}: head_dim={self.dim_per_head} must be even for rotary")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.width // self.heads


class RMSNorm(nnx.Module):
    """``weight * x / rms(x)``, the statistics in float32, cast back before the weight (as the
    reference does)."""

    def __init__(self, width: int, eps: float, *, param_dtype: DTypeLike = jnp.float32):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((width,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * normed.astype(x.dtype)


def rotary_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, ...]:
    """cos and sin [B, T, head_dim] for integer ``positions`` [B, T] (halves repeated)."""
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x`` [B, T, H, D] by the tables [B, T, D] (the rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def _linear(n_in: int, n_out: int, bias: bool, spec, dtypes: dict, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        n_in, n_out, use_bias=bias, kernel_metadata=partitioned(spec), **dtypes, rngs=rngs
    )


class GroupedQueryAttention(nnx.Module):
    """Causal self-attention where each of ``kv_heads`` key/value heads serves
    ``heads // kv_heads`` query heads."""

    def __init__(self, config: LMConfig, *, dtypes: dict, rngs: nnx.Rngs):
        self.config = config
        c, d = config, config.dim_per_head
        with place_on_mesh_if_set():
            self.q_proj = _linear(c.width, c.heads * d, True, COLUMN_PARALLEL, dtypes, rngs)
            self.k_proj = _linear(c.width, c.kv_heads * d, True, COLUMN_PARALLEL, dtypes, rngs)
            self.v_proj = _linear(c.width, c.kv_heads * d, True, COLUMN_PARALLEL, dtypes, rngs)
            self.o_proj = _linear(c.heads * d, c.width, False, ROW_PARALLEL, dtypes, rngs)

    def __call__(self, x: jax.Array, rotary: tuple[jax.Array, jax.Array], visible: jax.Array):
        """``x`` [B, T, W]; ``visible`` [B, T, T] bool (query may attend to key)."""
        c, d = self.config, self.config.dim_per_head
        batch, length = x.shape[:2]
        groups = c.heads // c.kv_heads
        q = apply_rotary(self.q_proj(x).reshape(batch, length, c.heads, d), *rotary)
        k = apply_rotary(self.k_proj(x).reshape(batch, length, c.kv_heads, d), *rotary)
        v = self.v_proj(x).reshape(batch, length, c.kv_heads, d)
        q = q.reshape(batch, length, c.kv_heads, groups, d)
        logits = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32)
        logits = logits * d**-0.5
        logits = jnp.where(visible[:, None, None], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgqs,bskd->bqkgd", weights, v).reshape(batch, length, c.heads * d)
        return self.o_proj(out)


class SwiGLU(nnx.Module):
    """``down(silu(gate(x)) * up(x))``."""

    def __init__(self, width: int, hidden: int, *, dtypes: dict, rngs: nnx.Rngs):
        with place_on_mesh_if_set():
            self.gate_proj = _linear(width, hidden, False, COLUMN_PARALLEL, dtypes, rngs)
            self.up_proj = _linear(width, hidden, False, COLUMN_PARALLEL, dtypes, rngs)
            self.down_proj = _linear(hidden, width, False, ROW_PARALLEL, dtypes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, config: LMConfig, *, dtypes: dict, rngs: nnx.Rngs):
        norm_dtype = {"param_dtype": dtypes["param_dtype"]}
        self.input_layernorm = RMSNorm(config.width, config.rms_norm_eps, **norm_dtype)
        self.self_attn = GroupedQueryAttention(config, dtypes=dtypes, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.width, config.rms_norm_eps, **norm_dtype)
        self.mlp = SwiGLU(config.width, config.mlp_dim, dtypes=dtypes, rngs=rngs)

    def __call__(self, x, rotary, visible):
        x = x + self.self_attn(self.input_layernorm(x), rotary, visible)
        return x + self.mlp(self.post_attention_layernorm(x))


class CausalLM(nnx.Module):
    """Token ids [B, T] -> (logits [B, T, V] float32, last hidden states [B, T, W])."""

    def __init__(
        self,
        config: LMConfig,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.config = config
        dtypes = {"dtype": dtype, "param_dtype": param_dtype}
        self.embed_tokens = nnx.Embed(
            config.vocab_size, config.width, embedding_init=_INIT, **dtypes, rngs=rngs
        )
        self.layers = nnx.List(
            [DecoderLayer(config, dtypes=dtypes, rngs=rngs) for _ in range(config.depth)]
        )
        self.norm = RMSNorm(config.width, config.rms_norm_eps, param_dtype=param_dtype)
        self.lm_head = (
            None
            if config.tie_embeddings
            else nnx.Linear(config.width, config.vocab_size, use_bias=False, **dtypes, rngs=rngs)
        )

    def __call__(
        self,
        token_ids: jax.Array,
        mask: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """``mask`` [B, T] marks real tokens (padded keys are never attended to); ``positions``
        [B, T] default to 0..T-1, as the reference uses when none are given."""
        batch, length = token_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        visible = jnp.tril(jnp.ones((length, length), bool))[None]
        if mask is not None:
            visible = visible & mask.astype(bool)[:, None, :]
        rotary = rotary_tables(positions, self.config.dim_per_head, self.config.rope_theta)
        x = self.embed_tokens(token_ids)
        for layer in self.layers:
            x = layer(x, rotary, visible)
        hidden = self.norm(x)
        head = self.embed_tokens.attend if self.lm_head is None else self.lm_head
        logits = head(hidden)
        return logits.astype(jnp.float32), hidden
