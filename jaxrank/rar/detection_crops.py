"""RAR's detection mode (PAPERS.md §3): boxes as proposals, each cropped with a margin adapted
to its size and blurred outside the box, then retrieved image -> text against a class-name
memory; the top-k classes of each box (with its crop) are what the MLLM ranker then orders
(``ranking_text.ranking_prompt`` / ``class_scoring``).

**Margin rule.** RAR's published code (github.com/Liuziyu77/RAR: ``CLIP-Cls``, ``Few_shot``,
``Fine-Grained_Visual_Recognition``, ``finetune``) does not include the detection part, and
the paper gives no formula, so jaxrank uses this documented rule. With the box's scale
``s = sqrt(w * h)`` (pixels), each side is pushed out by

    margin = clip(context, min_ratio * s, max_ratio * s)

i.e. about ``context`` pixels of surroundings, but never less than ``min_ratio`` nor more than
``max_ratio`` of the object's own scale. The relative margin ``margin / s`` therefore falls as
the object grows (``context / s`` between the two bounds): a small object, which CLIP cannot
recognise from its own few pixels, gets up to ``max_ratio`` of itself as context on each side
(the defaults: 3x the box for ``s <= 32``, the COCO/LVIS "small" size); a large one keeps
``min_ratio`` (1.2x for ``s >= 320``) so the crop stays about the object. The expanded box is
then clipped to the image (not shifted), so a box at a border gets no margin past it.

**Blur.** The whole image is blurred once (separable Gaussian, ``scipy.ndimage`` conventions:
half-sample-symmetric "reflect" borders, radius ``int(truncate * sigma + 0.5)``); each box
keeps its own pixels sharp (pixel centres inside the box) and takes the blurred ones outside,
so the margin gives context without drawing the encoder to a neighbouring object. ``sigma`` is
in pixels of the input image.

**Crop.** The expanded box of the composited image is resized to ``size``² by
``imaging.crop_and_resize`` (antialiased bilinear; the box is stretched, not letterboxed, as
for Region-R1's crops). Everything up to the crops is jitted with fixed shapes (``size``,
``sigma`` and ``truncate`` static; eager dispatch of the vmapped resize is several times
slower) and vmapped over boxes; retrieval runs the encoder on the
crops and searches the host-side ``ClassMemory``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrank import imaging
from jaxrank.rar.class_memory import ClassMemory

CONTEXT = 32.0
MIN_RATIO = 0.1
MAX_RATIO = 1.0


@jax.jit
def box_margin(
    boxes: jax.Array,
    context: float = CONTEXT,
    min_ratio: float = MIN_RATIO,
    max_ratio: float = MAX_RATIO,
) -> jax.Array:
    """Each box's margin in pixels ``[...]`` (the module's rule): ``context`` pixels, kept
    within ``[min_ratio, max_ratio]`` of the box's scale ``sqrt(w * h)``; 0 for an empty box."""
    boxes = jnp.asarray(boxes, jnp.float32)
    scale = jnp.sqrt(imaging.box_area(boxes))
    return jnp.minimum(jnp.maximum(context, min_ratio * scale), max_ratio * scale)


@functools.partial(jax.jit, static_argnames=("height", "width"))
def expand_boxes(
    boxes: jax.Array,
    height: int,
    width: int,
    context: float = CONTEXT,
    min_ratio: float = MIN_RATIO,
    max_ratio: float = MAX_RATIO,
) -> jax.Array:
    """``(x0, y0, x1, y1)`` boxes ``[..., 4]`` pushed out by ``box_margin`` on every side and
    clipped to the ``height`` x ``width`` image: the region each crop shows."""
    boxes = jnp.asarray(boxes, jnp.float32)
    margin = box_margin(boxes, context, min_ratio, max_ratio)[..., None]
    grown = boxes + jnp.concatenate([-margin, -margin, margin, margin], axis=-1)
    return imaging.clamp_boxes(grown, height, width)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D Gaussian taps ``scipy.ndimage.gaussian_filter`` uses (radius
    ``int(truncate * sigma + 0.5)``); static, so the blur's shape is known at trace time."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return (taps / taps.sum()).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("sigma", "truncate"))
def gaussian_blur(images: jax.Array, sigma: float, truncate: float = 4.0) -> jax.Array:
    """Images ``[..., H, W, C]`` blurred over H and W (float32), one depthwise 1-D convolution
    per axis on symmetrically padded borders; ``sigma <= 0`` returns the pixels unchanged."""
    images = jnp.asarray(images).astype(jnp.float32)
    if sigma <= 0:
        return images
    taps = jnp.asarray(gaussian_kernel(sigma, truncate))
    radius, channels = (len(taps) - 1) // 2, images.shape[-1]
    x = images.reshape((-1, *images.shape[-3:]))
    x = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    for kernel_shape in ((len(taps), 1), (1, len(taps))):
        kernel = jnp.broadcast_to(taps.reshape(*kernel_shape, 1, 1), (*kernel_shape, 1, channels))
        x = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1, 1),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
            precision=jax.lax.Precision.HIGHEST,
        )
    return x.reshape(images.shape)


