"""Encyclopedic-VQA question files (``train.csv``, ``val.csv``, ``test.csv``), streamed row by row
into typed examples, with the single-hop filter that retrieval papers evaluate on.

Facts checked, and where (see ``../shared/DATA_FORMATS.md`` §1):
- Columns and their meaning: the E-VQA README (google-research/google-research,
  ``encyclopedic_vqa/README.md``). ``answer`` joins annotators' answers with ``|`` and the items of
  a ``multi_answer`` answer with ``&&``; ``dataset_image_ids`` holds up to 5 ids joined with ``|``;
  ``question_type`` is one of templated / automatic / multi_answer / 2_hop; for 2_hop rows
  ``wikipedia_url`` and ``evidence_section_id`` hold two values joined with ``|``. Columns are read
  by name, so their order does not matter (the order in the fixtures is the one a third-party
  builder lists, not checked against the released files).
- Single-hop filter: EchoSight (Go2Heart/EchoSight ``utils/test_utils.py::load_csv_data``,
  ``dataset/dataset.py``) and OMGM (``utils/utils.py``) keep templated, automatic and multi_answer
  rows (and ``infoseek`` rows of EchoSight's converted InfoSeek CSVs, which this reader does not
  cover: their ``dataset_name`` is not an E-VQA image set). EchoSight/OMGM key their result files
  ``E-VQA_{i}``, i counting rows after that filter: ``EvqaExample.query_id``.
- ``dataset_name`` is ``inaturalist`` or ``landmarks`` (EchoSight ``dataset/dataset_utils.py``).
  iNaturalist 2021 image ids are integers (iNat21 annotation format, visipedia/inat_comp
  ``2021/README.md``; a third-party E-VQA loader also treats them as numeric). GLDv2 ids are
  16-character strings (cvdfoundation/google-landmark README); that they are lowercase hex is
  inferred from the README's example id ``0123456789abcdef``. Rows whose ids break these forms
  are bad rows, so a wrong inference shows up in the report, never as silent loss.

Bad rows (wrong column count, empty question or url, unknown dataset or question type, malformed
image or section id) are skipped and counted through ``BadRows`` under the file and row; in strict
mode the first one raises. Damage to the file itself (text that is not UTF-8, a quote left open
that would swallow the rows after it) is a ``DataError`` naming the row (``csv_rows``).

Images: ``ImageLayout`` says where the two image sets live. GLDv2 nests each image under the first
three characters of its id, ``a/b/c/<id>.jpg`` (cvdfoundation/google-landmark README, "Extracting
the data"; EchoSight's ``get_image`` does the same). EchoSight finds an iNaturalist image through
its ``train_id2name.json`` / ``val_id2name.json`` maps (id -> file name under the iNat root,
``get_image``); OMGM renames both sets to flat ``<id>.jpg`` (``utils/utils.py``):
``ImageLayout.flat``. E-VQA draws its train images from iNat21 train and its val/test images from
iNat21 val (the E-VQA paper, as quoted by EchoSight's maintainer in Go2Heart/EchoSight issue 21):
use ``train_id2name.json`` for train.csv and ``val_id2name.json`` otherwise. What the maps hold
(paths like ``val/<class dir>/<file>.jpg`` relative to the iNat21 root) is inferred, not checked.
A well-formed id missing from the id2name map, a missing file and an undecodable file are bad rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxrank.data.csv_rows import csv_records
from jaxrank.data.errors import BadRows, DataError
from jaxrank.data.images import MAX_PIXELS, read_image
from jaxrank.data.infoseek import oven_image_path
from jaxrank.data.paths import OutsideRoot, image_problem, join_under

# "infoseek": EchoSight's InfoSeek questions converted to this CSV format (DATA_FORMATS.md §2:
# question_type and dataset_name "infoseek", OVEN image ids, an extra data_id column).
QUESTION_TYPES = ("templated", "automatic", "multi_answer", "2_hop", "infoseek")
SINGLE_HOP_TYPES = frozenset({"templated", "automatic", "multi_answer", "infoseek"})
REQUIRED_COLUMNS = (
    "question",
    "answer",
    "question_type",
    "dataset_name",
    "dataset_image_ids",
    "wikipedia_url",
)
IMAGE_ID_FORMS = {
    "inaturalist": re.compile(r"[0-9]+"),  # iNat21 integer image id
    "landmarks": re.compile(r"[0-9a-f]{16}"),  # GLDv2 16-character id
    "infoseek": re.compile(r"oven_[0-9]{2,}"),  # OVEN image id
}


@dataclass(frozen=True)
class EvqaExample:
    """One question row. ``row`` is the 0-based data row of ``source`` (header not counted),
    before any filtering; ``single_hop_index`` its position among single-hop rows (None for 2_hop).
    """

    source: str
    row: int
    question: str
    answers: tuple[str, ...]
    question_type: str
    dataset_name: str
    image_ids: tuple[str, ...]
    wikipedia_urls: tuple[str, ...]
    wikipedia_title: str
    question_original: str
    evidence: str
    evidence_section_ids: tuple[int, ...]
    evidence_section_title: str
    dataset_category_id: str
    split: str
    url_used_in_train: bool | None
    single_hop_index: int | None

    @property
    def where(self) -> str:
        """How reports name this row (the reader's name for it, less the line number)."""
        return f"{self.source} row {self.row}"

    @property
    def answer_parts(self) -> tuple[tuple[str, ...], ...]:
        """Each annotator's answer split into its ``&&`` items (one item unless multi_answer)."""
        return tuple(tuple(answer.split("&&")) for answer in self.answers)

    @property
    def query_id(self) -> str | None:
        """EchoSight's / OMGM's result-file key, ``E-VQA_{single_hop_index}``."""
        return None if self.single_hop_index is None else f"E-VQA_{self.single_hop_index}"


def _split(cell: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in cell.split("|") if part.strip())


def _parse(
    cells: dict[str, str], source: str, row: int, hop: int | None, bad: BadRows, where: str
) -> EvqaExample | None:
    """The example of one well-formed row, or None (``bad.skip`` records why and returns None)."""
    question, urls = cells["question"].strip(), _split(cells["wikipedia_url"])
    dataset, ids = cells["dataset_name"].strip(), _split(cells["dataset_image_ids"])
    if not question:
        return bad.skip(where, "empty_question", "the question cell is empty")
    if not urls:
        return bad.skip(where, "missing_url", "no wikipedia_url")
    if dataset not in IMAGE_ID_FORMS:
        return bad.skip(where, "unknown_dataset", f"dataset_name {dataset!r}")
    wrong = [i for i in ids if not IMAGE_ID_FORMS[dataset].fullmatch(i)]
    if not ids or wrong:
        detail = f"{dataset} ids {wrong or cells['dataset_image_ids']!r}"
        return bad.skip(where, "bad_image_id", detail)
    section_cell = cells.get("evidence_section_id", "")
    try:
        sections = tuple(int(s) for s in _split(section_cell))
    except ValueError:
        return bad.skip(where, "bad_section_id", f"evidence_section_id {section_cell!r}")
    return EvqaExample(
        source=source,
        row=row,
        question=question,
        answers=tuple(cells["answer"].split("|")),
        question_type=cells["question_type"].strip(),
        dataset_name=dataset,
        image_ids=ids,
        wikipedia_urls=urls,
        wikipedia_title=cells.get("wikipedia_title", ""),
        question_original=cells.get("question_original", ""),
        evidence=cells.get("evidence", ""),
        evidence_section_ids=sections,
        evidence_section_title=cells.get("evidence_section_title", ""),
        dataset_category_id=cells.get("dataset_category_id", ""),
        split=cells.get("encyclopedic_vqa_split", ""),
        url_used_in_train={"True": True, "False": False}.get(
            cells.get("wikipedia_url_used_in_train", "").strip()
        ),
        single_hop_index=hop,
    )


def read_evqa_csv(
    path: str | Path, bad: BadRows, *, single_hop: bool = True
) -> Iterator[EvqaExample]:
    """Stream the examples of one E-VQA CSV; 2_hop rows are dropped (not counted as bad) when
    ``single_hop``. A missing file or a header without the needed columns is a ``DataError``.

    ``single_hop_index`` counts every row with the right column count whose question_type is
    single-hop, bad or not, as EchoSight's loader does, so ``query_id`` matches its keys.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such E-VQA CSV file")
    records = csv_records(path)
    header = [name.strip() for name in next(records, (0, []))[1]]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise DataError(f"{path}: header lacks E-VQA columns {missing}; it has {header}")
    hops = 0
    for row, (line, cells) in enumerate(records):
        where = f"{path} row {row} (line {line})"
        if len(cells) != len(header):
            bad.skip(where, "malformed_row", f"{len(cells)} cells, the header has {len(header)}")
            continue
        fields = dict(zip(header, cells, strict=True))
        qtype = fields["question_type"].strip()
        if qtype not in QUESTION_TYPES:
            bad.skip(where, "unknown_question_type", f"question_type {qtype!r}")
            continue
        hop = hops if qtype in SINGLE_HOP_TYPES else None
        hops += hop is not None
        if single_hop and hop is None:
            continue
        example = _parse(fields, str(path), row, hop, bad, where)
        if example is not None:
            bad.read()
            yield example


# Images ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageLayout:
    """Where the query images live. Patterns are ``str.format`` templates relative to their root,
    with ``{id}`` (the image id) and, for iNaturalist, ``{name}`` (the id's entry in
    ``inaturalist_id2name``). The defaults are EchoSight's layout: the GLDv2 tree as released and
    iNat21 through an id2name map.
    """

    inaturalist_root: Path | None = None
    landmarks_root: Path | None = None
    inaturalist_pattern: str = "{name}"
    landmarks_pattern: str = "{id[0]}/{id[1]}/{id[2]}/{id}.jpg"
    inaturalist_id2name: Mapping[str, str] | None = field(default=None, repr=False)
    oven_root: Path | None = None  # InfoSeek's OVEN images
    oven_layout: str = "sharded"  # <root>/<first two digits>/<id>.<ext>, or "flat"

    @classmethod
    def flat(cls, inaturalist_root: str | Path, landmarks_root: str | Path) -> ImageLayout:
        """OMGM's layout: every image renamed to ``<root>/<id>.jpg``."""
        return cls(Path(inaturalist_root), Path(landmarks_root), "{id}.jpg", "{id}.jpg")


def load_id2name(path: str | Path) -> dict[str, str]:
    """EchoSight's ``{train,val}_id2name.json``: a JSON object, image id -> file name."""
    try:
        with open(path, encoding="utf-8") as f:
            mapping = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not readable as an id2name JSON object: {e}") from e
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise DataError(f"{path}: expected a JSON object of image id -> file name strings")
    return {str(k): v for k, v in mapping.items()}


def _locate(dataset_name: str, image_id: str, layout: ImageLayout) -> tuple[Path, Path | None]:
    """``(root, file)`` of one image; the file is None when the id is not in the id2name map."""
    if dataset_name == "infoseek":
        if layout.oven_root is None:
            raise DataError("ImageLayout has no oven_root for InfoSeek's OVEN images")
        root = Path(layout.oven_root)
        return root, oven_image_path(image_id, root, layout=layout.oven_layout)
    if dataset_name == "inaturalist":
        root, pattern = layout.inaturalist_root, layout.inaturalist_pattern
    elif dataset_name == "landmarks":
        root, pattern = layout.landmarks_root, layout.landmarks_pattern
    else:
        raise DataError(f"no image layout for dataset {dataset_name!r}")
    if root is None:
        raise DataError(f"ImageLayout has no root for {dataset_name} images")
    name = None
    if "{name" in pattern:
        if layout.inaturalist_id2name is None:
            raise DataError(f"pattern {pattern!r} needs ImageLayout.inaturalist_id2name")
        name = layout.inaturalist_id2name.get(image_id)
        if name is None:
            return Path(root), None
    return Path(root), join_under(root, pattern.format(id=image_id, name=name))


def image_path(dataset_name: str, image_id: str, layout: ImageLayout) -> Path | None:
    """The file of one image, or None when ``image_id`` is not in the id2name map. A layout that
    cannot place this dataset at all (no root; ``{name}`` without a map) is a ``DataError``; an
    id2name entry that leads out of the root (absolute, ``..``) raises ``paths.OutsideRoot``."""
    return _locate(dataset_name, image_id, layout)[1]


def query_image_path(
    example: EvqaExample, layout: ImageLayout, bad: BadRows, which: int = 0
) -> Path | None:
    """The file of image ``which`` of the row (EchoSight and OMGM use the first), or None when its
    id is not in the id2name map, its path leads out of the image root (``paths``) or the file is
    missing (recorded in ``bad``). Only stats, so a pipeline can drop such rows while reading
    them, before any decoding."""
    image_id = example.image_ids[which]
    try:
        root, path = _locate(example.dataset_name, image_id, layout)
    except OutsideRoot as e:
        bad.skip(example.where, e.reason, f"{example.dataset_name} id {image_id}: {e.detail}")
        return None
    if path is None:
        bad.skip(example.where, "unknown_image_id", f"{example.dataset_name} id {image_id!r}")
    elif problem := image_problem(root, path):
        bad.skip(example.where, *problem)
        path = None
    return path


def read_query_image(
    example: EvqaExample,
    layout: ImageLayout,
    bad: BadRows,
    which: int = 0,
    *,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray | None:
    """Image ``which`` of the row as uint8 RGB ``[H, W, 3]``, or None: an unknown id, a path out
    of the root, a missing, undecodable or oversized (``images.MAX_PIXELS``) file is recorded in
    ``bad``."""
    path = query_image_path(example, layout, bad, which)
    return None if path is None else read_image(path, example.where, bad, max_pixels=max_pixels)
