"""The model card (``README.md``) an exported folder carries: what the model is, the run, recipe
and config it came from, the run's evaluation tables, and the jaxrank version that wrote it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"


def jaxrank_version() -> str:
    try:
        return metadata.version("jaxrank")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def report_tables(report: Path) -> str:
    """The markdown tables of a run's ``report.md``, each under the heading above it."""
    if not report.exists():
        return "The run folder holds no report.md (it was not evaluated)."
    blocks, heading, table = [], None, []
    for line in [*report.read_text().splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            blocks.append("\n".join([*(["#" + heading] if heading else []), *table]))
            table = []
        if line.startswith("#"):
            heading = line
    return "\n\n".join(blocks) or "report.md holds no table."


def write_model_card(
    folder: Path,
    *,
    title: str,
    description: str,
    workdir: Path,
    config: dict[str, Any],
    command: str,
    usage: str,
) -> Path:
    """Write ``folder/README.md``; ``config`` is the run's resolved config (``config.json``)."""
    text = "\n".join(
        [
            f"# {title}",
            "",
            description,
            "",
            f"Exported by jaxrank {jaxrank_version()} from the run folder `{workdir}` (recipe "
            f"`{config.get('recipe')}`) with",
            "",
            f"    {command}",
            "",
            "## Evaluation (from the run's report.md)",
            "",
            report_tables(workdir / "report.md"),
            "",
            "## Usage",
            "",
            "```python",
            usage.strip(),
            "```",
            "",
            "## Training config (the run's config.json)",
            "",
            "```json",
            json.dumps(config, indent=2),
            "```",
            "",
        ]
    )
    path = folder / CARD_FILE
    path.write_text(text)
    return path


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A trained model ready to write: ``write(folder, format, max_shard_bytes)``, the formats
    it can be written in (the first is the default), and its card's title, description and
    loading snippet (``usage(format)``)."""

    title: str
    description: str
    write: Callable[[Path, str, int | None], None]
    usage: Callable[[str], str]
    formats: tuple[str, ...] = ("merged",)
