"""RAR's detection mode (PAPERS.md §3) end to end on given boxes: each box is cropped with a
size-adapted margin and blurred outside (``detection_crops``), its crop retrieves the top-k
class names from a class-name memory (image -> text), and the ranker orders them. Each box's
prediction is the ranked list's first class; the retrieval's first class is kept beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxrank.rar.class_memory import ClassMemory
from jaxrank.rar.detection_crops import detection_crops, detection_top_classes
from jaxrank.rar.recipe import RankerPrograms


def rank_boxes(
    programs: RankerPrograms,
    images: np.ndarray,
    boxes: np.ndarray,
    memory: ClassMemory,
    encode_image: Callable[[Any], Any],
    names: Sequence[str],
    *,
    k: int,
    size: int,
    sigma: float,
) -> dict[str, Any]:
    """Images ``[B, H, W, 3]`` and boxes ``[B, N, 4]`` (pixels) -> per box: ``crops``
    ``[B, N, size, size, 3]`` uint8, the retrieved ``classes`` ``[B, N, k]``, and the class
    predicted by ``retrieval`` (first retrieved), ``rar_generate`` (the generated ranking's
    first) and ``rar_score`` (the score path's best), each ``[B, N]``, with the parsed
    ``rankings``."""
    crops = np.asarray(detection_crops(images, boxes, size, sigma))
    crops = np.clip(np.round(crops), 0, 255).astype(np.uint8)
    classes, _ = detection_top_classes(encode_image, memory, crops, k)
    lead = classes.shape[:-1]
    flat = classes.reshape(-1, k)
    rankings, best = programs(crops.reshape(-1, size, size, 3), flat, tuple(names))
    every = np.arange(len(flat))
    generated = flat[every, [r.prediction for r in rankings]]
    return {
        "crops": crops,
        "classes": classes,
        "retrieval": classes[..., 0],
        "rar_generate": generated.reshape(lead),
        "rar_score": flat[every, best].reshape(lead),
        "rankings": rankings,
    }
