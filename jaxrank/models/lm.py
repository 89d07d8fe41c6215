"""Decoder-only language model of the Qwen2 family: RMSNorm, SwiGLU MLP, grouped-query attention
with q/k/v biases and rotary position embeddings (the layout of Qwen2 checkpoints, so their
weights map one tensor at a time; see ``jaxrank.models.hf.qwen2``).

The model is a pure function of (token ids or embeddings, positions, mask, cache): positions are
passed explicitly so that left-padded batches and Qwen2-VL's multimodal rotary positions (three
position streams, M-RoPE) reuse the same code, and the key/value cache is an explicit pytree in
and out so that prefill and decode are two shapes of one jitted function.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from jaxrank.models import layer_stack
from jaxrank.models.layer_stack import UNROLLED, Stacking
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
    mrope_section: tuple[int, ...] | None = None
    stacking: Stacking = UNROLLED

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
        if self.mrope_section is not None and sum(self.mrope_section) != self.dim_per_head // 2:
            raise ValueError(
                f"{owner}: mrope_section={self.mrope_section} must sum to head_dim / 2 = "
                f"{self.dim_per_head // 2}"
            )

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


def rotary_tables(
    positions: jax.Array,
    head_dim: int,
    theta: float,
    mrope_section: tuple[int, ...] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, head_dim] (halves repeated) for integer ``positions`` [B, T], or for
    M-RoPE's [3, B, T] (temporal, height, width) where the frequency pairs are split into
    ``mrope_section`` consecutive groups, group i rotating by position stream i."""
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    positions = positions.astype(jnp.float32)
    if mrope_section is None:
        angles = positions[..., None] * inv_freq
    else:
        if positions.ndim != 3 or positions.shape[0] != len(mrope_section):
            raise ValueError(
                f"M-RoPE positions must be [{len(mrope_section)}, B, T], got {positions.shape}"
            )
        stream = np.repeat(np.arange(len(mrope_section)), mrope_section)
        angles = jnp.moveaxis(positions[stream], 0, -1) * inv_freq
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

    def __call__(
        self,
        x: jax.Array,
        rotary: tuple[jax.Array, jax.Array],
        visible: jax.Array,
        cached: tuple[jax.Array, jax.Array] | None = None,
        start: jax.Array | int = 0,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """``x`` [B, T, W]; ``visible`` [B, T, S] bool (query may attend to key slot). With
        ``cached`` (keys [B, kv_heads, D, S], values [B, kv_heads, S, D]), this call's keys and
        values are written at slots ``start .. start + T`` and attention runs over all S slots;
        returns (out, keys/values) in the cache's layout. Keys are stored transposed so that
        both attention products read the cache as plain matrices, without a per-step transpose
        (XLA's CPU batched dot is several times slower on the untransposed layout)."""
        c, d = self.config, self.config.dim_per_head
        batch, length = x.shape[:2]
        groups = c.heads // c.kv_heads
        split = lambda y, n: y.reshape(batch, length, n, d)
        q = apply_rotary(split(self.q_proj(x), c.heads), *rotary).transpose(0, 2, 1, 3)
        k = apply_rotary(split(self.k_proj(x), c.kv_heads), *rotary).transpose(0, 2, 3, 1)
        v = split(self.v_proj(x), c.kv_heads).transpose(0, 2, 1, 3)
        if cached is not None:
            k = jax.lax.dynamic_update_slice(cached[0], k.astype(cached[0].dtype), (0, 0, 0, start))
            v = jax.lax.dynamic_update_slice(cached[1], v.astype(cached[1].dtype), (0, 0, start, 0))
        q = q.reshape(batch, c.kv_heads, groups, length, d)
        logits = jnp.einsum(
            "bkgqd,bkds->bkgqs", q, k.astype(q.dtype), preferred_element_type=jnp.float32
        )
        logits = logits * d**-0.5
        logits = jnp.where(visible[:, None, None], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
        out = jnp.einsum("bkgqs,bksd->bkgqd", weights, v.astype(q.dtype))
        out = out.transpose(0, 3, 1, 2, 4)
        return self.o_proj(out.reshape(batch, length, c.heads * d)), (k, v)


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

    def __call__(self, x, rotary, visible, cached=None, start=0):
        attended, kv = self.self_attn(self.input_layernorm(x), rotary, visible, cached, start)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), kv


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer for ``S`` slots, filled left to right by successive
    calls; all rows advance together (prompts are left-padded, so a row's padding is just
    slots that are never ``filled``)."""

    # Per layer [B, kv_heads, head_dim, S] (transposed) and [B, kv_heads, S, head_dim]: a
    # tuple of layers, or one array with a leading layer axis when the layers are scanned.
    keys: tuple[jax.Array, ...] | jax.Array
    values: tuple[jax.Array, ...] | jax.Array
    filled: jax.Array  # [B, S] bool: the slot holds a real token
    length: jax.Array  # int32 scalar: slots written so far

    @classmethod
    def empty(cls, config: LMConfig, batch: int, size: int, dtype: DTypeLike) -> KVCache:
        keys = (batch, config.kv_heads, config.dim_per_head, size)
        values = (batch, config.kv_heads, size, config.dim_per_head)
        if config.stacking.scan:
            zeros = lambda shape: jnp.zeros((config.depth, *shape), dtype)
        else:
            zeros = lambda shape: tuple(jnp.zeros(shape, dtype) for _ in range(config.depth))
        return cls(
            zeros(keys), zeros(values), jnp.zeros((batch, size), bool), jnp.zeros((), jnp.int32)
        )

    def repeat(self, times: int) -> KVCache:
        """Each row repeated ``times`` times in place (row b -> rows b*times .. b*times+times-1),
        so G samples per prompt share one prefill."""
        rep = lambda x: jnp.repeat(x, times, axis=0)
        if isinstance(self.keys, tuple):
            keys, values = tuple(map(rep, self.keys)), tuple(map(rep, self.values))
        else:
            keys, values = (jnp.repeat(x, times, axis=1) for x in (self.keys, self.values))
        return KVCache(keys, values, rep(self.filled), self.length)


@flax.struct.dataclass
class LMOutput:
    logits: jax.Array | None  # [B, T, V] float32
    hidden: jax.Array  # [B, T, W] after the final norm
    cache: KVCache | None


class CausalLM(nnx.Module):
    """Token ids (or input embeddings) [B, T] -> logits, last hidden states and, when given a
    cache, the cache with this call's keys and values appended."""

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
        self.layers = layer_stack.build(
            lambda rngs: DecoderLayer(config, dtypes=dtypes, rngs=rngs),
            config.depth,
            config.stacking.scan,
            rngs,
        )
        self.norm = RMSNorm(config.width, config.rms_norm_eps, param_dtype=param_dtype)
        self.lm_head = (
            None
            if config.tie_embeddings
            else nnx.Linear(config.width, config.vocab_size, use_bias=False, **dtypes, rngs=rngs)
        )

    def __call__(
        self,
        token_ids: jax.Array | None = None,
        mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        *,
        embeddings: jax.Array | None = None,
        cache: KVCache | None = None,
        compute_logits: bool = True,
    ) -> LMOutput:
        """``mask`` [B, T] marks real tokens (padded keys are never attended to). ``positions``
        [B, T] (or [3, B, T] with M-RoPE) default to the slot index, as the reference uses when
        none are given. ``embeddings`` [B, T, W] replace the token lookup (a VLM splices image
        features into them). ``compute_logits=False`` skips the vocabulary projection (logits
        None) for callers that need it at a few positions only (``logits``)."""
        x = self.embed_tokens(token_ids) if embeddings is None else embeddings
        batch, length = x.shape[:2]
        real = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)
        start = 0 if cache is None else cache.length
        if cache is None:
            filled = real
        else:
            filled = jax.lax.dynamic_update_slice(cache.filled, real, (0, start))
        slots = jnp.arange(filled.shape[1])
        visible = (slots[None, :] <= start + jnp.arange(length)[:, None])[None] & filled[:, None]
        if positions is None:
            positions = jnp.broadcast_to(start + jnp.arange(length), (batch, length))
            if self.config.mrope_section is not None:
                positions = jnp.broadcast_to(positions, (3, batch, length))
        c = self.config
        rotary = rotary_tables(positions, c.dim_per_head, c.rope_theta, c.mrope_section)

        def body(layer, x, cached):
            x, kv = layer(x, rotary, visible, cached, start)
            return x, None if cached is None else kv

        cached = None
        if cache is not None:
            stacked = not isinstance(cache.keys, tuple)
            cached = (
                (cache.keys, cache.values)
                if stacked
                else list(zip(cache.keys, cache.values, strict=True))
            )
        x, kv = layer_stack.run(self.layers, body, x, cached, remat=c.stacking.remat)
        hidden = self.norm(x)
        logits = self.logits(hidden) if compute_logits else None
        if cache is not None:
            keys, values = (tuple(t) for t in zip(*kv, strict=True)) if isinstance(kv, list) else kv
            cache = KVCache(keys, values, filled, start + length)
        return LMOutput(logits, hidden, cache)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Float32 next-token logits from final hidden states."""
        head = self.embed_tokens.attend if self.lm_head is None else self.lm_head
        return head(hidden).astype(jnp.float32)
