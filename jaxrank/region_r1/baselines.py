"""The crops Region-R1 compares its policy against (PAPERS.md §1): a fixed centre crop and a
random crop, as pixel boxes ``(x1, y1, x2, y2)`` with x2/y2 exclusive."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def centre_boxes(shape: tuple[int, ...], height: int, width: int, fraction: float) -> jax.Array:
    """The centred box whose sides are ``fraction`` of the image's: float32 ``shape + (4,)``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"centre crop fraction must be in (0, 1], got {fraction}")
    w, h = fraction * width, fraction * height
    box = jnp.asarray([(width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2])
    return jnp.broadcast_to(box.astype(jnp.float32), (*shape, 4))


def random_boxes(
    key: jax.Array,
    shape: tuple[int, ...],
    height: int,
    width: int,
    fraction: tuple[float, float],
) -> jax.Array:
    """Uniformly placed boxes inside the image whose sides are each a uniform
    ``fraction`` of the image's: float32 ``shape + (4,)``."""
    lo, hi = fraction
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"random crop fractions must satisfy 0 < lo <= hi <= 1, got {fraction}")
    side_key, corner_key = jax.random.split(key)
    sides = jax.random.uniform(side_key, (*shape, 2), minval=lo, maxval=hi)
    sides = sides * jnp.asarray([width, height], jnp.float32)
    limits = jnp.asarray([width, height], jnp.float32) - sides
    corner = jax.random.uniform(corner_key, (*shape, 2)) * limits
    return jnp.concatenate([corner, corner + sides], axis=-1)
