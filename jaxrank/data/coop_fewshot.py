"""CoOp's own few-shot draws, so a run can use the very shots the papers' tables used.

CoOp (and RAR's ``CLIP-Cls``, built on it) caches each draw as
``<dataset>/split_fewshot/shot_{K}-seed_{S}.pkl``: a pickled ``{"train": [Datum, ...],
"val": [Datum, ...]}`` (ImageNet's holds ``train`` only) of Dassl's
``dassl.data.datasets.base_dataset.Datum``, whose ``_impath`` is the absolute image path on
the machine that drew it, with ``_label``, ``_domain`` and ``_classname`` (checked in CoOp's
``datasets/oxford_pets.py`` and Dassl's ``base_dataset.py``).

A pickle runs code when it loads, and these files come from other people's machines, so the
unpickler builds nothing but a plain stand-in for ``Datum``: any other class refuses the file.
Each draw is matched to this machine's split rows by the tail of its path (as deep as the
split's own relative paths); its label and class name must agree with the row's.
"""

from __future__ import annotations

import copyreg
import pickle
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from jaxrank.data.coop_splits import COOP_DATASETS, SplitRow
from jaxrank.data.errors import BadRows, DataError

DATUM = ("dassl.data.datasets.base_dataset", "Datum")


class _Datum:
    """What a pickled Dassl ``Datum`` becomes here: its attributes, nothing else."""

    _impath: str
    _label: int
    _classname: str


class _DatumUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        allowed = {
            DATUM: _Datum,
            ("copyreg", "_reconstructor"): copyreg._reconstructor,  # protocols 0 and 1
            ("builtins", "object"): object,
        }
        if (module, name) not in allowed:
            raise DataError(
                f"{self.path}: refuses to load {module}.{name}; a CoOp few-shot pickle holds "
                "only dassl Datum objects"
            )
        return allowed[(module, name)]


def fewshot_pickle_path(root: str | Path, name: str, shots: int, seed: int) -> Path:
    if name not in COOP_DATASETS:
        raise DataError(f"unknown CoOp dataset {name!r}; known: {sorted(COOP_DATASETS)}")
    folder = Path(root) / COOP_DATASETS[name].directory / "split_fewshot"
    return folder / f"shot_{shots}-seed_{seed}.pkl"


def _load(path: Path) -> dict:
    if not path.exists():
        raise DataError(f"{path}: no such CoOp few-shot file")
    try:
        with path.open("rb") as f:
            data = _DatumUnpickler(f, path).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
        raise DataError(f"{path}: not a readable pickle ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("train"), list):
        raise DataError(f"{path}: expected a dict with a 'train' list of Datum objects")
    return data


def read_fewshot_pickle(
    path: str | Path,
    split: str,
    rows: Sequence[SplitRow],
    image_dir: str | Path,
    bad: BadRows,
) -> tuple[SplitRow, ...]:
    """The rows of ``rows`` (one split read by ``coop_splits``, paths under ``image_dir``)
    that the pickle's ``split`` list draws, in the pickle's order. A draw that matches no row,
    or whose label or class name differs from its row's, is a bad row."""
    path = Path(path)
    data = _load(path)
    if split not in data:
        raise DataError(f"{path}: has no {split!r} draws (it has {sorted(data)})")
    image_dir = Path(image_dir)
    by_tail = {PurePosixPath(r.path.relative_to(image_dir).as_posix()).parts: r for r in rows}
    depths = sorted({len(parts) for parts in by_tail}, reverse=True)
    picked = []
    for i, datum in enumerate(data[split]):
        where = f"{path}:{split}[{i}]"
        if not isinstance(datum, _Datum) or not hasattr(datum, "_impath"):
            bad.skip(where, "malformed_entry", f"not a Datum: {type(datum).__name__}")
            continue
        parts = PurePosixPath(str(datum._impath).replace("\\", "/")).parts
        row = next((by_tail[parts[-d:]] for d in depths if parts[-d:] in by_tail), None)
        if row is None:
            bad.skip(where, "unknown_image", f"{datum._impath} is in no {split} row")
        elif (row.label, row.classname) != (datum._label, datum._classname):
            bad.skip(
                where,
                "label_mismatch",
                f"{datum._impath}: label {datum._label} {datum._classname!r}, the split says "
                f"{row.label} {row.classname!r}",
            )
        else:
            bad.read()
            picked.append(row)
    return tuple(picked)
