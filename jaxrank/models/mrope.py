"""Qwen2-VL's multimodal rotary positions (M-RoPE), computed on the host from the token ids and
the image grids, which the host already holds after tokenising and pre-processing.

Text tokens advance all three streams (temporal, height, width) together; an image's tokens
share the temporal position of the image's start and count rows and columns of its merged grid
from there; the text after an image resumes at the start plus the larger grid side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Grid = tuple[int, int, int]


def image_positions(start: int, grid: Grid, merge: int) -> np.ndarray:
    """[3, t*h*w / merge^2] positions of one image's merged tokens, row-major."""
    t, h, w = grid[0], grid[1] // merge, grid[2] // merge
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([tt, hh, ww]).reshape(3, -1) + start


def mrope_positions(
    tokens: np.ndarray,
    mask: np.ndarray,
    grids: Sequence[Grid],
    *,
    image_token_id: int,
    merge: int,
) -> np.ndarray:
    """[3, B, T] int32 positions for left- or right-padded ``tokens`` [B, T]; ``grids`` are the
    batch's images in order (row by row). Padding gets 0, as the reference does. Consecutive
    image tokens are split per image by its token count, so adjacent images stay distinct."""
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    out = np.zeros((3, *tokens.shape), np.int32)
    pending = iter(grids)
    used = 0
    for row in range(tokens.shape[0]):
        ids = tokens[row][mask[row]]
        pieces, current, i = [], 0, 0
        while i < len(ids):
            if ids[i] == image_token_id:
                grid = next(pending, None)
                if grid is None:
                    raise ValueError(
                        f"row {row}: more image tokens than the {len(grids)} images' grids cover"
                    )
                used += 1
                piece = image_positions(current, grid, merge)
                count = piece.shape[1]
                if not np.all(ids[i : i + count] == image_token_id):
                    raise ValueError(
                        f"row {row}: image {used - 1} with grid {tuple(grid)} needs {count} "
                        f"consecutive image tokens from index {i}"
                    )
                current += max(grid[1], grid[2]) // merge
            else:
                count = int(np.argmax(np.append(ids[i:] == image_token_id, True)))
                piece = np.broadcast_to(np.arange(count) + current, (3, count))
                current += count
            pieces.append(piece)
            i += count
        out[:, row, mask[row]] = np.concatenate(pieces, axis=1) if pieces else 0
    if used != len(grids):
        raise ValueError(f"{len(grids)} images given but the tokens hold {used}")
    return out
