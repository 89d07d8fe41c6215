"""Contact sheets of query scenes with their boxes, for eyeballing the world and policy crops."""

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from jaxrank.data.synthetic import QueryConfig, World
from jaxrank.distributed import is_primary

TRUE_BOX_COLOUR = "#00d000"
PRED_BOX_COLOUR = "#ff00ff"


def _draw_box(ax, box: np.ndarray, colour: str, style: str) -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    # Pixel i spans [i - 0.5, i + 0.5] in imshow coordinates; x2, y2 are exclusive.
    ax.add_patch(
        Rectangle(
            (x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1,
            fill=False, edgecolor=colour, linewidth=1.5, linestyle=style,
        )
    )  # fmt: skip


def render_gallery(
    images: np.ndarray,
    boxes: np.ndarray,
    titles: Sequence[str],
    path: str | Path,
    pred_boxes: np.ndarray | None = None,
    ncols: int = 4,
) -> Path:
    """Writes a PNG grid: each image with its true box (green, solid), its predicted box
    (magenta, dashed) when given, and its title (e.g. the question) above it."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    figure = Figure(figsize=(2.6 * ncols, 3.2 * nrows), dpi=100)
    FigureCanvasAgg(figure)
    for k in range(n):
        ax = figure.add_subplot(nrows, ncols, k + 1)
        ax.imshow(images[k], interpolation="nearest")
        _draw_box(ax, boxes[k], TRUE_BOX_COLOUR, "-")
        if pred_boxes is not None:
            _draw_box(ax, pred_boxes[k], PRED_BOX_COLOUR, "--")
        lines = [line for part in titles[k].split("\n") for line in textwrap.wrap(part, 34)]
        ax.set_title("\n".join(lines), fontsize=7)
        ax.set_axis_off()
    figure.tight_layout()
    path = Path(path)
    if is_primary():  # other processes of a multi-process run drew the same figure
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    return path


def world_gallery(
    world: World, qcfg: QueryConfig, n: int, path: str | Path, split: str = "val"
) -> Path:
    """The first ``n`` queries of a split, titled with question and answer."""
    batch = world.queries(split, n, qcfg)
    titles = [
        f"{question}\n→ {world.entity_text(entity)}"
        for question, entity in zip(batch["questions"], batch["entity"], strict=True)
    ]
    return render_gallery(batch["images"], batch["boxes"], titles, path)
