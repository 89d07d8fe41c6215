"""CoOp's few-shot splits read from CoOp's own files, so RAR's numbers can be compared with the
paper's split for split (the TFDS route in ``fewshot_tfds`` has other splits).

Layouts, checked in KaiyangZhou/CoOp ``datasets/*.py`` (DATA_FORMATS.md §5):

- nine datasets keep one ``<dir>/split_zhou_<Name>.json`` holding
  ``{"train": [[impath, label, classname], ...], "val": [...], "test": [...]}``, ``impath``
  relative to the dataset's image folder (``oxford_pets.py::read_split``); the folders are in
  ``COOP_DATASETS`` (Food-101's and Oxford-Pets' ``images``, which DATA_FORMATS leaves out,
  read from ``food101.py`` and ``oxford_pets.py``; Stanford Cars' paths are relative to the
  dataset folder itself);
- FGVC-Aircraft (the official archive's ``fgvc-aircraft-2013b/data`` folder, renamed) has no
  JSON: ``variants.txt`` lists the classes (label = line number) and
  ``images_variant_{train,val,test}.txt`` hold ``"<image id> <variant>"`` lines, the variant
  possibly with spaces, images at ``images/<id>.jpg`` (``fgvc_aircraft.py``);
- ImageNet lists ``images/{train,val}/<wnid>/*`` and names classes from ``classnames.txt``
  (``"<wnid> <name>"`` lines); CoOp tests on ``val`` and uses it as validation too
  (``imagenet.py``).

Bad entries (malformed, image missing, label and class name disagreeing) go to ``BadRows``:
skipped and counted, or an error in strict mode, the default here so nothing is skipped
unless the caller asks for it and keeps the report. Shots are drawn with
``fewshot_tfds.sample_shots`` by seed here; ``coop_fewshot`` reads CoOp's own pickled draws.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from jaxrank.data.errors import BadRows, DataError
from jaxrank.data.fewshot_tfds import sample_shots
from jaxrank.data.images import centre_square, read_image
from jaxrank.data.labelled_images import LabelledImages
from jaxrank.data.paths import OutsideRoot, image_problem, join_under

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CoopDataset:
    """Where CoOp keeps one dataset under the data root: its folder, its image folder inside
    it (``""``: the folder itself) and its split JSON (None: read from other files)."""

    directory: str
    image_dir: str
    split_file: str | None = None


# Keys match ``fewshot_tfds.FEWSHOT_DATASETS`` (less RAF-DB, which CoOp does not have).
COOP_DATASETS = MappingProxyType(
    {
        "imagenet": CoopDataset("imagenet", "images"),
        "caltech101": CoopDataset(
            "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"
        ),
        "oxford_pets": CoopDataset("oxford_pets", "images", "split_zhou_OxfordPets.json"),
        "stanford_cars": CoopDataset("stanford_cars", "", "split_zhou_StanfordCars.json"),
        "flowers102": CoopDataset("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
        "food101": CoopDataset("food-101", "images", "split_zhou_Food101.json"),
        "fgvc_aircraft": CoopDataset("fgvc_aircraft", "images"),
        "sun397": CoopDataset("sun397", "SUN397", "split_zhou_SUN397.json"),
        "dtd": CoopDataset("dtd", "images", "split_zhou_DescribableTextures.json"),
        "eurosat": CoopDataset("eurosat", "2750", "split_zhou_EuroSAT.json"),
        "ucf101": CoopDataset("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
    }
)


@dataclass(frozen=True)
class SplitRow:
    path: Path  # resolved against the image folder
    label: int
    classname: str


@dataclass(frozen=True)
class CoopSplits:
    """A dataset's three splits and its class names by label (shared by the splits)."""

    names: tuple[str, ...]
    train: tuple[SplitRow, ...]
    val: tuple[SplitRow, ...]
    test: tuple[SplitRow, ...]

    def rows(self, split: str) -> tuple[SplitRow, ...]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; CoOp's splits are {SPLITS}")
        return getattr(self, split)


def _names_by_label(pairs: Counter[tuple[int, str]], where: Path) -> dict[int, str]:
    """Each label's class name by majority over the file (ties: first seen), so one wrong
    entry cannot rename a class whatever its position. Labels must be 0..C-1, names distinct."""
    chosen: dict[int, str] = {}
    for (label, name), count in pairs.items():  # insertion order: first seen wins ties
        if label not in chosen or count > pairs[(label, chosen[label])]:
            chosen[label] = name
    if sorted(chosen) != list(range(len(chosen))):
        gaps = sorted(set(range(max(chosen, default=-1) + 1)) - set(chosen))
        raise DataError(f"{where}: labels must run 0..C-1; no entry names label(s) {gaps[:5]}")
    repeated = [n for n, c in Counter(chosen.values()).items() if c > 1]
    if repeated:
        raise DataError(f"{where}: class name(s) {repeated[:5]} stand for several labels")
    return chosen


