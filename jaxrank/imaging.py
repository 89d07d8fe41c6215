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


def _released_sizes(
    heights: jax.Array, widths: jax.Array, factor: int, min_pixels: int, max_pixels: int
) -> tuple[jax.Array, jax.Array]:
    """Region-R1's ``smart_resize`` of a crop (taco-group/Region-R1 ``src/utils.py``), traced:
    sides rounded (half to even, as Python's ``round``) to multiples of ``factor``, then scaled
    into ``[min_pixels, max_pixels]``. Float32 is exact here for sides below 2**24."""
    h_bar = jnp.maximum(factor, jnp.round(heights / factor) * factor)
    w_bar = jnp.maximum(factor, jnp.round(widths / factor) * factor)
    area = jnp.maximum(heights * widths, 1.0)  # 0 raises there; the caller counts that case
    down = jnp.sqrt(area / max_pixels)
    up = jnp.sqrt(min_pixels / area)
    big, small = h_bar * w_bar > max_pixels, h_bar * w_bar < min_pixels
    h_bar = jnp.where(big, jnp.floor(heights / down / factor) * factor, h_bar)
    w_bar = jnp.where(big, jnp.floor(widths / down / factor) * factor, w_bar)
    h_bar = jnp.where(small & ~big, jnp.ceil(heights * up / factor) * factor, h_bar)
    w_bar = jnp.where(small & ~big, jnp.ceil(widths * up / factor) * factor, w_bar)
    return h_bar, w_bar


def _released_one(
    image: jax.Array, box: jax.Array, size: int, smart: tuple[int, int, int] | None
) -> jax.Array:
    height, width = image.shape[:2]
    box = clamp_boxes(box, height, width)
    # PIL's crop rounds each edge to an integer pixel (half to even); at least one pixel here.
    left, top, right, bottom = jnp.round(box)
    left, top = jnp.minimum(left, width - 1), jnp.minimum(top, height - 1)
    crop_w, crop_h = jnp.maximum(right - left, 1), jnp.maximum(bottom - top, 1)
    if smart is None:  # the full image goes to the CLIP processor as it is
        mid_h, mid_w = crop_h, crop_w
    else:  # smart_resize reads int(bottom - top), int(right - left) of the unrounded box
        sides = jnp.maximum(jnp.floor(box[2:] - box[:2]), 0)  # (w, h)
        mid_h, mid_w = _released_sizes(sides[1], sides[0], *smart)
    # CLIPImageProcessor: shortest side to ``size`` (the other int(size * long / short)), then
    # the centre ``size`` square with top/left (new - size) // 2.
    mid_h, mid_w = mid_h.astype(jnp.int32), mid_w.astype(jnp.int32)
    short = jnp.maximum(jnp.minimum(mid_h, mid_w), 1)
    new_h = jnp.where(mid_w <= mid_h, (size * mid_h) // short, size)
    new_w = jnp.where(mid_w <= mid_h, size, (size * mid_w) // short)
    offset = jnp.stack([(new_h - size) // 2, (new_w - size) // 2]).astype(jnp.float32)
    # One bicubic resample of the crop straight to the final grid: crop -> mid -> new composes
    # to a scale new / crop per axis.
    scale = jnp.stack([new_h / crop_h, new_w / crop_w]).astype(jnp.float32)
    translation = -jnp.stack([top, left]) * scale - offset
    out = jax.image.scale_and_translate(
        image,
        (size, size, image.shape[2]),
        spatial_dims=(0, 1),
        scale=scale,
        translation=translation,
        method="cubic",
        antialias=True,
    )
    return jnp.clip(jnp.round(out), 0, 255)  # PIL writes 8-bit pixels


def released_crop_view(
    images: jax.Array,
    boxes: jax.Array,
    size: int,
    smart_resize: tuple[int, int, int] | None = (28, 4 * 28 * 28, 16384 * 28 * 28),
) -> jax.Array:
    """The scorer's view of a crop as Region-R1's released code makes it (``src/utils.py``
    ``crop_image_with_bbox(resize=True)``, then the CLIP processor): PIL crop at rounded
    coordinates, ``smart_resize`` (factor, min_pixels, max_pixels; None skips it, as for the
    full image), shortest side to ``size`` bicubic, centre ``size`` square; float32 in
    [0, 255], ``[..., size, size, C]``.

    Fixed output shapes, so it stays one compiled program. Departures, all sub-pixel: one
    resample instead of PIL's two (``smart_resize`` then the processor) and its two passes,
    each rounded to 8 bits; a box whose released crop raises (a side of 0 < s < 1 pixel, see
    ``region_r1.rerank.released_crop_fails``) is cropped to one pixel here."""
    lead = images.shape[:-3]
    flat_images = images.reshape((-1, *images.shape[-3:])).astype(jnp.float32)
    flat_boxes = jnp.broadcast_to(boxes, (*lead, 4)).reshape(-1, 4).astype(jnp.float32)
    one = lambda image, box: _released_one(image, box, size, smart_resize)
    out = jax.vmap(one)(flat_images, flat_boxes)
    return out.reshape((*lead, size, size, images.shape[-1]))


def released_full_view(images: jax.Array, size: int) -> jax.Array:
    """The released code's view of a whole image: the CLIP processor alone (shortest side to
    ``size``, centre square), as ``released_crop_view`` of the full frame without
    ``smart_resize``."""
    height, width = images.shape[-3:-1]
    full = jnp.asarray([0, 0, width, height], jnp.float32)
    return released_crop_view(images, full, size, smart_resize=None)
