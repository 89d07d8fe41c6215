"""InfoSeek readers: the QA jsonl files, the ``*_withkb`` entity join, the OVEN image paths and
the Wiki6M knowledge base. Every file is streamed line by line, so a 934K-question train file or
the 6M-entity Wiki6M never has to fit in memory; only the join (``data_id`` -> entity) and the
entities a query set asks for are kept.

A bad line (not JSON, a key missing or of the wrong type, a repeated ``data_id``, a question
with no entity in the join) is a ``BadRows`` entry naming the file and its 1-based line;
``strict`` mode raises on the first. Region-R1's protocol scores InfoSeek val against a 100K-entity
KB (71,335 of the 73,620 val questions), so entities a query set references but the KB lacks are
reported (``EntityLookup.absent``) and their questions can be dropped, by name (``keep_known``).

Checked in stored copies of the public repositories (search tool, this session):

- QA rows ``{"data_id", "image_id", "question", "answer": [str], "answer_eval": [...],
  "data_split"}``: the InfoSeek release README's example and file list (train/val/test,
  ``infoseek_{train,val}_withkb.jsonl`` as the "KB mapping", human set). A numerical
  question's ``answer_eval`` is ``[{"wikidata": 1.0, "range": [0.9, 1.1]}]`` or that dict alone:
  edchengg/infoseek_eval ``infoseek_eval.py`` (``prepare_qid2example``).
- Test split and human set rows are ``{"data_id", "image_id", "question"}`` only (answers
  withheld): third-party notes on the released test file, hence ``labelled=False``.
- The join: one ``{"data_id", "entity_id": "Q…", "entity_text"}`` per line. ``data_id`` and
  ``entity_id`` as TIGER-AI-Lab/UniIR's InfoSeek preprocessor reads them, the three fields as
  third-party notes quote a train row; ``entity_id`` is a Wikidata id (open-vision-language/oven
  README). There is no test withkb file.
- Val subsets: ``data_split`` ending in ``unseen_question`` versus the rest (unseen entity), as
  ``infoseek_eval.py``'s ``evaluate`` splits them; the values ``val_unseen_question`` and
  ``val_unseen_entity`` as third-party loaders filter on them. The val score is the harmonic
  mean of the two subsets' scores, so ``subset`` keeps them apart.
- Repeated ``data_id`` in a QA file: UniIR deduplicates by ``data_id`` keeping the first; so does
  this reader, counting the others as bad rows.
- Images: edchengg/oven_eval ``image_downloads/merge_oven_images.py`` writes
  ``oven_images/<image_id.split('_')[-1][:2]>/<image_id><ext>``, ``ext`` that of the source
  dataset's file (``.JPEG`` for ImageNet, ...); UniIR reads the same folders re-encoded as
  ``.jpg`` (``image_id[-8:-6]``, the same two digits for 8-digit ids). EchoSight/OMGM use one
  flat folder (``layout="flat"``; from DATA_FORMATS.md §2, not rechecked).
- Wiki6M (``Wiki6M_ver_1_0.jsonl.gz``; ``Wiki6M_ver_1_0_title_only.jsonl`` has the first two
  fields only): ``wikidata_id``, ``wikipedia_title``, ``wikipedia_summary``,
  ``wikipedia_content``, ``wikipedia_image_url`` (optional): UniIR's preprocessor, the OVEN and
  InfoSeek READMEs (download links, the image-url field). No URL field was seen in any reader, so
  entities are keyed by Wikidata id. A third-party KB builder prefers, among rows repeating an id,
  the one with an image URL; the lookup does the same.

Not here: InfoSeek's 100K-entity KB (EchoSight's ``infoseek_100k_wiki``, used by OMGM and
Region-R1) is in the E-VQA KB JSON format, keyed by Wikipedia URL: ``jaxrank/data/wiki_kb.py``.
``infoseek_val_qtype.jsonl`` (question types, for answer scoring) is not read here.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxrank.data.errors import BadRows, DataError
from jaxrank.data.images import MAX_PIXELS, read_image

UNSEEN_QUESTION = "unseen_question"
UNSEEN_ENTITY = "unseen_entity"
OVEN_EXTENSIONS = (".jpg", ".JPEG", ".jpeg", ".png")
_OVEN_ID = re.compile(r"oven_(\d{2,})")
_WIKIDATA_ID = re.compile(r"Q[1-9]\d*")
# The id of a Wiki6M line, found without parsing the (long) line. Quoted inside a text value
# the key would read \"wikidata_id\" (escaped quotes), which this cannot match.
_WIKI6M_ID = re.compile(rb'"wikidata_id"\s*:\s*"([^"\\]*)"')


@dataclasses.dataclass(frozen=True)
class NumericAnswer:
    """A numerical question's accepted answer: the Wikidata value and the range scored right."""

    value: float
    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class InfoSeekExample:
    """One question. ``answer``/``answer_eval`` are empty and ``data_split`` is "" for the
    unlabelled files; ``entity_*`` are set by the withkb join."""

    data_id: str
    image_id: str
    question: str
    answer: tuple[str, ...]
    answer_eval: tuple[str | NumericAnswer, ...]
    data_split: str
    file: str  # the QA file, one string shared by all its examples
    line: int  # 1-based
    entity_id: str | None = None
    entity_text: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file} line {self.line}"

    @property
    def subset(self) -> str | None:
        return subset(self.data_split)


