"""The run folder: created once, and re-entered only by the same resolved config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_collections

from jaxrank import configs
from jaxrank.distributed import is_primary


class WorkdirError(ValueError):
    """A workdir that cannot hold this run."""


def prepare_workdir(workdir: str | Path, cfg: ml_collections.ConfigDict) -> Path:
    """Create ``workdir`` (its parent must exist) and write ``config.json``; when the folder
    already holds a run, require the same config so a resume continues the same experiment."""
    workdir = Path(workdir)
    parent = workdir.absolute().parent
    if not parent.is_dir():
        raise WorkdirError(
            f"the parent folder of workdir {workdir} does not exist ({parent}); "
            "create it first or choose another --workdir"
        )
    workdir.mkdir(exist_ok=True)
    saved_path = workdir / "config.json"
    resolved = configs.to_json(cfg)
    if saved_path.exists():
        try:
            saved = json.loads(saved_path.read_text())
        except json.JSONDecodeError as e:
            raise WorkdirError(f"{saved_path} is not valid JSON ({e}); use a new workdir") from e
        changed = configs.diff(saved, json.loads(resolved))
        if changed:
            raise WorkdirError(
                f"{workdir} holds a run with a different config; resuming would mix two "
                "experiments. Use a new --workdir, or restore these values:\n  "
                + "\n  ".join(changed)
            )
    elif is_primary():  # the other processes of a multi-process run share the folder
        tmp = saved_path.with_suffix(".tmp")
        tmp.write_text(resolved)
        os.replace(tmp, saved_path)
    return workdir
