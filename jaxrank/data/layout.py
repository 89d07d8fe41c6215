"""Where things go in a query scene: the 3x3 regions that questions name, and box placement.

Boxes are square, integer-aligned ``(x, y, size)`` with the top-left corner at ``(x, y)``. A
region is named by the centre of a box. Targets sit at least ``margin`` pixels inside their
region and distractors at least ``margin`` pixels outside it, so "the object in the top-left"
is unambiguous to a reader, not only to the bookkeeping.
"""

import math

import numpy as np

REGIONS = (
    "top-left", "top", "top-right",
    "left", "centre", "right",
    "bottom-left", "bottom", "bottom-right",
)  # fmt: skip


def _cell_interval(cell: int, scene: int, margin: float) -> tuple[float, float]:
    """Centre coordinates [lo, hi) of cell 0/1/2 on one axis, shrunk by ``margin`` at the inner
    borders (grown for margin < 0); the scene's own edges leave it unbounded."""
    third = scene / 3
    lo = cell * third + margin if cell > 0 else -math.inf
    hi = (cell + 1) * third - margin if cell < 2 else math.inf
    return lo, hi


def in_region(
    cx: float | np.ndarray, cy: float | np.ndarray, region: int, scene: int, margin: float = 0.0
) -> bool | np.ndarray:
    """Whether centres (floats or arrays) lie in a region shrunk by ``margin`` (grown if < 0)."""
    row, col = divmod(region, 3)
    (x_lo, x_hi), (y_lo, y_hi) = (_cell_interval(c, scene, margin) for c in (col, row))
    return (x_lo <= cx) & (cx < x_hi) & (y_lo <= cy) & (cy < y_hi)


def _corner_range(cell: int, size: int, scene: int, margin: float) -> tuple[int, int]:
    """Integer top-left coordinates [first, last] that keep the box in the scene and its centre
    in the shrunk cell; empty when first > last."""
    lo, hi = _cell_interval(cell, scene, margin)
    first = max(0, math.ceil(lo - size / 2)) if cell > 0 else 0
    last = min(scene - size, math.ceil(hi - size / 2) - 1) if cell < 2 else scene - size
    return first, last


def feasible_regions(size: int, scene: int, margin: float) -> list[int]:
    """The regions that can hold the centre of a box this large."""
    ranges = [_corner_range(cell, size, scene, margin) for cell in range(3)]
    ok = [lo <= hi for lo, hi in ranges]
    return [region for region in range(9) if ok[region // 3] and ok[region % 3]]


def place_in_region(
    rng: np.random.Generator, size: int, scene: int, region: int, margin: float
) -> tuple[int, int]:
    row, col = divmod(region, 3)
    (x_lo, x_hi), (y_lo, y_hi) = (_corner_range(c, size, scene, margin) for c in (col, row))
    return int(rng.integers(x_lo, x_hi + 1)), int(rng.integers(y_lo, y_hi + 1))


def place_apart(
    rng: np.random.Generator,
    size: int,
    scene: int,
    taken: list[tuple[int, int, int]],
    avoid_region: int | None,
    margin: float,
    attempts: int = 128,
    gap: int = 1,
) -> tuple[int, int] | None:
    """A random box at least ``gap`` pixels clear of ``taken``, its centre outside
    ``avoid_region`` grown by ``margin``; None when all ``attempts`` draws fail (a full scene)."""
    corners = rng.integers(0, scene - size + 1, (attempts, 2))
    x, y = corners[:, :1], corners[:, 1:]
    boxes = np.array(taken, np.int64).reshape(-1, 3)
    bx, by, bsize = boxes[:, 0], boxes[:, 1], boxes[:, 2]
    clear = (
        (x + size + gap <= bx)
        | (bx + bsize + gap <= x)
        | (y + size + gap <= by)
        | (by + bsize + gap <= y)
    ).all(axis=1)
    if avoid_region is not None:
        cx, cy = (corners + size / 2).T
        clear &= ~in_region(cx, cy, avoid_region, scene, -margin)
    hits = np.flatnonzero(clear)
    return (int(corners[hits[0], 0]), int(corners[hits[0], 1])) if len(hits) else None
