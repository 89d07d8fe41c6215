"""Reading one image file for a dataset row: a missing, undecodable or oversized file is a bad
row (``BadRows``: skipped and counted, or an error in strict mode), never a crash mid-epoch.

Decoding is refused above ``max_pixels`` (default ``MAX_PIXELS``, 64 megapixels: 8000 x 8000,
above any photo in the papers' datasets and ~200 MB once decoded to RGB), read from the header
before any pixel is decoded, so a decompression bomb costs nothing. It replaces PIL's own guard
(a warning from 89 MP, an error from 179 MP), whose warning is silenced here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from jaxrank.data.errors import BadRows
from jaxrank.data.paths import image_problem

MAX_PIXELS = 64_000_000


def read_image(
    path: str | Path,
    where: str,
    bad: BadRows,
    *,
    root: str | Path | None = None,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray | None:
    """``path`` as uint8 RGB ``[H, W, 3]``, or None (recorded in ``bad`` under ``where``).
    With ``root``, a file that lies outside it once symlinks are followed is refused too."""
    path = Path(path)
    if problem := image_problem(root, path):
        bad.skip(where, *problem)
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(path)
    except PIL.Image.DecompressionBombError as e:
        bad.skip(where, "oversized_image", f"{path}: {e}")
        return None
    except (OSError, ValueError) as e:
        bad.skip(where, "undecodable_image", f"{path}: {e}")
        return None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            detail = f"{path}: {width} x {height} pixels, more than max_pixels={max_pixels}"
            bad.skip(where, "oversized_image", detail)
            return None
        try:
            return np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as e:
            bad.skip(where, "undecodable_image", f"{path}: {e}")
            return None


def centre_square(image: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bicubic), then the centre ``size x size``: CLIP's evaluation
    transform, so objects keep their aspect ratio. Exact (no resampling) when the shorter side
    already is ``size``."""
    h, w = image.shape[:2]
    if min(h, w) != size:
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        image = np.asarray(PIL.Image.fromarray(image).resize((nw, nh), PIL.Image.BICUBIC))
        h, w = nh, nw
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def image_loader(
    path_of: Callable[[Any], str | Path], size: int, fields: Callable[[Any], dict[str, Any]]
) -> Callable[[Any], dict[str, Any]]:
    """A pipeline transform: an example -> ``{"image": uint8 [size, size, 3], **fields(ex)}``.
    Readers drop examples whose file is missing when they read the rows, so a file that fails
    here was removed or corrupted since: an error naming it, not a silent gap in the batch."""

    def load(example: Any) -> dict[str, Any]:
        image = read_image(path_of(example), "pipeline", BadRows(strict=True))
        return {"image": centre_square(image, size), **fields(example)}

    return load
