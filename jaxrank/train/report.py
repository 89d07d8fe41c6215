"""End-of-run results: ``report.json`` for machines, ``report.md`` with tables and PNG plots.

In a multi-process run every process builds the same report and only process 0 writes the
files (the paths are returned alike, so every process's markdown names the same plots).

A re-evaluation (``jaxrank eval``) writes ``eval_report.json`` / ``eval_report.md`` instead
(``evaluation_report()``), so the training run's report, with its training time and devices,
stays as the run left it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from tabulate import tabulate

from jaxrank.distributed import is_primary
from jaxrank.train.runlog import read_jsonl

_REPORT_NAME = contextvars.ContextVar("report_name", default="report")


@contextlib.contextmanager
def evaluation_report() -> Iterator[None]:
    """Inside, ``write_report`` writes ``eval_report.*``: a re-evaluation of a finished run
    leaves the training report alone."""
    token = _REPORT_NAME.set("eval_report")
    try:
        yield
    finally:
        _REPORT_NAME.reset(token)


def atomic_write(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file and a rename: no reader, and no run
    killed mid-write, ever sees half a file."""
    if not is_primary():
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    if is_primary():
        fig.savefig(out, dpi=100)
    return out


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str = "github") -> str:
    """Rows of dicts as a table; floats with 3 decimals (``fmt``: any tabulate format)."""
    body = [[row.get(c, "") for c in columns] for row in rows]
    return tabulate(body, headers=list(columns), tablefmt=fmt, floatfmt=".3f")


def plot_curves(
    metrics_path: str | Path, keys: Sequence[str], out: str | Path, title: str
) -> Path | None:
    """One panel per metric key of ``metrics.jsonl`` against step; None when nothing to plot."""
    rows = read_jsonl(metrics_path)
    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        return None
    fig = Figure(figsize=(4 * len(present), 3))
    axes = fig.subplots(1, len(present), squeeze=False)
    for ax, key in zip(axes[0], present, strict=True):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points, strict=True), marker=".", linewidth=1)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out)


def plot_bars(
    groups: Mapping[str, Mapping[str, float]], out: str | Path, title: str, ylabel: str
) -> Path:
    """Grouped bars: ``groups[group][series] = value``."""
    names = list(groups)
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    width = 0.8 / max(len(series), 1)
    fig = Figure(figsize=(1.6 * len(names) + 2, 3.2))
    ax = fig.subplots()
    for i, s in enumerate(series):
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, [groups[n].get(s, 0.0) for n in names], width, label=s)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(names))], names)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def plot_lines(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    out: str | Path,
    title: str,
    xlabel: str,
    ylabel: str = "accuracy",
) -> Path:
    """One line per series over the shared ``x`` (log-2 axis: shot counts double)."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for name, values in series.items():
        ax.plot(x, values, marker="o", linewidth=1.2, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(x), [str(v) for v in x])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def write_report(workdir: str | Path, results: Mapping[str, Any], markdown: str) -> None:
    """``report.json`` and ``report.md`` (``eval_report.*`` inside ``evaluation_report()``)."""
    workdir, name = Path(workdir), _REPORT_NAME.get()
    atomic_write(workdir / f"{name}.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    atomic_write(workdir / f"{name}.md", markdown)
