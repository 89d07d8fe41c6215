"""The run folder: checked before anything is written, created once, re-entered only by the
same resolved config, and used by one run at a time.

``prepare_workdir`` validates the config (``config_rules.validate``: values, the mesh against
this machine's devices, data paths) and the folder itself before it writes ``config.json``, so
a refused command leaves nothing behind that would block its corrected twin. ``workdir_lock``
holds an OS file lock (``flock`` through ``filelock``) for the whole run: a second run on the
folder is refused with the holder's process, host and start time, and the OS drops the lock
when its holder dies, so a killed run never blocks its resume. ``reading_lock`` is what a
command that only reads a finished run (``jaxrank export``) holds, also where it cannot write.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import filelock
import ml_collections

from jaxrank import config_rules, configs
from jaxrank.distributed import is_primary

CONFIG_FILE = "config.json"
LOCK_FILE = ".jaxrank.lock"
HOLDER_FILE = ".jaxrank.lock.json"


class WorkdirError(ValueError):
    """A workdir that cannot hold this run."""


def _read_saved_config(path: Path) -> dict:
    if not path.is_file():
        raise WorkdirError(f"{path} is not a file; expected the run's config as JSON")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkdirError(f"{path} is not valid JSON ({e}); use a new workdir") from e
    if not isinstance(saved, dict):
        raise WorkdirError(f"{path} holds {type(saved).__name__}; expected a JSON object")
    return saved


def _mismatch(workdir: Path, saved: dict, current: dict) -> str:
    changed = configs.diff(saved, current)
    mesh = [c for c in changed if c.startswith("mesh.")]
    if mesh:
        was = saved.get("mesh", {})
        return (
            f"{workdir} was trained on a data={was.get('data')} x model={was.get('model')} mesh "
            f"and this machine resolves the config to another ({', '.join(mesh)}). Resuming on "
            "another mesh is refused: its sums run in another order, so the run would not "
            "continue bit-exactly. Resume on the same device count, or use a new --workdir"
        )
    return (
        f"{workdir} holds a run with a different config; resuming would mix two experiments. "
        "Use a new --workdir, or restore these values:\n  " + "\n  ".join(changed)
    )


def _accept_unresolved_mesh(saved: dict, current: dict) -> None:
    """A folder written before meshes were recorded resolved holds ``mesh.data=-1``: its device
    count is unknown, so it is re-entered as before (its ``config.json`` is left as it is)."""
    mesh, now = saved.get("mesh"), current.get("mesh")
    if isinstance(mesh, dict) and isinstance(now, dict) and mesh.get("data") == -1:
        mesh["data"] = now.get("data")


def _accept_unstacked(saved: dict, current: dict) -> None:
    """A folder written before its config's sections named ``scan_layers`` / ``remat`` (read
    as False when absent: ``models.layer_stack.stacking_of``) ran its layers unrolled, as the
    keys set False say now: they are taken as False there."""
    for name, section in current.items():
        if isinstance(section, dict) and isinstance(saved.get(name), dict):
            for key in ("scan_layers", "remat"):
                if section.get(key) is False:
                    saved[name].setdefault(key, False)


def check_workdir(
    workdir: str | Path, cfg: ml_collections.ConfigDict, *, existing: bool = False
) -> Path:
    """Refuse a folder that cannot hold this run, writing nothing: a missing parent, a path
    that is a file, a folder this user cannot write, a ``config.json`` that is not the run's
    JSON or differs from ``cfg``. ``existing`` (evaluation) also requires a trained run there."""
    workdir = Path(workdir)
    parent = workdir.absolute().parent
    if not parent.is_dir():
        raise WorkdirError(
            f"the parent folder of workdir {workdir} does not exist ({parent}); "
            "create it first or choose another --workdir"
        )
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} is a file; expected a folder (or a new path)")
    if existing and not (workdir / CONFIG_FILE).exists():
        what = "does not exist" if not workdir.exists() else f"holds no run (no {CONFIG_FILE})"
        raise WorkdirError(f"workdir {workdir} {what}; train it first with jaxrank train")
    target = workdir if workdir.exists() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise WorkdirError(f"{target} is not writable by this user; choose another --workdir")
    saved_path = workdir / CONFIG_FILE
    if saved_path.exists() or saved_path.is_symlink():
        saved = _read_saved_config(saved_path)
        current = json.loads(configs.to_json(cfg))
        _accept_unresolved_mesh(saved, current)
        _accept_unstacked(saved, current)
        if configs.diff(saved, current):
            raise WorkdirError(_mismatch(workdir, saved, current))
    return workdir


def prepare_workdir(workdir: str | Path, cfg: ml_collections.ConfigDict) -> Path:
    """Validate ``cfg`` and the folder, then create ``workdir`` (its parent must exist) and write
    ``config.json`` (with the resolved mesh); when the folder already holds a run, require the
    same config so a resume continues the same experiment."""
    config_rules.validate(cfg)
    workdir = check_workdir(workdir, cfg)
    workdir.mkdir(exist_ok=True)
    saved_path = workdir / CONFIG_FILE
    if not saved_path.exists() and is_primary():  # other processes of a run share the folder
        tmp = saved_path.with_suffix(".tmp")
        tmp.write_text(configs.to_json(cfg))
        os.replace(tmp, saved_path)
    return workdir


def _holder(workdir: Path) -> str:
    try:
        info = json.loads((workdir / HOLDER_FILE).read_text())
        return f"process {info['pid']} on host {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its holder file is unreadable)"


def _in_use(workdir: Path) -> str:
    return (
        f"workdir {workdir} is in use by {_holder(workdir)}; wait for that run to end (a killed "
        "run's lock is released by the OS)"
    )


@contextlib.contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[Path]:
    """Hold ``workdir`` (created if new) for one run; a second run is refused at once, naming
    the holder. Only process 0 of a multi-process run locks: its other processes share the
    folder by design and write nothing that process 0 writes."""
    workdir = Path(workdir)
    if not is_primary():
        yield workdir
        return
    workdir.mkdir(exist_ok=True)
    lock = filelock.FileLock(workdir / LOCK_FILE, timeout=0, fallback_to_soft=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise WorkdirError(_in_use(workdir) + " or choose another --workdir") from None
    except OSError as e:
        raise WorkdirError(f"cannot lock {workdir / LOCK_FILE}: {e}") from e
    try:
        started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        (workdir / HOLDER_FILE).write_text(json.dumps(holder) + "\n")
        yield workdir
    finally:
        (workdir / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()


@contextlib.contextmanager
def reading_lock(workdir: str | Path) -> Iterator[Path]:
    """Hold ``workdir`` for a command that only reads it: ``workdir_lock`` where this user can
    write the folder and its lock file; else (a folder made read-only, a read-only mount, a run
    of another user) a shared ``flock`` on the lock file opened read-only, which a training
    run's lock refuses (naming its holder) and which refuses a training run until the block
    ends. A folder without a lock file has never been held by a run."""
    workdir = Path(workdir)
    lock = workdir / LOCK_FILE
    if os.access(workdir, os.W_OK | os.X_OK) and (not lock.exists() or os.access(lock, os.W_OK)):
        with workdir_lock(workdir):
            yield workdir
        return
    if not is_primary() or not lock.exists():
        yield workdir
        return
    fd = os.open(lock, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirError(_in_use(workdir)) from None
        yield workdir
    finally:
        os.close(fd)
