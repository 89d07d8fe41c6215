"""Re-rank a query's candidate pool with a frozen image scorer, from the full or a cropped image.

Region-R1's scoring (PAPERS.md §1): the query embedding is the image alone, cropped or full;
each candidate's embedding is fixed (image + text, normalised); the score is their cosine.
Every action of a group ``[B, G]`` is scored in one batched call with static shapes, so the
crop, the scorer and the pool scores all run inside the jitted training step.

An action's ranking is the crop's when it is REGION with a valid box, and the full image's
otherwise: FULL keeps the image, and a degenerate box falls back to it at inference (its
reward still punishes it; see ``jaxrank.region_r1.reward``).

The scorer's view (``view``): ``"stretch"`` (jaxrank's) resizes the box to the scorer's square
whatever its shape; ``"released"`` is Region-R1's released path (``imaging.released_crop_view``:
PIL crop at rounded edges, ``smart_resize``, then the CLIP processor's shortest-side resize and
centre crop; the full image through the processor alone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrank import imaging
from jaxrank.region_r1.action import REGION

# float32 pixels in [0, 255] [N, S, S, 3] -> L2-normalised embeddings [N, D]
ImageEmbedder = Callable[[jax.Array], jax.Array]


class PoolScores(NamedTuple):
    """``scores [B, G, K]``: the ranking each action produces (crop or full, see module doc;
    for a valid REGION box these are the crop's scores, which the reward reads);
    ``base [B, K]`` the full image's; ``box_valid [B, G]`` finite, positive-area box."""

    scores: jax.Array
    base: jax.Array
    box_valid: jax.Array
    crop_fails: jax.Array | None = None  # [B, G] see ``released_crop_fails``


def valid_boxes(boxes: jax.Array, height: int, width: int) -> jax.Array:
    """Finite boxes with positive area after clamping to the image: ``[...]`` bool."""
    finite = jnp.all(jnp.isfinite(boxes), axis=-1)
    safe = jnp.where(finite[..., None], boxes, 0.0)
    return finite & (imaging.box_area(imaging.clamp_boxes(safe, height, width)) > 0)


def released_crop_fails(boxes: jax.Array, height: int, width: int) -> jax.Array:
    """Boxes whose crop raises in the released code: positive area after clamping but a side
    under one pixel, so ``smart_resize(int(h), int(w))`` divides by zero (``src/utils.py``).
    Its training reward then takes a fixed value and its evaluation skips the sample."""
    safe = jnp.where(jnp.all(jnp.isfinite(boxes), axis=-1)[..., None], boxes, 0.0)
    clamped = imaging.clamp_boxes(safe, height, width)
    sides = clamped[..., 2:] - clamped[..., :2]
    return valid_boxes(boxes, height, width) & jnp.any(sides < 1, axis=-1)


VIEWS = ("stretch", "released")


def scorer_views(view: str) -> tuple[Callable, Callable]:
    """``(crop(images, boxes, size), full(images, size))`` of a scorer view (module doc)."""
    if view == "stretch":
        return imaging.crop_and_resize, imaging.resize
    if view == "released":
        return imaging.released_crop_view, imaging.released_full_view
    raise ValueError(f"unknown crop view {view!r}; expected one of {VIEWS}")


def pool_scores(queries: jax.Array, pool: jax.Array) -> jax.Array:
    """Cosine of query embeddings ``[B, *S, D]`` with their own pool ``[B, K, D]``:
    ``[B, *S, K]`` float32 (both sides already L2-normalised)."""
    flat = queries.reshape(queries.shape[0], -1, queries.shape[-1])
    scores = jnp.einsum("bsd,bkd->bsk", flat, pool, preferred_element_type=jnp.float32)
    return scores.reshape(*queries.shape[:-1], pool.shape[1])


def score_actions(
    embed: ImageEmbedder,
    images: jax.Array,
    decision: jax.Array,
    boxes: jax.Array,
    pool: jax.Array,
    input_size: int,
    view: str = "stretch",
) -> PoolScores:
    """Score the pool for every action of every query.

    Args:
      embed: the frozen scorer's image tower (see ``ImageEmbedder``).
      images: ``[B, H, W, 3]`` uint8 query images.
      decision: ``[B, G]`` FULL (0) or REGION (1).
      boxes: ``[B, G, 4]`` pixel boxes (x1, y1, x2, y2), x2/y2 exclusive; read for REGION only.
      pool: ``[B, K, D]`` the candidates' embeddings.
      input_size: the scorer's input side; crops and the full image are resized to it.
      view: how a crop and the full image become the scorer's input (module doc).
    """
    crop_view, full_view = scorer_views(view)
    height, width = images.shape[1:3]
    box_valid = valid_boxes(boxes, height, width)
    safe = jnp.where(box_valid[..., None], boxes, jnp.asarray([0, 0, width, height], boxes.dtype))
    group = decision.shape[1]
    tiled = jnp.broadcast_to(images[:, None], (images.shape[0], group, *images.shape[1:]))
    crops = crop_view(tiled, safe, input_size)
    crop_emb = embed(crops.reshape(-1, *crops.shape[2:])).reshape(*decision.shape, -1)
    full_emb = embed(full_view(images, input_size).astype(jnp.float32))
    base = pool_scores(full_emb, pool)
    use_crop = (decision == REGION) & box_valid
    scores = jnp.where(use_crop[..., None], pool_scores(crop_emb, pool), base[:, None, :])
    return PoolScores(scores, base, box_valid, released_crop_fails(boxes, height, width))
