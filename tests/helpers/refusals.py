"""The hostile-input suite's one assertion: a command refused as the README promises.

Exit status 2, exactly one ``jaxrank: error:`` line naming the culprit, no Python traceback,
and every watched path on disk byte for byte as it was (a refused command writes nothing).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from jaxrank.cli import main as cli


def snapshot(*paths: Path) -> dict[str, str]:
    """Each path's content hash (folders walked, symlinks by target name); "absent" if none."""
    out = {}
    for root in map(Path, paths):
        if not root.exists() and not root.is_symlink():
            out[str(root)] = "absent"
            continue
        for path in sorted([root, *root.rglob("*")] if root.is_dir() else [root]):
            if path.is_symlink():
                out[str(path)] = f"link -> {path.readlink()}"
            elif path.is_dir():
                out[str(path)] = "folder"
            else:
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def refused(capsys, argv, *watched: Path, culprit: str | tuple[str, ...] = ()) -> str:
    """Run ``jaxrank argv`` in-process and assert the refusal; returns stderr. ``culprit``:
    text(s) the error line must contain (the file, key or value at fault)."""
    before = snapshot(*watched)
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("jaxrank: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for text in (culprit,) if isinstance(culprit, str) else culprit:
        assert str(text) in lines[0], err
    assert snapshot(*watched) == before, "a refused command changed files on disk"
    return err