@dataclasses.dataclass(frozen=True)
class EntityLink:
    """A question's entity, from the withkb file."""

    entity_id: str
    entity_text: str | None


@dataclasses.dataclass(frozen=True)
class WikiEntity:
    """One Wiki6M entity; the title-only file leaves ``summary``/``content`` empty."""

    wikidata_id: str
    title: str
    summary: str
    content: str
    image_url: str | None
    line: int


@dataclasses.dataclass(frozen=True)
class EntityLookup:
    """The referenced entities found in a Wiki6M file, and the ones it lacks (sorted)."""

    entities: dict[str, WikiEntity]
    absent: tuple[str, ...]
    repeated: int  # lines repeating a kept entity's id

    def report(self, keep: int = 5) -> dict[str, Any]:
        return {
            "found": len(self.entities),
            "absent": len(self.absent),
            "absent_examples": list(self.absent[:keep]),
            "repeated": self.repeated,
        }


def subset(data_split: str) -> str | None:
    """``"unseen_question"``, ``"unseen_entity"``, or None (train, unlabelled, unknown)."""
    if data_split.endswith(UNSEEN_QUESTION):
        return UNSEEN_QUESTION
    if data_split.endswith(UNSEEN_ENTITY):
        return UNSEEN_ENTITY
    return None


class _Bad(Exception):
    """A row rejected for ``reason``; the reader records it in its ``BadRows``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based number, bytes) of the non-blank lines of ``path`` (``.gz`` read through), lazily.
    Bytes, so that a line that is not UTF-8 is one bad row and not the end of the file."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    number = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                if raw.strip():
                    yield number, raw
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable after line {number}: {e}") from e


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        row = json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise _Bad("invalid_json", str(e)) from None
    if not isinstance(row, dict):
        raise _Bad("invalid_json", f"a JSON {type(row).__name__}, not an object")
    return row


def _rows(path: Path, bad: BadRows) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, raw in _raw_lines(path):
        try:
            yield number, _parse(raw)
        except _Bad as e:
            bad.skip(f"{path} line {number}", e.reason, e.detail)


def _show(value: Any, limit: int = 60) -> str:
    """``repr`` of a bad value, cut short: a row's long text should not flood the report."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _string(row: Mapping[str, Any], key: str, pattern: re.Pattern[str] | None = None) -> str:
    if key not in row:
        raise _Bad("missing_key", f"no {key!r}")
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise _Bad("bad_field", f"{key!r} is {_show(value)}, not a non-empty string")
    if pattern is not None and not pattern.fullmatch(value):
        raise _Bad("bad_field", f"{key!r} is {_show(value)}, not of the form {pattern.pattern}")
    return value


