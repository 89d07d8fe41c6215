"""CoOp's few-shot pickles written the way CoOp writes them: ``{"train": [Datum, ...], "val":
[...]}`` of Dassl's ``dassl.data.datasets.base_dataset.Datum`` at the highest protocol. Dassl
is not installed, so a class of that module path and name stands in while pickling; the
bytes name the class exactly as the real one would."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

MODULE = "dassl.data.datasets.base_dataset"


def datum_class() -> type:
    """Dassl's ``Datum`` (its four attributes), registered under its real module path."""
    if MODULE in sys.modules:
        return sys.modules[MODULE].Datum
    parts = MODULE.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))

    class Datum:
        def __init__(self, impath: str, label: int, domain: int = -1, classname: str = ""):
            self._impath, self._label = impath, label
            self._domain, self._classname = domain, classname

    Datum.__module__, Datum.__qualname__ = MODULE, "Datum"
    sys.modules[MODULE].Datum = Datum
    return Datum


def write_fewshot_pickle(path: Path, draws: dict[str, list[tuple[str, int, str]]]) -> None:
    """``draws``: split -> ``(absolute image path, label, class name)`` per drawn image."""
    datum = datum_class()
    data = {
        split: [datum(p, label, -1, name) for p, label, name in rows]
        for split, rows in draws.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
