"""M-BEIR (UniIR's benchmark) as released: query and candidate-pool jsonl, qrels, the
instruction TSV, and UniIR's Recall@K, so that jaxrank's numbers can be compared to the papers'.

Bad rows follow ``jaxrank.data.errors``: a malformed line, a missing or ill-typed key, a query
naming a candidate the given pool lacks, a duplicate id: each is skipped and counted under its
file and line in ``BadRows`` (``strict`` raises ``DataError`` on the first). A missing file is
a ``DataError``. Images are resolved under ``image_root`` (the M-BEIR root, since released paths
start with ``mbeir_images/``) and read by ``read_image`` when wanted; an image path that leads
out of the root is a bad row (``jaxrank.data.paths``: absolute or ``..`` when the line is read,
a symlink out of the root when the file is checked or read).

What was checked, and where (TIGER-AI-Lab/UniIR on GitHub; the HF card of TIGER-Lab/M-BEIR):

- Query line keys, in order: qid, query_txt, query_img_path, query_modality, query_src_content,
  pos_cand_list, neg_cand_list, task_id; written by ``json.dumps`` defaults (``", "`` and
  ``": "``). task_id is added to every split by ``src/data/mbeir_data_generator.py``
  (``--assign_task_ids``: query modality -> modality of the first positive); the raw query
  shown in UniIR's UniRAG doc carries it. ``*_src_content`` is a JSON *string* (HF card).
- Candidate line keys: txt, img_path, modality, did, src_content (preprocessors, e.g.
  ``src/data/preprocessing/mscoco_data_preprocessor.py``). Ids are ``"<dataset_id>:<n>"``.
- Dataset ids, task ids and modalities: ``src/data/preprocessing/utils.py`` (``DATASET_IDS``,
  ``MBEIR_TASK``; task 5 is marked there as not a valid task, so it is left out here).
- Qrels: ``qid 0 did relevance task_id``, one line per positive with relevance 1, written from
  ``pos_cand_list`` (``mbeir_data_generator.py --generate_qrels``); UniIR's ``load_qrel``
  (``src/common/mbeir_retriever.py``) keeps relevance > 0 and the task of a qid's first line.
- Instruction TSV: a header row, then query_modality, cand_modality, dataset name, dataset_id,
  prompts; keyed by (dataset_id, query modality, candidate modality), empty prompts dropped
  (``src/data/mbeir_dataset.py::_load_query_instructions``). The header names query_modality,
  cand_modality and dataset_id are what castorini/pyserini's M-BEIR loader reads by name; the
  third column's name and the prompts' text were not seen.
- Recall: ``compute_recall_at_k`` in ``mbeir_retriever.py`` is a hit (1.0 if any qrels positive
  is in the top k, 0.0 with no positive), averaged per task_id over the queries retrieved. The
  cut-offs per pair are the test config's ``correspond_metrics_name``
  (``src/models/uniir_clip/clip_scorefusion/configs_scripts/large/eval/inbatch/retrieval.yaml``):
  Recall@10/20/50 for fashion200k task0/task3 and fashioniq task7, Recall@1/5/10 otherwise.
  The headline R@5 (R@10 for the two fashion sets) is ELVA's and UniIR's table convention
  (PAPERS.md §2), consistent with those lists; it was not re-read in the UniIR paper.

Not checked against real files: whether every positive of a query is in its dataset's local
pool. UniIR's own loader notes that OVEN/InfoSeek positives can carry the other dataset's id
(``mbeir_dataset.py``), so give ``known_dids`` the pool(s) the qrels may point into.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxrank.data.errors import BadRows, DataError
from jaxrank.data.images import MAX_PIXELS, read_image
from jaxrank.data.paths import OutsideRoot, image_problem, join_under

DATASET_IDS = {
    "VisualNews": 0,
    "Fashion200K": 1,
    "WebQA": 2,
    "EDIS": 3,
    "NIGHTS": 4,
    "OVEN": 5,
    "INFOSEEK": 6,
    "FashionIQ": 7,
    "CIRR": 8,
    "MSCOCO": 9,
}
MODALITIES = ("text", "image", "image,text")
# task id -> (query modality, candidate modality)
TASKS = {
    0: ("text", "image"),
    1: ("text", "text"),
    2: ("text", "image,text"),
    3: ("image", "text"),
    4: ("image", "image"),
    6: ("image,text", "text"),
    7: ("image,text", "image"),
    8: ("image,text", "image,text"),
}
# The 16 (dataset, task) pairs of the M-BEIR test evaluation, in UniIR's order.
EVAL_PAIRS = (
    ("visualnews", 0),
    ("mscoco", 0),
    ("fashion200k", 0),
    ("webqa", 1),
    ("edis", 2),
    ("webqa", 2),
    ("visualnews", 3),
    ("mscoco", 3),
    ("fashion200k", 3),
    ("nights", 4),
    ("oven", 6),
    ("infoseek", 6),
    ("fashioniq", 7),
    ("cirr", 7),
    ("oven", 8),
    ("infoseek", 8),
)
_FASHION = ("fashion200k", "fashioniq")
RECALL_CUTOFFS = {p: (10, 20, 50) if p[0] in _FASHION else (1, 5, 10) for p in EVAL_PAIRS}
_ID = re.compile(r"[0-9]+:[0-9]+")
_INT = re.compile(r"-?[0-9]+")
_TSV_HEADER = {0: "query_modality", 1: "cand_modality", 3: "dataset_id"}


def headline_k(dataset: str) -> int:
    """The K of the one number reported per pair: 10 for Fashion200K and FashionIQ, else 5."""
    return 10 if dataset.lower() in _FASHION else 5


# Where the released files lie under the M-BEIR root ----------------------------------------


def query_path(root: str | Path, dataset: str, task_id: int, split: str = "test") -> Path:
    return Path(root, "query", split, f"mbeir_{dataset.lower()}_task{task_id}_{split}.jsonl")


def local_pool_path(root: str | Path, dataset: str, task_id: int, split: str = "test") -> Path:
    """MSCOCO alone has a pool per split (``mbeir_mscoco_task0_test_cand_pool.jsonl``)."""
    name = f"{dataset.lower()}_task{task_id}" + (f"_{split}" if dataset.lower() == "mscoco" else "")
    return Path(root, "cand_pool", "local", f"mbeir_{name}_cand_pool.jsonl")


def global_pool_path(root: str | Path, split: str = "test") -> Path:
    return Path(root, "cand_pool", "global", f"mbeir_union_{split}_cand_pool.jsonl")


def qrels_path(root: str | Path, dataset: str, task_id: int, split: str = "test") -> Path:
    return Path(root, "qrels", split, f"mbeir_{dataset.lower()}_task{task_id}_{split}_qrels.txt")


def instructions_path(root: str | Path) -> Path:
    return Path(root, "instructions", "query_instructions.tsv")


# Records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """One query line; ``image`` is ``query_img_path`` resolved under the reader's root."""

    qid: str
    query_txt: str | None
    query_img_path: str | None
    query_modality: str
    query_src_content: str | None  # a JSON string, as released
    pos_cand_list: tuple[str, ...]
    neg_cand_list: tuple[str, ...]
    task_id: int
    image: Path | None
    source: str  # the file read
    line: int  # 1-based
    image_root: str | Path | None = None  # the root ``image`` was resolved under

    @property
    def dataset_id(self) -> int:
        return int(self.qid.split(":")[0])

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One pool line; ``image`` is ``img_path`` resolved under the reader's root."""

    did: str
    txt: str | None
    img_path: str | None
    modality: str
    src_content: str | None
    image: Path | None
    source: str
    line: int
    image_root: str | Path | None = None

    @property
    def dataset_id(self) -> int:
        return int(self.did.split(":")[0])

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True, slots=True)
class Relevant:
    """A query's qrels: its task and its positives, in file order."""

    task_id: int
    dids: tuple[str, ...]


