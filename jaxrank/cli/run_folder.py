"""What ``train`` and ``eval`` check before a recipe runs, and the lock they hold while it does.

Everything that can be refused is refused here, before the first byte lands in the run folder:
the config's values and data paths, the mesh against this machine's devices, the batches the
recipe splits over the mesh's data axis, the folder itself (``train.workdir``) and its stages'
metrics logs. Only then is the folder locked (and created) and the recipe started.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import ml_collections

from jaxrank import config_rules, parallel
from jaxrank.cli.recipes import recipe_of
from jaxrank.train.runlog import read_jsonl
from jaxrank.train.workdir import check_workdir, workdir_lock


def check_run(
    cfg: ml_collections.ConfigDict, workdir: str | Path, *, existing: bool = False
) -> Path:
    """Refuse (ConfigError / WorkdirError) a run that could not work, writing nothing; the
    config's mesh comes back resolved (``mesh.data=-1`` becomes the device count)."""
    recipe = recipe_of(cfg)
    config_rules.validate(cfg)
    if "mesh" in cfg:
        parallel.check_divisible_batches(cfg, recipe.sharded_batches, cfg.mesh.data)
    workdir = check_workdir(workdir, cfg, existing=existing)
    for log in (*workdir.glob("metrics.jsonl"), *workdir.glob("*/metrics.jsonl")):
        read_jsonl(log)  # a resume cuts them at its checkpoint: a damaged line is named now
    return workdir


@contextlib.contextmanager
def held_run(
    cfg: ml_collections.ConfigDict, workdir: str | Path, *, existing: bool = False
) -> Iterator[Path]:
    """``check_run``, then the run folder locked for as long as the block runs."""
    workdir = check_run(cfg, workdir, existing=existing)
    with workdir_lock(workdir):
        yield workdir
