"""The scorer's work in a step, cut to the crops it must embed.

``rerank.score_actions`` crops and embeds all B x G actions and the full image every step.
Two of those passes are redundant:

- the full image's ranking is the first stage's: the pool is the index's top K by the full
  image's embedding (the scorer's own resize, ``rerank``'s ``"stretch"`` view), so its scores
  arrive with the batch (``pool_scores``) and nothing re-embeds the image (under the
  ``"released"`` view the full image is seen through another resize, so it is embedded here);
- a FULL action, or a REGION action whose box is invalid, ranks with the full image, so its
  crop is never used.

So the step embeds only the valid REGION actions' crops, through a buffer of static
``capacity``: the actions to crop are packed to the front (in row order), and a
``lax.while_loop`` embeds ``capacity`` of them per trip until all are done. The loop runs
``ceil(n / capacity)`` trips for n crops: exact whatever n is (a step with more crops than the
buffer takes more trips; one with none takes none), with static shapes throughout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrank.region_r1.action import REGION
from jaxrank.region_r1.rerank import (
    ImageEmbedder,
    PoolScores,
    pool_scores,
    released_crop_fails,
    scorer_views,
    valid_boxes,
)


def full_image_scores(
    embed: ImageEmbedder, images: jax.Array, pool: jax.Array, size: int, view: str = "stretch"
) -> jax.Array:
    """The full image's pool scores ``[B, K]`` computed here (for batches without the first
    stage's ``pool_scores``, or a view the first stage did not use)."""
    _, full_view = scorer_views(view)
    return pool_scores(embed(full_view(images, size).astype(jnp.float32)), pool)


def score_region_crops(
    embed: ImageEmbedder,
    images: jax.Array,
    decision: jax.Array,
    boxes: jax.Array,
    pool: jax.Array,
    base: jax.Array,
    input_size: int,
    capacity: int,
    view: str = "stretch",
) -> tuple[PoolScores, jax.Array]:
    """``rerank.score_actions``'s ``PoolScores`` with the full image's scores ``base [B, K]``
    given, embedding only valid REGION crops, ``capacity`` per trip; and the trips taken."""
    crop_view, _ = scorer_views(view)
    b, g = decision.shape
    height, width = images.shape[1:3]
    box_valid = valid_boxes(boxes, height, width)
    use = ((decision == REGION) & box_valid).reshape(-1)
    count = use.sum()
    order = jnp.argsort(~use, stable=True)  # the crops to embed first, in row order
    order = jnp.pad(order, (0, capacity), constant_values=b * g)  # every trip reads in bounds
    flat_boxes = boxes.reshape(-1, 4)
    dim = jax.eval_shape(embed, jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32))
    trips = (count + capacity - 1) // capacity

    def trip(carry):
        i, embedded = carry
        rows = jax.lax.dynamic_slice(order, (i * capacity,), (capacity,))
        live = (jnp.arange(capacity) + i * capacity) < count
        safe = jnp.where(live, rows, 0)
        crops = crop_view(images[safe // g], flat_boxes[safe], input_size)
        out = embed(crops)
        return i + 1, embedded.at[jnp.where(live, rows, b * g)].set(out, mode="drop")

    start = (jnp.zeros((), jnp.int32), jnp.zeros((b * g, dim.shape[-1]), dim.dtype))
    _, embedded = jax.lax.while_loop(lambda c: c[0] < trips, trip, start)
    crop_scores = pool_scores(embedded.reshape(b, g, -1), pool)
    scores = jnp.where(use.reshape(b, g, 1), crop_scores, base[:, None, :])
    fails = released_crop_fails(boxes, height, width)
    return PoolScores(scores, base, box_valid, fails), trips
