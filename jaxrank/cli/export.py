"""``jaxrank export``: a run folder's trained model as a folder that transformers, PEFT or
jaxrank loads without the run, with a model card (README.md).

    jaxrank export --workdir runs/mllm --out exported/policy --format adapter
    jaxrank export --workdir runs/region_r1 --out exported/scorer --what scorer

What each recipe exports (the first is the default ``--what``) is ``EXPORTS``. Every process
of a multi-host run restores and gathers the parameters; process 0 writes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import shutil
from pathlib import Path

import jax
import ml_collections

from jaxrank import parallel
from jaxrank.configs import ConfigError
from jaxrank.distributed import is_primary
from jaxrank.models.hf.export_card import Artifact, write_model_card
from jaxrank.train.workdir import WorkdirError, reading_lock

EXPORTS = {
    "contrastive": {"encoder": "jaxrank.contrastive.export:export_encoder"},
    "region_r1": {
        "policy": "jaxrank.region_r1.export:export_structured_policy",
        "scorer": "jaxrank.region_r1.export:export_scorer",
    },
    "region_r1_mllm": {
        "policy": "jaxrank.region_r1.export:export_mllm_policy",
        "scorer": "jaxrank.region_r1.export:export_scorer",
    },
    "elva": {"encoder": "jaxrank.elva.export:export_encoder"},
    "elva_generative": {"embedder": "jaxrank.elva.export:export_embedder"},
    "rar": {"ranker": "jaxrank.rar.export:export_ranker"},
}
WHATS = sorted({what for kinds in EXPORTS.values() for what in kinds})
DEFAULT_SHARD_MB = 5000  # transformers' customary 5 GB weight files


def run_config(workdir: Path) -> ml_collections.ConfigDict:
    """The run's resolved config, as ``jaxrank train`` saved it."""
    if not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir}: no such run folder")
    path = workdir / "config.json"
    if not path.exists():
        raise WorkdirError(f"{path} is missing: {workdir} is not a jaxrank run folder")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise WorkdirError(f"{path} is not valid JSON ({e})") from e


def _exporter(cfg: ml_collections.ConfigDict, workdir: Path, what: str | None):
    recipe = cfg.get("recipe", None)
    if recipe not in EXPORTS:
        raise ConfigError(f"{workdir / 'config.json'}: recipe {recipe!r} has nothing to export")
    kinds = EXPORTS[recipe]
    what = what or next(iter(kinds))
    if what not in kinds:
        raise ConfigError(
            f"--what {what}: a {recipe} run holds no {what}; it holds {', '.join(kinds)}"
        )
    module, function = kinds[what].split(":")
    return what, getattr(importlib.import_module(module), function)


def _mesh(cfg: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The run's mesh; on a machine with another device count (a TPU run exported on a
    workstation), every device on the data axis: the export gathers the parameters anyway."""
    try:
        return parallel.mesh_from_config(cfg.mesh)
    except ConfigError:
        return parallel.make_mesh()


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise WorkdirError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise WorkdirError(f"--out {out} is not empty; pass --overwrite to replace its contents")


def export_run(
    workdir: str | Path,
    out: str | Path,
    *,
    what: str | None = None,
    fmt: str | None = None,
    overwrite: bool = False,
    max_shard_bytes: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    command: str | None = None,
) -> Path:
    """Export ``what`` of the run in ``workdir`` to ``out`` (``mesh`` default: the run's
    config's). Every check (run, checkpoint, --what, --format, --out, the run's lock) passes
    before anything is written."""
    workdir, out = Path(workdir), Path(out)
    cfg = run_config(workdir)
    what, exporter = _exporter(cfg, workdir, what)
    _check_out(out, overwrite)
    # The run's lock, held until the export is written: a run training in the folder (its
    # checkpoints half-written, its report not yet there) is refused, naming its process. A
    # folder this user cannot write is only read (reading_lock).
    with reading_lock(workdir):
        artifact: Artifact = exporter(cfg, workdir, mesh or _mesh(cfg))
        fmt = fmt or artifact.formats[0]
        if fmt not in artifact.formats:
            raise ConfigError(
                f"--format {fmt}: the {what} of a {cfg.recipe} run is written as "
                f"{' or '.join(artifact.formats)}"
            )
        if not is_primary():
            return out
        if out.is_dir():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        artifact.write(out, fmt, max_shard_bytes)
        command = command or (
            f"jaxrank export --workdir {shlex.quote(str(workdir))} --out "
            f"{shlex.quote(str(out))} --what {what}"
            + (f" --format {fmt}" if len(artifact.formats) > 1 else "")
        )
        write_model_card(
            out,
            title=artifact.title,
            description=artifact.description,
            workdir=workdir,
            config=cfg.to_dict(),
            command=command,
            usage=artifact.usage(fmt),
        )
    return out


def _export(args: argparse.Namespace, extra: list[str]) -> None:
    if extra:
        raise ConfigError(f"unrecognised arguments {extra}")
    out = export_run(
        args.workdir,
        args.out,
        what=args.what,
        fmt=args.format,
        overwrite=args.overwrite,
        max_shard_bytes=int(args.shard_mb * 2**20),
    )
    if is_primary():
        print(f"wrote {out}")


def add_command(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export", help="write a run's trained model for transformers / PEFT / jaxrank"
    )
    export.add_argument("--workdir", required=True, help="the run folder")
    export.add_argument("--out", required=True, help="the folder to write (empty or new)")
    export.add_argument("--what", choices=WHATS, help="which model (default: the recipe's main)")
    export.add_argument(
        "--format",
        choices=("merged", "adapter"),
        help="LoRA-trained VLMs: adapters merged into a full checkpoint (default) or a PEFT folder",
    )
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    export.add_argument(
        "--shard-mb", type=float, default=DEFAULT_SHARD_MB, help="max MiB per weights file"
    )
    export.set_defaults(run=_export)
