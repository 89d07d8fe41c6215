"""A file that a data file names must lie under the folder the user gave as its root.

Released data files name their images by relative paths (M-BEIR's ``img_path``, the values of
E-VQA's id2name maps, CoOp's split entries). One that is absolute, climbs out with ``..``, or
passes through a symlink pointing elsewhere would read a file nobody offered as data, so the
readers refuse such a row and count it through ``BadRows`` by reason:

- ``path_outside_root``: the path is absolute or has a ``..`` part (read off the text, no file
  system access, so it costs nothing on a 5.6M-line pool);
- ``symlink_outside_root``: the path is clean but, symlinks followed, the file lies outside the
  root (symlinks followed too, so a root that is itself a link works). Checked where a reader
  touches the file (its existence check or its decoding). A folder inside the root that links
  to another disk is refused by this rule: point the root at the real folder instead.
"""

from __future__ import annotations

import os
from pathlib import Path


class OutsideRoot(Exception):
    """A path a data file names that leads out of its root; ``reason`` is the BadRows key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def join_under(root: str | Path, relative: str) -> Path:
    """``root / relative``; ``OutsideRoot`` when ``relative`` is absolute or has a ``..`` part."""
    if relative.startswith(("/", "\\")) or (".." in relative and ".." in relative.split("/")):
        raise OutsideRoot("path_outside_root", f"{relative!r} leads out of {root}")
    return Path(root, relative)


def check_resolved(root: str | Path, path: str | Path) -> None:
    """``OutsideRoot`` when ``path``, symlinks followed, does not lie under ``root``."""
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise OutsideRoot("symlink_outside_root", f"{path} resolves to {real}, outside {root}")


def image_problem(root: str | Path | None, path: Path) -> tuple[str, str] | None:
    """``(reason, detail)`` when image ``path`` cannot be read: it lies outside ``root`` through
    a symlink (skipped when ``root`` is None) or is no file (``missing_image``); else None."""
    if root is not None:
        try:
            check_resolved(root, path)
        except OutsideRoot as e:
            return e.reason, e.detail
    return None if path.is_file() else ("missing_image", f"no file {path}")
