"""A stochastic embedding head for ELVA's RL stage (PAPERS.md §2, the fast path): the policy
is a Gaussian around the dual encoder's deterministic embedding, with a learned scale per
dimension, so G rollouts of one query differ and each has a log-probability for GRPO.

A sample is the raw draw z ~ N(mean, diag(scale^2)); the scorer normalises it like any
embedding, and the log-prob is that of z (normalising is a deterministic map applied after,
so it does not change which rollout is more likely).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(z: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
    """log N(z; mean, diag(exp(log_scale)^2)) summed over the last axis, float32."""
    z, mean = jnp.asarray(z, jnp.float32), jnp.asarray(mean, jnp.float32)
    log_scale = jnp.asarray(log_scale, jnp.float32)
    standard = (z - mean) * jnp.exp(-log_scale)
    return jnp.sum(-0.5 * standard**2 - log_scale - _HALF_LOG_2PI, axis=-1)


class GaussianEmbeddingHead(nnx.Module):
    """``log_scale`` [D] is the trained parameter (initial scale ``init_scale``)."""

    def __init__(self, dim: int, init_scale: float = 0.05):
        if dim < 1 or init_scale <= 0:
            raise ValueError(f"dim ({dim}) and init_scale ({init_scale}) must be positive")
        self.log_scale = nnx.Param(jnp.full((dim,), math.log(init_scale), jnp.float32))

    def sample(self, key: jax.Array, mean: jax.Array, group: int) -> tuple[jax.Array, jax.Array]:
        """``group`` draws per embedding: z ``[..., G, D]`` for ``mean [..., D]`` and their
        log-probs ``[..., G]``."""
        log_scale = self.log_scale[...]
        noise = jax.random.normal(key, (*mean.shape[:-1], group, mean.shape[-1]), jnp.float32)
        z = mean[..., None, :] + noise * jnp.exp(log_scale)
        return z, gaussian_log_prob(z, mean[..., None, :], log_scale)

    def log_prob(self, z: jax.Array, mean: jax.Array) -> jax.Array:
        """Log-probs ``[...]`` of draws ``z [..., D]`` around ``mean`` (broadcast)."""
        return gaussian_log_prob(z, mean, self.log_scale[...])
