"""Pixels of the synthetic world: entity sprites, backgrounds, clutter and sensor noise.

An entity is drawn at twice its size and averaged down, so edges and patterns are anti-aliased.
Its sprite is cached per (shape, pattern, size) as two coverage maps (body and pattern), which
makes painting an entity one multiply-add per channel: colours are applied at paint time.
"""

import functools

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "ring")
PATTERNS = ("horizontal stripes", "vertical stripes", "diagonal stripes", "checks", "dots")
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 135, 20),
    "yellow": (235, 205, 25),
    "green": (40, 165, 60),
    "cyan": (30, 190, 205),
    "blue": (40, 70, 215),
    "purple": (140, 55, 185),
    "black": (30, 30, 30),
}
COLOUR_NAMES = tuple(COLOURS)
PALETTE = np.array(list(COLOURS.values()), np.float32)
BACKGROUND = np.array((236, 234, 228), np.float32)

_SUPERSAMPLE = 2
_RING_HOLE = 0.5  # inner diameter as a fraction of the outer one
_PATTERN_CYCLES = 5  # periods across an entity: legible at ~20 px, gone below ~10 px


def _star_polygon(points: int = 5, inner: float = 0.45) -> tuple[tuple[float, float], ...]:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    xy = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    xy = (xy - xy.min(0)) / (xy.max(0) - xy.min(0))  # stretch to touch all four box sides
    return tuple((float(x), float(y)) for x, y in xy)


def _cross_polygon(arm: float = 0.36) -> tuple[tuple[float, float], ...]:
    a, b = (1 - arm) / 2, (1 + arm) / 2
    return (
        (a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b),
        (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a),
    )  # fmt: skip


# Every shape touches all four sides of its unit box, so the box is the shape's bounding box.
_POLYGONS = {
    "square": ((0, 0), (1, 0), (1, 1), (0, 1)),
    "triangle": ((0.5, 0), (1, 1), (0, 1)),
    "diamond": ((0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)),
    "star": _star_polygon(),
    "cross": _cross_polygon(),
    "hexagon": ((0.25, 0), (0.75, 0), (1, 0.5), (0.75, 1), (0.25, 1), (0, 0.5)),
}


def _shape_mask(shape: str, n: int) -> np.ndarray:
    image = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(image)
    last = n - 1
    if shape in ("circle", "ring"):
        draw.ellipse((0, 0, last, last), fill=255)
        if shape == "ring":
            inset = last * (1 - _RING_HOLE) / 2
            draw.ellipse((inset, inset, last - inset, last - inset), fill=0)
    else:
        draw.polygon([(x * last, y * last) for x, y in _POLYGONS[shape]], fill=255)
    return np.asarray(image, np.float32) / 255


def _pattern_mask(pattern: str, n: int) -> np.ndarray:
    t = (np.arange(n, dtype=np.float32) + 0.5) / n
    u, v = t[None, :], t[:, None]
    bands = 2 * _PATTERN_CYCLES
    if pattern == "horizontal stripes":
        mask = np.floor(v * bands) % 2 == 1
    elif pattern == "vertical stripes":
        mask = np.floor(u * bands) % 2 == 1
    elif pattern == "diagonal stripes":
        mask = np.floor((u + v) * bands * 0.75) % 2 == 1  # same stripe width as the others
    elif pattern == "checks":
        cells = 1.5 * _PATTERN_CYCLES
        mask = (np.floor(u * cells) + np.floor(v * cells)) % 2 == 1
    elif pattern == "dots":
        du, dv = (u * _PATTERN_CYCLES) % 1 - 0.5, (v * _PATTERN_CYCLES) % 1 - 0.5
        mask = du**2 + dv**2 < 0.3**2
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return np.broadcast_to(mask, (n, n)).astype(np.float32)


