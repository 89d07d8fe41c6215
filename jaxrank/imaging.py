"""In-graph image preparation: crop a box, resize to the encoder's input, normalise.

Images travel to the device as uint8 and are resized inside the jitted step, so the host sends
the smallest arrays and a crop (Region-R1) is just another resize with a translation. Output
shapes are fixed, so a batch of different boxes is one compiled program.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

# The mean/std that the synthetic world's encoders use; CLIP and SigLIP configs set their own.
UNIT_MEAN = (0.5, 0.5, 0.5)
UNIT_STD = (0.5, 0.5, 0.5)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 or [0, 255] float pixels -> float32 ``(x/255 - mean) / std``."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def clamp_boxes(boxes: jax.Array, height: int, width: int) -> jax.Array:
    """Clip ``(x1, y1, x2, y2)`` pixel boxes to the image; may leave zero area (x1 >= x2)."""
    limits = jnp.asarray([width, height, width, height], boxes.dtype)
    return jnp.clip(boxes, 0, limits)


def box_area(boxes: jax.Array) -> jax.Array:
    return jnp.maximum(boxes[..., 2] - boxes[..., 0], 0) * jnp.maximum(
        boxes[..., 3] - boxes[..., 1], 0
    )


def box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Intersection over union of ``(x1, y1, x2, y2)`` boxes (broadcast); 0 when both are
    empty. Inverted boxes count as empty."""
    lo = jnp.maximum(a[..., :2], b[..., :2])
    hi = jnp.minimum(a[..., 2:], b[..., 2:])
    inter = jnp.prod(jnp.maximum(hi - lo, 0), axis=-1)
    union = box_area(a) + box_area(b) - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0.0)


def _crop_one(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
    height, width = image.shape[:2]
    box = clamp_boxes(box, height, width)
    # A degenerate box is widened to one pixel so the resize stays finite; the caller's reward
    # (not the pixels) is what punishes it.
    x1, y1 = jnp.minimum(box[0], width - 1), jnp.minimum(box[1], height - 1)
    x2, y2 = jnp.maximum(box[2], x1 + 1), jnp.maximum(box[3], y1 + 1)
    scale = jnp.stack([size / (y2 - y1), size / (x2 - x1)])
    translation = -jnp.stack([y1, x1]) * scale
    return jax.image.scale_and_translate(
        image,
        (size, size, image.shape[2]),
        spatial_dims=(0, 1),
        scale=scale,
        translation=translation,
        method="linear",
        antialias=True,
    )


def crop_and_resize(images: jax.Array, boxes: jax.Array, size: int) -> jax.Array:
    """Crop each image ``[..., H, W, C]`` to its box ``[..., 4]`` and resize to ``size``².

    Boxes are ``(x1, y1, x2, y2)`` in pixels (x2, y2 exclusive), clamped to the image first.
    Leading dimensions (e.g. ``[B, G]`` actions per query) are batched.
    """
    lead = images.shape[:-3]
    flat_images = images.reshape((-1, *images.shape[-3:])).astype(jnp.float32)
    flat_boxes = jnp.broadcast_to(boxes, (*lead, 4)).reshape(-1, 4).astype(jnp.float32)
    out = jax.vmap(_crop_one, in_axes=(0, 0, None))(flat_images, flat_boxes, size)
    return out.reshape((*lead, size, size, images.shape[-1]))


def resize(images: jax.Array, size: int) -> jax.Array:
    """The whole image to ``size``² (a crop whose box is the full frame)."""
    height, width = images.shape[-3:-1]
    full = jnp.asarray([0, 0, width, height], jnp.float32)
    return crop_and_resize(images, full, size)
