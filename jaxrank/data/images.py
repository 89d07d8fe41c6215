"""Reading one image file for a dataset row: a missing or undecodable file is a bad row
(``BadRows``: skipped and counted, or an error in strict mode), never a crash mid-epoch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from jaxrank.data.errors import BadRows


def read_image(path: str | Path, where: str, bad: BadRows) -> np.ndarray | None:
    """``path`` as uint8 RGB ``[H, W, 3]``, or None (recorded in ``bad`` under ``where``)."""
    path = Path(path)
    if not path.is_file():
        bad.skip(where, "missing_image", f"no file {path}")
        return None
    try:
        with PIL.Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
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