@functools.lru_cache(maxsize=4096)  # every (shape, pattern, size) up to 96 px: ~25 MB
def sprite(shape: str, pattern: str, size: int, marking: float = 1.0) -> np.ndarray:
    """uint8 [size, size, 2]: body and pattern coverage in 1/255ths; their sum is the alpha.
    The pattern covers a centred square of ``marking`` times the side (1: the whole body)."""
    n = size * _SUPERSAMPLE
    mask = _shape_mask(shape, n)
    pattern_mask = _pattern_mask(pattern, n)
    if marking < 1.0:
        t = (np.arange(n, dtype=np.float32) + 0.5) / n
        inside = np.abs(t - 0.5) <= marking / 2
        pattern_mask = pattern_mask * (inside[:, None] & inside[None, :])
    coverage = np.stack([mask * (1 - pattern_mask), mask * pattern_mask], axis=-1)
    coverage = coverage.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 2).mean(axis=(1, 3))
    packed = np.round(coverage * 255).astype(np.uint8)
    packed.flags.writeable = False
    return packed


def paint_entity(
    canvas: np.ndarray,
    x: int,
    y: int,
    size: int,
    shape: str,
    pattern: str,
    colour: np.ndarray,
    pattern_colour: np.ndarray,
    marking: float = 1.0,
) -> np.ndarray:
    """Alpha-blends an entity into ``canvas`` (float32 [H, W, 3], in place); returns its alpha."""
    coverage = sprite(shape, pattern, size, marking).astype(np.float32) / 255
    body, stripes = coverage[..., :1], coverage[..., 1:]
    alpha = body + stripes
    region = canvas[y : y + size, x : x + size]
    region *= 1 - alpha
    region += body * colour.astype(np.float32) + stripes * pattern_colour.astype(np.float32)
    return alpha[..., 0]


def background(rng: np.random.Generator, size: int, textured: bool) -> np.ndarray:
    """A light backdrop, float32 [size, size, 3]; textured ones carry a gentle colour gradient."""
    base = BACKGROUND + rng.uniform(-10, 10, 3).astype(np.float32)
    slopes = rng.uniform(-12, 12, (2, 3)).astype(np.float32) if textured else np.zeros((2, 3))
    ramp = np.linspace(-1, 1, size, dtype=np.float32)[:, None]
    across, down = base + ramp * slopes[0], ramp * slopes[1]
    return np.add(across[None, :, :], down[:, None, :], dtype=np.float32)


def draw_clutter(
    canvas: np.ndarray, rng: np.random.Generator, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lines, blobs and scribbles in muted colours, so they never pass for a palette entity.

    Returns the cluttered canvas (float32) and a bool mask of the clutter pixels.
    """
    size = canvas.shape[0]
    image = Image.fromarray(to_uint8(canvas))
    mask = Image.new("L", (size, size), 0)
    draws = (ImageDraw.Draw(image), ImageDraw.Draw(mask))
    kinds = rng.integers(3, size=count)
    colours = rng.uniform(90, 200, (count, 1)) + rng.uniform(-25, 25, (count, 3))
    starts = rng.uniform(0, size, (count, 2))
    shapes = rng.uniform(-10, 10, (count, 4, 2))  # line end, blob radii or scribble steps
    for kind, colour, start, params in zip(kinds, colours.astype(int), starts, shapes, strict=True):
        if kind == 0:
            points, width = [tuple(start), tuple(start + 4 * params[0])], 1 + int(params[1, 0] > 0)
        elif kind == 1:
            radii = 3 + np.abs(params[0]) / 6.7
            points, width = [tuple(start - radii), tuple(start + radii)], 0
        else:
            points, width = [tuple(p) for p in start + np.cumsum(params, axis=0)], 1
        for draw, fill in zip(draws, (tuple(colour), 255), strict=True):
            if width:
                draw.line(points, fill=fill, width=width)
            else:
                draw.ellipse(points, fill=fill)
    return np.asarray(image, np.float32), np.asarray(mask) > 0


def add_noise(canvas: np.ndarray, rng: np.random.Generator, amplitude: float) -> None:
    """Uniform sensor noise in [-amplitude, amplitude]: a third the cost of Gaussian noise."""
    noise = rng.random(canvas.shape, dtype=np.float32)
    noise -= 0.5
    noise *= 2 * amplitude
    canvas += noise


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