# Parsing ------------------------------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines, 1-based; bytes, so a bad encoding is one bad row, not a crash."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield number, line


def _json_object(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError alike
        raise _Bad("invalid_json", str(e)) from None
    if not isinstance(obj, dict):
        raise _Bad("invalid_json", f"a JSON {type(obj).__name__}, not an object")
    return obj


def _get(obj: dict[str, Any], key: str, kind: type, nullable: bool = False) -> Any:
    if key not in obj:
        raise _Bad("missing_key", f"no {key!r}")
    value = obj[key]
    if value is None and nullable:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Bad("bad_value", f"{key} = {value!r}")
    return value


def _id(obj: dict[str, Any], key: str) -> str:
    value = _get(obj, key, str)
    if not _ID.fullmatch(value):
        raise _Bad("bad_value", f'{key} = {value!r}, not "<dataset_id>:<n>"')
    return value


def _ids(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    values = _get(obj, key, list)
    if not all(isinstance(v, str) and _ID.fullmatch(v) for v in values):
        raise _Bad("bad_value", f"{key} = {values!r}")
    return tuple(values)


def _modality(value: str, txt: str | None, img: str | None, key: str) -> str:
    if value not in MODALITIES:
        raise _Bad("bad_value", f"{key} = {value!r}, not one of {MODALITIES}")
    parts = value.split(",")
    if "text" in parts and not txt:
        raise _Bad("bad_value", f"{key} = {value!r} but no text")
    if "image" in parts and not img:
        raise _Bad("bad_value", f"{key} = {value!r} but no image path")
    return value


def _image(root: str | Path | None, rel: str | None) -> Path | None:
    """``rel`` under ``root`` (the working folder when None); one that leads out is a bad row."""
    try:
        return None if rel is None else join_under(root or ".", rel)
    except OutsideRoot as e:
        raise _Bad(e.reason, e.detail) from None


def _parse_query(obj: dict[str, Any], root: str | Path | None, source: str, line: int) -> Query:
    txt = _get(obj, "query_txt", str, nullable=True)
    img = _get(obj, "query_img_path", str, nullable=True)
    modality = _modality(_get(obj, "query_modality", str), txt, img, "query_modality")
    task_id = _get(obj, "task_id", int)
    if TASKS.get(task_id, (None,))[0] != modality:
        raise _Bad("bad_value", f"task_id = {task_id} does not take {modality!r} queries")
    pos = _ids(obj, "pos_cand_list")
    if not pos:
        raise _Bad("no_positive", "pos_cand_list is empty")
    return Query(
        qid=_id(obj, "qid"),
        query_txt=txt,
        query_img_path=img,
        query_modality=modality,
        query_src_content=_get(obj, "query_src_content", str, nullable=True),
        pos_cand_list=pos,
        neg_cand_list=_ids(obj, "neg_cand_list"),
        task_id=task_id,
        image=_image(root, img),
        source=source,
        line=line,
        image_root=root,
    )


def _parse_candidate(
    obj: dict[str, Any], root: str | Path | None, source: str, line: int
) -> Candidate:
    txt = _get(obj, "txt", str, nullable=True)
    img = _get(obj, "img_path", str, nullable=True)
    return Candidate(
        did=_id(obj, "did"),
        txt=txt,
        img_path=img,
        modality=_modality(_get(obj, "modality", str), txt, img, "modality"),
        src_content=_get(obj, "src_content", str, nullable=True) if "src_content" in obj else None,
        image=_image(root, img),
        source=source,
        line=line,
        image_root=root,
    )


def _missing_image(record: Query | Candidate) -> _Bad | None:
    """Why the record's image cannot be read (a symlink out of the root, no file), or None."""
    if record.image is None:
        return None
    problem = image_problem(record.image_root or ".", record.image)
    return None if problem is None else _Bad(*problem)


# Readers ------------------------------------------------------------------------------------


def iter_queries(
    path: str | Path,
    bad: BadRows,
    *,
    image_root: str | Path | None = None,
    known_dids: Container[str] | None = None,
    check_images: bool = False,
) -> Iterator[Query]:
    """Stream a query jsonl. With ``known_dids`` (a pool's ids), a query naming any other
    candidate is a bad row (``unknown_candidate``); with ``check_images``, one whose image file
    is absent (``missing_image``) or lies outside the root through a symlink. A repeated qid is
    a bad row too (UniIR asserts uniqueness)."""
    path, seen = Path(path), set()
    for line, raw in _lines(path):
        try:
            query = _parse_query(_json_object(raw), image_root, str(path), line)
            if query.qid in seen:
                raise _Bad("duplicate_id", f"qid {query.qid} again")
            if known_dids is not None:
                unknown = [
                    d for d in query.pos_cand_list + query.neg_cand_list if d not in known_dids
                ]
                if unknown:
                    raise _Bad("unknown_candidate", f"{query.qid} names {unknown}, not in the pool")
            if check_images and (missing := _missing_image(query)):
                raise missing
        except _Bad as e:
            bad.skip(f"{path}:{line}", e.reason, e.detail)
            continue
        seen.add(query.qid)
        bad.read()
        yield query


def read_queries(path: str | Path, bad: BadRows, **options: Any) -> list[Query]:
    """All of ``iter_queries``; the options are its keywords."""
    return list(iter_queries(path, bad, **options))


def iter_candidates(
    path: str | Path,
    bad: BadRows,
    *,
    image_root: str | Path | None = None,
    check_images: bool = False,
    taken: Container[str] | None = None,
) -> Iterator[Candidate]:
    """Stream a pool jsonl (the global test pool holds 5.6M lines: stream it where you can).
    A did already in ``taken`` is a bad row (``read_pool`` passes the pool it is filling)."""
    path = Path(path)
    for line, raw in _lines(path):
        try:
            candidate = _parse_candidate(_json_object(raw), image_root, str(path), line)
            if taken is not None and candidate.did in taken:
                raise _Bad("duplicate_id", f"did {candidate.did} again")
            if check_images and (missing := _missing_image(candidate)):
                raise missing
        except _Bad as e:
            bad.skip(f"{path}:{line}", e.reason, e.detail)
            continue
        bad.read()
        yield candidate


def read_pool(
    path: str | Path,
    bad: BadRows,
    *,
    image_root: str | Path | None = None,
    check_images: bool = False,
) -> dict[str, Candidate]:
    """A pool by did, in file order; a repeated did is a bad row and the first line wins."""
    pool: dict[str, Candidate] = {}
    lines = iter_candidates(path, bad, image_root=image_root, check_images=check_images, taken=pool)
    for candidate in lines:
        pool[candidate.did] = candidate
    return pool


def read_qrels(path: str | Path, bad: BadRows) -> dict[str, Relevant]:
    """qid -> its task and positives. Lines with relevance <= 0 are not positives and are
    passed over, as UniIR's ``load_qrel`` does; a repeated (qid, did) is a bad row. A line
    whose task disagrees with its qid's first line keeps its positive (the first task stands,
    as in UniIR) and is counted under ``task_conflict``."""
    path = Path(path)
    tasks: dict[str, int] = {}
    dids: dict[str, list[str]] = {}
    for line, raw in _lines(path):
        where = f"{path}:{line}"
        fields = raw.decode("utf-8", errors="replace").split()
        try:
            if len(fields) != 5:
                raise _Bad("bad_line", f"{len(fields)} fields, not 5 (qid 0 did relevance task)")
            qid, _, did, relevance, task = fields
            if not (_ID.fullmatch(qid) and _ID.fullmatch(did)):
                raise _Bad("bad_value", f"ids {qid!r}, {did!r}")
            if not (_INT.fullmatch(relevance) and _INT.fullmatch(task) and int(task) in TASKS):
                raise _Bad("bad_value", f"relevance {relevance!r}, task {task!r}")
            if int(relevance) <= 0:
                continue
            if did in dids.setdefault(qid, []):
                raise _Bad("duplicate_id", f"({qid}, {did}) again")
            if tasks.setdefault(qid, int(task)) != int(task):
                # UniIR keeps the positive under the first line's task: so does jaxrank,
                # counting the conflict (strict mode stops at it).
                bad.skip(where, "task_conflict", f"{qid} has task {tasks[qid]} above, {task} here")
        except _Bad as e:
            bad.skip(where, e.reason, e.detail)
            continue
        dids[qid].append(did)
        bad.read()
    return {qid: Relevant(tasks[qid], tuple(d)) for qid, d in dids.items()}


def read_instructions(
    path: str | Path, bad: BadRows
) -> dict[tuple[int, str, str], tuple[str, ...]]:
    """(dataset_id, query modality, candidate modality) -> the prompts of that row. A header
    that does not name the key columns is a ``DataError``; a short row, a non-integer
    dataset_id, a row without prompts or a repeated key is a bad row (the first one wins)."""
    path = Path(path)
    rows = iter(_lines(path))
    _, header = next(rows, (0, b""))
    names = header.decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
    for column, name in _TSV_HEADER.items():
        if column >= len(names) or names[column].strip() != name:
            raise DataError(f"{path}: header {names}, expected {name!r} in column {column}")
    table: dict[tuple[int, str, str], tuple[str, ...]] = {}
    for line, raw in rows:
        where = f"{path}:{line}"
        cells = [
            c.strip() for c in raw.decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
        ]
        if len(cells) < 5:
            bad.skip(where, "bad_line", f"{len(cells)} columns, need 4 and a prompt")
            continue
        query_modality, cand_modality, _, dataset_id, *prompts = cells
        prompts = [p for p in prompts if p]
        if not (_INT.fullmatch(dataset_id) and prompts):
            bad.skip(where, "bad_value", f"dataset_id {dataset_id!r}, {len(prompts)} prompts")
            continue
        key = (int(dataset_id), query_modality, cand_modality)
        if key in table:
            bad.skip(where, "duplicate_id", f"{key} again")
            continue
        table[key] = tuple(prompts)
        bad.read()
    return table


def instructions_for(
    instructions: Mapping[tuple[int, str, str], tuple[str, ...]], query: Query
) -> tuple[str, ...]:
    """The prompts UniIR draws from for ``query``: its dataset's row for its task's modalities."""
    key = (query.dataset_id, query.query_modality, TASKS[query.task_id][1])
    if key not in instructions:
        raise DataError(f"{query.where}: no instruction row for {key}")
    return instructions[key]


def load_image(
    record: Query | Candidate, bad: BadRows, *, max_pixels: int = MAX_PIXELS
) -> np.ndarray | None:
    """The record's image as uint8 RGB, or None (no image, or a bad row under its line: a
    symlink out of the root, a missing, undecodable or oversized file)."""
    if record.image is None:
        return None
    root = record.image_root or "."
    return read_image(record.image, record.where, bad, root=root, max_pixels=max_pixels)


# UniIR's Recall@K ---------------------------------------------------------------------------


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """1.0 if any of ``relevant`` is among the first ``k`` of ``ranked`` (best first), else 0.0
    (also when there is no relevant id): a hit rate, not the fraction of positives found."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return 1.0 if set(ranked[:k]).intersection(relevant) else 0.0


def mean_recall_by_task(
    ranked: Mapping[str, Sequence[str]], qrels: Mapping[str, Relevant], k: int
) -> dict[int, float]:
    """Recall@k averaged per task over the queries in ``ranked`` (UniIR averages over the
    queries it retrieved for); a ranked qid without qrels is a ``DataError``."""
    hits: dict[int, list[float]] = {}
    for qid, candidates in ranked.items():
        if qid not in qrels:
            raise DataError(f"query {qid} has a ranking but no qrels")
        relevant = qrels[qid]
        hits.setdefault(relevant.task_id, []).append(recall_at_k(candidates, relevant.dids, k))
    return {task: sum(h) / len(h) for task, h in sorted(hits.items())}