def read_split_json(
    path: str | Path, image_dir: str | Path, bad: BadRows, *, check_images: bool = True
) -> CoopSplits:
    """A ``split_zhou_*.json`` file; entries resolved against ``image_dir``."""
    path, image_dir = Path(path), Path(image_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such split file") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable as JSON: {e}") from e
    if not isinstance(data, dict) or any(not isinstance(data.get(s), list) for s in SPLITS):
        raise DataError(f"{path}: expected an object with lists under {SPLITS}")
    entries: dict[str, list[tuple[str, Path, int, str]]] = {s: [] for s in SPLITS}
    pairs: Counter[tuple[int, str]] = Counter()
    for split in SPLITS:
        for i, entry in enumerate(data[split]):
            where = f"{path} {split}[{i}]"
            ok = isinstance(entry, list) and len(entry) == 3
            impath, label, name = entry if ok else (None, None, None)
            ok = ok and isinstance(impath, str) and impath != ""
            ok = ok and isinstance(name, str) and name != ""
            ok = ok and type(label) is int and label >= 0
            if not ok:
                bad.skip(
                    where,
                    "malformed_entry",
                    f"expected [impath, label >= 0, classname], got {json.dumps(entry)[:120]}",
                )
                continue
            try:
                resolved = join_under(image_dir, impath)
            except OutsideRoot as e:
                bad.skip(where, e.reason, e.detail)
                continue
            entries[split].append((where, resolved, label, name))
            pairs[(label, name)] += 1
    names = _names_by_label(pairs, path)
    label_of = {name: label for label, name in names.items()}
    kept: dict[str, list[SplitRow]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        for where, resolved, label, name in entries[split]:
            if names[label] != name:
                bad.skip(
                    where,
                    "label_mismatch",
                    f"label {label} is {names[label]!r} elsewhere "
                    f"in the file, {name!r} is label {label_of.get(name)}",
                )
            elif check_images and (missing := image_problem(image_dir, resolved)):
                bad.skip(where, *missing)
            else:
                kept[split].append(SplitRow(resolved, label, name))
                bad.read()
    return CoopSplits(tuple(names[i] for i in range(len(names))), *map(tuple, kept.values()))


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of ``path``, stripped, with 1-based line numbers."""
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not readable as text: {e}") from e
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_fgvc_aircraft(
    dataset_dir: str | Path, bad: BadRows, *, check_images: bool = True
) -> CoopSplits:
    """FGVC-Aircraft's variant-level splits: ``variants.txt`` and ``images_variant_*.txt``."""
    dataset_dir = Path(dataset_dir)
    variants_path = dataset_dir / "variants.txt"
    names = tuple(line for _, line in _text_lines(variants_path))
    repeated = [n for n, c in Counter(names).items() if c > 1]
    if repeated:
        raise DataError(f"{variants_path}: variant(s) {repeated[:5]} listed more than once")
    label_of = {name: label for label, name in enumerate(names)}
    splits = []
    for split in SPLITS:
        path = dataset_dir / f"images_variant_{split}.txt"
        rows = []
        for n, line in _text_lines(path):
            where = f"{path} line {n}"
            image_id, _, variant = line.partition(" ")
            image = dataset_dir / "images" / f"{image_id}.jpg"
            if not variant or "/" in image_id or image_id == "..":
                bad.skip(where, "malformed_line", f"expected '<image id> <variant>', got {line!r}")
            elif variant not in label_of:
                bad.skip(where, "unknown_class", f"{variant!r} is not in {variants_path}")
            elif check_images and (missing := image_problem(dataset_dir, image)):
                bad.skip(where, *missing)
            else:
                rows.append(SplitRow(image, label_of[variant], variant))
                bad.read()
        splits.append(tuple(rows))
    return CoopSplits(names, *splits)


def read_imagenet_classnames(path: str | Path) -> dict[str, str]:
    """CoOp's ``classnames.txt``: WordNet id to readable name, in file order."""
    path = Path(path)
    names: dict[str, str] = {}
    for n, line in _text_lines(path):
        wnid, _, name = line.partition(" ")
        if not name or wnid in names:
            problem = "repeats a WordNet id" if name else "expected '<wnid> <class name>'"
            raise DataError(f"{path} line {n}: {problem}: {line!r}")
        names[wnid] = name
    return names


def read_imagenet(dataset_dir: str | Path, bad: BadRows) -> CoopSplits:
    """ImageNet as CoOp lists it: ``images/train`` for training, ``images/val`` for both test
    and validation. Labels follow the sorted WordNet ids of ``classnames.txt`` (CoOp's sorted
    folders, whenever the folders are those ids), so train and val agree even if a folder is
    missing; a folder not in ``classnames.txt`` is one bad entry (``unknown_class``)."""
    dataset_dir = Path(dataset_dir)
    classnames = read_imagenet_classnames(dataset_dir / "classnames.txt")
    wnids = sorted(classnames)
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    splits = {}
    for split in ("train", "val"):
        split_dir = dataset_dir / "images" / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: no such folder (expected images/<split>/<wnid>/*)")
        rows = []
        for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if folder.name not in label_of:
                bad.skip(str(folder), "unknown_class", "folder is not in classnames.txt")
                continue
            label = label_of[folder.name]
            files = sorted(f for f in folder.iterdir() if f.is_file() and f.name[0] != ".")
            rows.extend(SplitRow(f, label, classnames[folder.name]) for f in files)
            bad.read(len(files))
        splits[split] = tuple(rows)
    names = tuple(classnames[w] for w in wnids)
    return CoopSplits(names, splits["train"], splits["val"], splits["val"])


def image_folder(root: str | Path, name: str) -> Path:
    """The folder a dataset's split paths are relative to."""
    entry = COOP_DATASETS[name]
    return Path(root) / entry.directory / entry.image_dir


def read_splits(
    root: str | Path, name: str, bad: BadRows | None = None, *, check_images: bool = True
) -> CoopSplits:
    """One of ``COOP_DATASETS`` under the data root ``root``, in CoOp's layout. ``bad`` None
    is strict: the first bad entry raises."""
    if name not in COOP_DATASETS:
        raise DataError(f"unknown CoOp dataset {name!r}; known: {sorted(COOP_DATASETS)}")
    entry = COOP_DATASETS[name]
    bad = BadRows(strict=True) if bad is None else bad
    dataset_dir = Path(root) / entry.directory
    if name == "imagenet":
        return read_imagenet(dataset_dir, bad)
    if name == "fgvc_aircraft":
        return read_fgvc_aircraft(dataset_dir, bad, check_images=check_images)
    assert entry.split_file is not None
    return read_split_json(
        dataset_dir / entry.split_file,
        image_folder(root, name),
        bad,
        check_images=check_images,
    )


def to_labelled(
    rows: Sequence[SplitRow], names: Sequence[str], size: int, bad: BadRows
) -> LabelledImages:
    """The rows' images (``read_image``; an unreadable one is a bad row and is dropped) as
    uint8 ``size x size`` squares: shorter side to ``size``, centre crop (``fewshot_tfds``'
    CLIP-style transform)."""
    images, labels = [], []
    for row in rows:
        image = read_image(row.path, str(row.path), bad)
        if image is not None:
            images.append(centre_square(image, size))
            labels.append(row.label)
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return LabelledImages(stacked, np.asarray(labels, np.int64), tuple(names))


def load_labelled(
    root: str | Path,
    name: str,
    split: str,
    size: int,
    *,
    shots: int | None = None,
    seed: int = 0,
    bad: BadRows | None = None,
) -> LabelledImages:
    """One CoOp split as ``LabelledImages``, or ``shots`` per class of it drawn by ``seed``
    (``sample_shots``; every class must have that many). Only the drawn images are decoded.
    CoOp draws ``min(shots, 4)`` for ``val``: pass that yourself. ``bad`` None is strict."""
    bad = BadRows(strict=True) if bad is None else bad
    splits = read_splits(root, name, bad)
    rows = splits.rows(split) if shots is None else draw_shots(splits, split, shots, seed)
    return to_labelled(rows, splits.names, size, bad)


def draw_shots(splits: CoopSplits, split: str, shots: int, seed: int) -> tuple[SplitRow, ...]:
    """``shots`` rows per class of ``split``, drawn by ``seed`` (``sample_shots``)."""
    rows = splits.rows(split)
    labels = [r.label for r in rows]
    picked = sample_shots(labels, shots, seed, num_classes=len(splits.names), names=splits.names)
    return tuple(rows[i] for i in picked)