def box_mask(box: jax.Array, height: int, width: int) -> jax.Array:
    """``[H, W]`` bool: pixels whose centre lies in ``box`` (``x0 <= j + 0.5 < x1``, same for
    rows), so an integer box keeps exactly its pixels ``[y0:y1, x0:x1]``."""
    box = jnp.asarray(box, jnp.float32)
    rows = jnp.arange(height, dtype=jnp.float32) + 0.5
    cols = jnp.arange(width, dtype=jnp.float32) + 0.5
    inside_rows = (rows >= box[1]) & (rows < box[3])
    inside_cols = (cols >= box[0]) & (cols < box[2])
    return inside_rows[:, None] & inside_cols[None, :]


def _composite(image: jax.Array, blurred: jax.Array, box: jax.Array) -> jax.Array:
    inside = box_mask(box, *image.shape[:2])[..., None]
    return jnp.where(inside, image, blurred)


@functools.partial(jax.jit, static_argnames=("sigma", "truncate"))
def blur_outside(
    image: jax.Array, box: jax.Array, sigma: float, truncate: float = 4.0
) -> jax.Array:
    """One image ``[H, W, C]``: sharp inside ``box``, Gaussian-blurred outside it (float32)."""
    image = jnp.asarray(image).astype(jnp.float32)
    return _composite(image, gaussian_blur(image, sigma, truncate), box)


@functools.partial(jax.jit, static_argnames=("size", "sigma", "truncate", "box_chunk"))
def detection_crops(
    images: jax.Array,
    boxes: jax.Array,
    size: int,
    sigma: float,
    *,
    truncate: float = 4.0,
    context: float = CONTEXT,
    min_ratio: float = MIN_RATIO,
    max_ratio: float = MAX_RATIO,
    box_chunk: int | None = None,
) -> jax.Array:
    """RAR's crops: images ``[B, H, W, C]`` and their boxes ``[B, N, 4]`` (``x0, y0, x1, y1``
    pixels) -> ``[B, N, size, size, C]`` float32 in the input's pixel range (normalise before
    encoding). Each image is blurred once; each box then composites (sharp inside, blurred
    outside) and crops its margin-expanded box. Boxes are vmapped; with ``box_chunk`` they go
    ``box_chunk`` at a time (``lax.map``), bounding the ``[chunk, H, W, C]`` composites held at
    once. Jitted (``size``, ``sigma``, ``truncate`` and ``box_chunk`` static)."""
    images = jnp.asarray(images).astype(jnp.float32)
    boxes = jnp.asarray(boxes, jnp.float32)
    height, width = images.shape[1:3]
    regions = expand_boxes(boxes, height, width, context, min_ratio, max_ratio)
    blurred = gaussian_blur(images, sigma, truncate)

    def one_image(image, soft, image_boxes, image_regions):
        def one_box(box_and_region):
            box, region = box_and_region
            return imaging.crop_and_resize(_composite(image, soft, box), region, size)

        if box_chunk is None:
            return jax.vmap(one_box)((image_boxes, image_regions))
        return jax.lax.map(one_box, (image_boxes, image_regions), batch_size=box_chunk)

    return jax.vmap(one_image)(images, blurred, boxes, regions)


def detection_top_classes(
    encode_image: Callable[[Any], Any],
    memory: ClassMemory,
    crops: Any,
    k: int,
    *,
    valid: Any = None,
    depth: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Image -> text retrieval of each crop ``[..., S, S, C]`` against the class-name memory:
    class ids ``[..., k]`` (int64, best first) and cosine scores ``[..., k]``, the candidates
    the ranker orders. ``encode_image([M, S, S, C]) -> [M, D]`` gets every crop in one call
    (wrap it to normalise or chunk). Where ``valid [...]`` is False (padded boxes) the slots
    hold -1 and -inf, as ``ClassMemory.top_classes`` fills classes it cannot name."""
    crops = jnp.asarray(crops)
    lead = crops.shape[:-3]
    embeddings = np.asarray(jax.device_get(encode_image(crops.reshape((-1, *crops.shape[-3:])))))
    classes, scores = memory.top_classes(embeddings, k, depth)
    classes, scores = classes.reshape((*lead, k)), scores.reshape((*lead, k))
    if valid is not None:
        keep = np.broadcast_to(np.asarray(valid, bool), lead)[..., None]
        classes = np.where(keep, classes, -1)
        scores = np.where(keep, scores, -np.inf).astype(np.float32)
    return classes, scores


def candidate_names(classes: np.ndarray, names: Sequence[str]) -> list:
    """Nested lists (the shape of ``classes [..., k]`` less its last axis) of each box's
    candidate class names, best first, empty slots (-1) dropped: the ranker's input."""
    classes = np.asarray(classes)
    if classes.ndim == 1:
        return [names[int(c)] for c in classes if c >= 0]
    return [candidate_names(row, names) for row in classes]