def _optional_string(row: Mapping[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise _Bad("bad_field", f"{key!r} is {_show(value)}, not a string")
    return value or None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _answers(row: Mapping[str, Any]) -> tuple[str, ...]:
    if "answer" not in row:
        raise _Bad("missing_key", "no 'answer'")
    items = row["answer"]
    if not isinstance(items, list) or not all(isinstance(a, str) or _is_number(a) for a in items):
        raise _Bad("bad_field", f"'answer' is {_show(items)}, not a list of strings")
    return tuple(str(a) for a in items)


def _numeric(item: Mapping[str, Any]) -> NumericAnswer:
    bounds, value = item.get("range"), item.get("wikidata")
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(_is_number, bounds))):
        raise _Bad("bad_field", f"'answer_eval' range is {_show(bounds)}, not [low, high]")
    if not _is_number(value):
        raise _Bad("bad_field", f"'answer_eval' wikidata value is {_show(value)}, not a number")
    return NumericAnswer(float(value), float(bounds[0]), float(bounds[1]))


def _answer_eval(row: Mapping[str, Any]) -> tuple[str | NumericAnswer, ...]:
    if "answer_eval" not in row:
        raise _Bad("missing_key", "no 'answer_eval'")
    items = row["answer_eval"]
    items = [items] if isinstance(items, dict) else items
    if not isinstance(items, list):
        raise _Bad("bad_field", f"'answer_eval' is {_show(items)}, not a list")
    out: list[str | NumericAnswer] = []
    for item in items:
        if isinstance(item, dict):
            out.append(_numeric(item))
        elif isinstance(item, str) or _is_number(item):
            out.append(str(item))
        else:
            raise _Bad("bad_field", f"'answer_eval' holds {_show(item)}")
    return tuple(out)


def _example(row: Mapping[str, Any], file: str, line: int, labelled: bool) -> InfoSeekExample:
    return InfoSeekExample(
        data_id=_string(row, "data_id"),
        image_id=_string(row, "image_id", _OVEN_ID),
        question=_string(row, "question"),
        answer=_answers(row) if labelled else (),
        answer_eval=_answer_eval(row) if labelled else (),
        data_split=_string(row, "data_split")
        if labelled
        else (_optional_string(row, "data_split") or ""),
        file=file,
        line=line,
    )


def read_infoseek(
    path: str | Path,
    bad: BadRows,
    *,
    links: Mapping[str, EntityLink] | None = None,
    labelled: bool = True,
) -> Iterator[InfoSeekExample]:
    """The questions of an InfoSeek QA jsonl in file order, read lazily.

    With ``links`` (``read_withkb``) each question carries its entity, and one the join lacks is
    a bad row (``no_entity``). ``labelled=False`` reads the test split and the human set, whose
    rows have no answers (and no ``data_split``).
    """
    path = Path(path)
    file, seen = str(path), set()
    for line, row in _rows(path, bad):
        try:
            example = _example(row, file, line, labelled)
            if example.data_id in seen:
                raise _Bad("duplicate_id", f"{example.data_id} already read")
            seen.add(example.data_id)
            if links is not None:
                link = links.get(example.data_id)
                if link is None:
                    raise _Bad("no_entity", f"{example.data_id} is not in the withkb file")
                example = dataclasses.replace(
                    example, entity_id=link.entity_id, entity_text=link.entity_text
                )
        except _Bad as e:
            bad.skip(f"{file} line {line}", e.reason, e.detail)
            continue
        bad.read()
        yield example


def read_withkb(path: str | Path, bad: BadRows) -> dict[str, EntityLink]:
    """``data_id`` -> entity from an ``infoseek_{train,val}_withkb.jsonl``, whole: the join
    needs it by ``data_id``, and it is small (one short row per question)."""
    path = Path(path)
    links: dict[str, EntityLink] = {}
    for line, row in _rows(path, bad):
        try:
            data_id = _string(row, "data_id")
            link = EntityLink(
                _string(row, "entity_id", _WIKIDATA_ID), _optional_string(row, "entity_text")
            )
            if data_id in links:
                raise _Bad(
                    "duplicate_id", f"{data_id} already mapped to {links[data_id].entity_id}"
                )
        except _Bad as e:
            bad.skip(f"{path} line {line}", e.reason, e.detail)
            continue
        links[data_id] = link
        bad.read()
    return links


