"""Reading one image file for a dataset row: a missing or undecodable file is a bad row
(``BadRows``: skipped and counted, or an error in strict mode), never a crash mid-epoch."""

from __future__ import annotations

from pathlib import Path

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