def oven_image_path(
    image_id: str,
    root: str | Path,
    *,
    layout: str = "sharded",
    extensions: Sequence[str] = OVEN_EXTENSIONS,
) -> Path:
    """The file of OVEN image ``image_id`` under ``root``: ``<root>/<first two digits>/<id><ext>``
    (``layout="flat"``: ``<root>/<id><ext>``), with the first of ``extensions`` that exists, or
    the first extension when none does (so a missing image is named by its usual path)."""
    match = _OVEN_ID.fullmatch(image_id)
    if match is None:
        raise DataError(f"{image_id!r} is not an OVEN image id (oven_<digits>)")
    if layout == "sharded":
        folder = Path(root) / match.group(1)[:2]
    elif layout == "flat":
        folder = Path(root)
    else:
        raise ValueError(f"layout must be 'sharded' or 'flat', got {layout!r}")
    candidates = [folder / f"{image_id}{ext}" for ext in extensions]
    return next((c for c in candidates if c.is_file()), candidates[0])


def read_query_image(
    example: InfoSeekExample,
    root: str | Path,
    bad: BadRows,
    *,
    max_pixels: int = MAX_PIXELS,
    **where: Any,
) -> np.ndarray | None:
    """The question's image as uint8 RGB, or None (missing, undecodable, oversized or, through
    a symlink, outside ``root``: a bad row named by the question's file and line). ``where``:
    ``oven_image_path``'s layout/extensions."""
    path = oven_image_path(example.image_id, root, **where)
    return read_image(path, example.where, bad, root=root, max_pixels=max_pixels)


def _entity(row: Mapping[str, Any], line: int) -> WikiEntity:
    return WikiEntity(
        wikidata_id=_string(row, "wikidata_id", _WIKIDATA_ID),
        title=_string(row, "wikipedia_title"),
        summary=_optional_string(row, "wikipedia_summary") or "",
        content=_optional_string(row, "wikipedia_content") or "",
        image_url=_optional_string(row, "wikipedia_image_url"),
        line=line,
    )


def read_wiki6m(path: str | Path, bad: BadRows) -> Iterator[WikiEntity]:
    """Every entity of a Wiki6M jsonl (``.gz`` or not, full or title-only), lazily."""
    path = Path(path)
    for line, row in _rows(path, bad):
        try:
            entity = _entity(row, line)
        except _Bad as e:
            bad.skip(f"{path} line {line}", e.reason, e.detail)
            continue
        bad.read()
        yield entity


def lookup_entities(path: str | Path, wanted: Iterable[str], bad: BadRows) -> EntityLookup:
    """The ``wanted`` entities of a Wiki6M jsonl, in one streamed pass, and those it lacks.

    Only lines whose ``wikidata_id`` is wanted are parsed (the id is found by a pattern first),
    so a bad line of an entity nobody asked for goes unnoticed; ``read_wiki6m`` checks them all.
    Of lines repeating an id, the first is kept unless a later one has an image URL it lacks.
    """
    path = Path(path)
    wanted = set(wanted)
    found: dict[str, WikiEntity] = {}
    repeated = 0
    for line, raw in _raw_lines(path):
        key = _WIKI6M_ID.search(raw)
        if key is not None and key.group(1).decode("utf-8", "replace") not in wanted:
            continue
        try:
            entity = _entity(_parse(raw), line)
        except _Bad as e:
            bad.skip(f"{path} line {line}", e.reason, e.detail)
            continue
        if entity.wikidata_id not in wanted:
            continue
        kept = found.get(entity.wikidata_id)
        if kept is not None:
            repeated += 1
            if kept.image_url or not entity.image_url:
                continue
        found[entity.wikidata_id] = entity
    bad.read(len(found))
    return EntityLookup(found, tuple(sorted(wanted - found.keys())), repeated)


def referenced_entities(examples: Iterable[InfoSeekExample]) -> set[str]:
    """The entity ids joined examples refer to (the set a KB lookup needs)."""
    return {e.entity_id for e in examples if e.entity_id is not None}


def keep_known(
    examples: Iterable[InfoSeekExample], lookup: EntityLookup, bad: BadRows
) -> Iterator[InfoSeekExample]:
    """The joined examples whose entity the KB has; the others are bad rows (``absent_entity``
    or, unjoined, ``no_entity``) named by their QA file and line. ``bad`` counts this pass's
    kept rows too, so give it its own ``BadRows`` (not the reader's)."""
    for example in examples:
        if example.entity_id is None:
            bad.skip(example.where, "no_entity", f"{example.data_id} was not joined to an entity")
        elif example.entity_id not in lookup.entities:
            bad.skip(example.where, "absent_entity", f"{example.entity_id} is not in the KB")
        else:
            bad.read()
            yield example
