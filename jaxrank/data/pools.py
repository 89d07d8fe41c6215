"""First-stage candidate pools on disk: each query's top-K retrieved ids and scores, computed
once and read by every re-ranking run that starts from them.

jaxrank's format is JSON Lines, chosen over arrays + sidecar because a bad row is then one
line that can be named, skipped and counted (``BadRows``) without losing the rest; ids may be
knowledge-base rows (int) or entity URLs (str) alike; floats written by ``json`` (shortest
repr of the float64) read back bit for bit, so evaluation numbers are identical; and it needs
nothing but the standard library. The price is size and speed: about 30 bytes a candidate
with int ids, ~450K candidates a second read or written on one core (InfoSeek's 73K queries
at K=100: some 220 MB, about 15 s), acceptable for a file read once per run.

The first line is a header, then one line per query::

    {"format": "jaxrank.pool", "version": 1, "k": 3, "queries": 2, "id_type": "int",
     "score_dtype": "float32", "meta": {"retriever": "..."}}
    {"query": "q0", "ids": [7, 2, 9], "scores": [0.91, 0.5, 0.25]}
    {"query": "q1", "ids": [4], "scores": [0.3]}

A row holds at most ``k`` candidates, in pool order; shorter rows are padded in memory (id -1
or "", score -inf, ``valid`` False). ``queries`` lets a reader tell a truncated or spliced
file from a whole one. ``write_pool`` writes a temporary file in the same folder, fsyncs it
and renames it over the target, so a write that fails or is killed leaves the previous file
(a killed one also leaves its ``.<name>.*.tmp``, which nothing reads).

EchoSight's and OMGM's results files are read into the same ``Pool`` (formats below).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxrank.data.errors import BadRows, DataError

FORMAT, VERSION = "jaxrank.pool", 1
_PAD = {"int": -1, "str": ""}


@dataclass(frozen=True)
class Pool:
    """``ids`` / ``scores`` / ``valid`` are ``[Q, K]``, rows in ``query_ids`` order; ids are
    int64 or Python strings (object array); valid entries come first in every row."""

    query_ids: tuple[str, ...]
    ids: np.ndarray
    scores: np.ndarray
    valid: np.ndarray
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    @property
    def id_type(self) -> str:
        return "str" if self.ids.dtype == object else "int"

    def relevance(self, positives: Mapping[str, Any]) -> np.ndarray:
        """Bool ``[Q, K]``: which candidates are among the query's positives (one id or a
        collection of ids; a query absent from ``positives`` has none). With ``valid`` this
        is what ``jaxrank.metrics`` takes; for URL ids it is EchoSight's URL match."""
        out = np.zeros(self.ids.shape, bool)
        for row, query in enumerate(self.query_ids):
            wanted = positives.get(query, ())
            if isinstance(wanted, str | int) or not isinstance(wanted, Collection):
                wanted = (wanted,)
            wanted = set(wanted)
            out[row] = [
                v and i in wanted for i, v in zip(self.ids[row], self.valid[row], strict=True)
            ]
        return out


def _id_type(values: Iterable[Any]) -> str | None:
    """The values' one id type, ``int`` or ``str``; None when mixed, other or empty."""
    kinds = {{int: "int", str: "str"}.get(type(v)) for v in values}
    return kinds.pop() if len(kinds) == 1 else None


def _ids_ok(ids: Sequence[Any], id_type: str) -> bool:
    """All of ``id_type``; int ids also in ``[0, 2**63)``, so -1 stays free for padding."""
    if _id_type(ids) != id_type and ids:
        return False
    return id_type == "str" or all(0 <= i < 2**63 for i in ids)


def _plain(values: Sequence[Any] | np.ndarray) -> list[Any]:
    """Python values of a row (numpy scalars unwrapped), without numpy's type coercion."""
    if isinstance(values, np.ndarray):
        return values.tolist()
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def _castable(scores: list[float], dtype: np.dtype) -> bool:
    """Whether every score is a finite number, also once cast to ``dtype``."""
    if any(type(s) not in (int, float) for s in scores):
        return False
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.asarray(scores, np.float64).astype(dtype)).all())


def make_pool(
    query_ids: Sequence[str],
    ids: Sequence[Sequence[Any]] | np.ndarray,
    scores: Sequence[Sequence[float]] | np.ndarray,
    valid: np.ndarray | None = None,
    *,
    k: int | None = None,
    score_dtype: Any = np.float32,
    meta: Mapping[str, Any] | None = None,
) -> Pool:
    """A ``Pool`` from ``[Q, K]`` arrays (or ragged lists, which are padded to ``k``, by
    default the longest row). Invalid entries are dropped and each row compacted in order, so
    ranking metrics (stable ties) are unchanged. Raises ``DataError`` on non-finite valid
    scores, mismatched shapes, repeated query ids or mixed id types."""
    if len(set(query_ids)) != len(query_ids) or not all(isinstance(q, str) for q in query_ids):
        raise DataError("query ids must be distinct strings")
    if len(ids) != len(query_ids) or len(scores) != len(query_ids):
        raise DataError(
            f"{len(query_ids)} query ids but {len(ids)} id rows, {len(scores)} score rows"
        )
    rows_ids, rows_scores = [], []
    for r, (row_ids, row_scores) in enumerate(zip(ids, scores, strict=True)):
        row_ids, row_scores = _plain(row_ids), _plain(row_scores)
        if len(row_ids) != len(row_scores):
            raise DataError(f"query {query_ids[r]!r}: {len(row_ids)} ids, {len(row_scores)} scores")
        keep = np.ones(len(row_ids), bool) if valid is None else np.asarray(valid[r], bool)
        rows_ids.append([i for i, v in zip(row_ids, keep, strict=True) if v])
        rows_scores.append([s for s, v in zip(row_scores, keep, strict=True) if v])
    every_id = [i for row in rows_ids for i in row]
    id_type = _id_type(every_id) or "int"
    if not _ids_ok(every_id, id_type):
        raise DataError("candidate ids must be all strings or all ints >= 0")
    return _assemble(
        tuple(query_ids),
        rows_ids,
        rows_scores,
        id_type,
        np.dtype(score_dtype),
        k,
        dict(meta or {}),
        "make_pool",
    )


def _assemble(
    query_ids: tuple[str, ...],
    rows_ids: list[list[Any]],
    rows_scores: list[list[float]],
    id_type: str,
    score_dtype: np.dtype,
    k: int | None,
    meta: dict[str, Any],
    where: str,
) -> Pool:
    width = max((len(r) for r in rows_ids), default=0) if k is None else k
    ids = np.full((len(rows_ids), width), _PAD[id_type], np.int64 if id_type == "int" else object)
    scores = np.full(ids.shape, -np.inf, score_dtype)
    valid = np.zeros(ids.shape, bool)
    for r, (row_ids, row_scores) in enumerate(zip(rows_ids, rows_scores, strict=True)):
        n = len(row_ids)
        if n > width:
            raise DataError(f"{where}: query {query_ids[r]!r} has {n} candidates, more than k")
        with np.errstate(over="ignore"):
            converted = np.asarray(row_scores, np.float64).astype(score_dtype)
        if not np.isfinite(converted).all():
            raise DataError(f"{where}: query {query_ids[r]!r} has non-finite scores")
        ids[r, :n], scores[r, :n], valid[r, :n] = row_ids, converted, True
    return Pool(query_ids, ids, scores, valid, meta)


def _lines(pool: Pool) -> Iterator[str]:
    header = {
        "format": FORMAT,
        "version": VERSION,
        "k": pool.k,
        "queries": len(pool.query_ids),
        "id_type": pool.id_type,
        "score_dtype": pool.scores.dtype.name,
        "meta": dict(pool.meta),
    }
    yield json.dumps(header)
    for r, query in enumerate(pool.query_ids):
        ids, scores = pool.ids[r][pool.valid[r]], pool.scores[r][pool.valid[r]]
        yield _row_line(query, ids.tolist(), scores.tolist(), pool.id_type)


def _row_line(query: str, ids: list[Any], scores: list[float], id_type: str) -> str:
    if not all(math.isfinite(s) for s in scores):
        raise DataError(f"query {query!r}: non-finite scores cannot be written")
    if not _ids_ok(ids, id_type):
        raise DataError(f"query {query!r}: candidate ids must all be {id_type} (ints >= 0)")
    return json.dumps({"query": query, "ids": ids, "scores": scores}, allow_nan=False)


def write_pool(path: str | Path, pool: Pool) -> None:
    """``pool`` to ``path`` in jaxrank's format, atomically (temporary file, fsync, rename)."""
    path = Path(path)
    if pool.scores.dtype not in (np.float32, np.float64):
        raise DataError(f"scores must be float32 or float64, got {pool.scores.dtype}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in _lines(pool):
                f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    try:  # make the rename itself durable; not every file system lets a folder be opened
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


class _Rows:
    """Rows gathered by a reader: validated one by one, then padded into a ``Pool``."""

    def __init__(self, expected: Sequence[str] | None, bad: BadRows, k: int | None, dtype: Any):
        self.expected = None if expected is None else set(expected)
        self.order = expected
        self.bad, self.k, self.dtype = bad, k, np.dtype(dtype)
        self.rows: dict[str, tuple[list[Any], list[float]]] = {}

    def add(self, where: str, query: Any, ids: Any, scores: Any, id_type: str) -> None:
        bad = self.bad
        if not (isinstance(query, str) and isinstance(ids, list) and isinstance(scores, list)):
            bad.skip(where, "malformed_row", "expected a string query and lists of ids, scores")
        elif self.expected is not None and query not in self.expected:
            bad.skip(where, "unknown_query", f"query {query!r} is not in the query set")
        elif query in self.rows:
            bad.skip(where, "duplicate_query", f"query {query!r} already has a row")
        elif len(ids) != len(scores) or (self.k is not None and len(ids) > self.k):
            limit = "" if self.k is None else f" (k={self.k})"
            bad.skip(where, "ragged_row", f"{len(ids)} ids, {len(scores)} scores{limit}")
        elif not _ids_ok(ids, id_type):
            bad.skip(where, "malformed_row", f"candidate ids must all be {id_type} (ints >= 0)")
        elif not _castable(scores, self.dtype):
            bad.skip(where, "non_finite_score", f"scores must be finite as {self.dtype.name}")
        else:
            self.rows[query] = (ids, [float(s) for s in scores])
            bad.read()

    def pool(self, where: str, id_type: str, meta: dict[str, Any]) -> Pool:
        """Rows in ``expected`` order when given (a query without a row is padding, so it
        scores as a miss, and is a ``missing_query`` bad row), else in file order."""
        order = list(self.rows) if self.order is None else list(self.order)
        for query in order:
            if query not in self.rows:
                self.bad.skip(where, "missing_query", f"query {query!r} has no row")
        got = [self.rows.get(q, ([], [])) for q in order]
        rows_ids, rows_scores = [g[0] for g in got], [g[1] for g in got]
        return _assemble(
            tuple(order), rows_ids, rows_scores, id_type, self.dtype, self.k, meta, where
        )


def _header(path: Path, line: str) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line 1: not a jaxrank pool header: {e}") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"{path} line 1: not a jaxrank pool (no format {FORMAT!r})")
    if header.get("version") != VERSION:
        raise DataError(f"{path}: pool version {header.get('version')}, this reader: {VERSION}")
    ok = type(header.get("k")) is int and type(header.get("queries")) is int
    ok = ok and header.get("id_type") in _PAD
    ok = ok and header.get("score_dtype") in ("float32", "float64")
    if not ok or not isinstance(header.get("meta", {}), dict):
        raise DataError(f"{path} line 1: malformed header {line.strip()[:200]}")
    return header


def read_pool(
    path: str | Path, query_ids: Sequence[str] | None = None, *, bad: BadRows | None = None
) -> Pool:
    """A pool written by ``write_pool``. With ``query_ids`` the rows come back in that order
    and rows of other queries are bad (``unknown_query``). Bad rows (``malformed_row``,
    ``ragged_row``, ``non_finite_score``, ``duplicate_query``, ``missing_query``) are named by
    file and line; ``bad`` None is strict."""
    path = Path(path)
    bad = BadRows(strict=True) if bad is None else bad
    try:
        with open(path, encoding="utf-8") as f:
            header = _header(path, f.readline())
            rows = _Rows(query_ids, bad, header["k"], header["score_dtype"])
            seen = 0
            for n, line in enumerate(f, 2):
                if not line.strip():
                    continue
                seen += 1
                where = f"{path} line {n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    bad.skip(where, "malformed_row", f"not JSON: {e}")
                    continue
                if not isinstance(row, dict):
                    bad.skip(where, "malformed_row", "not a JSON object")
                    continue
                get = row.get
                rows.add(where, get("query"), get("ids"), get("scores"), header["id_type"])
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such pool file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not readable: {e}") from e
    if seen != header["queries"]:
        raise DataError(
            f"{path}: header promises {header['queries']} rows, the file has "
            f"{seen}: truncated or spliced"
        )
    return rows.pool(str(path), header["id_type"], header.get("meta", {}))


def _results_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such results file") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable as JSON: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object keyed by query id")
    return data


def read_echosight_results(
    path: str | Path,
    query_ids: Sequence[str] | None = None,
    *,
    ranked: str = "retrieved_entries",
    bad: BadRows | None = None,
) -> Pool:
    """EchoSight's ``--save_result_path`` file (Go2Heart/EchoSight ``test/test_reranker.py``):
    ``{data_id: {"retrieved_entries": [url, ...], "retrieval_similarities": [float, ...],
    "reranked_entries": [url, ...], "reranked_sections": [...]}}``, top 20, ``data_id`` the
    InfoSeek id or ``E-VQA_<csv row>``. The lists are in descending-score order, so metrics
    (ranking by score, ties to the earlier) match EchoSight's list-order ``eval_recall``.
    ``ranked="reranked_entries"`` reads the re-ranked order, which has no scores: they become
    ``-rank``. (EchoSight's own ``--resume_from`` unpacks ``retrieved_entries`` as a pair,
    which its writer never writes; this follows the writer.)"""
    if ranked not in ("retrieved_entries", "reranked_entries"):
        raise ValueError(f"ranked must be 'retrieved_entries' or 'reranked_entries': {ranked!r}")
    path = Path(path)
    bad = BadRows(strict=True) if bad is None else bad
    rows = _Rows(query_ids, bad, None, np.float64)
    for query, result in _results_json(path).items():
        where = f"{path} query {query!r}"
        if not isinstance(result, dict) or not isinstance(result.get(ranked), list):
            bad.skip(where, "malformed_row", f"expected an object with a list {ranked!r}")
            continue
        ids = result[ranked]
        if ranked == "retrieved_entries":
            scores = result.get("retrieval_similarities")
        else:
            scores = [float(-i) for i in range(len(ids))]
        rows.add(where, query, ids, scores, "str")
    return rows.pool(str(path), "str", {"source": "echosight", "ranked": ranked})


def read_omgm_results(
    path: str | Path, query_ids: Sequence[str] | None = None, *, bad: BadRows | None = None
) -> Pool:
    """OMGM's ``result.json`` (ChaoLinAViy/OMGM ``test/step1_img2sum.py`` and
    ``step2b_IT2IT_rerank.py``): ``{data_id: {"retrieved_entities": [{"url", "title"}, ...],
    "retrieval_similarities": [float, ...], "sec_sim": [[...], ...]}}``, ``sec_sim`` only after
    step 2, whose list is re-ranked and its scores the fused ones. Ids are the URLs (titles
    and section scores are not kept)."""
    path = Path(path)
    bad = BadRows(strict=True) if bad is None else bad
    rows = _Rows(query_ids, bad, None, np.float64)
    for query, result in _results_json(path).items():
        where = f"{path} query {query!r}"
        entities = result.get("retrieved_entities") if isinstance(result, dict) else None
        urls = [e.get("url") if isinstance(e, dict) else None for e in entities or []]
        if not isinstance(entities, list) or not all(isinstance(u, str) for u in urls):
            bad.skip(where, "malformed_row", "expected retrieved_entities: [{url, title}, ...]")
            continue
        rows.add(where, query, urls, result.get("retrieval_similarities"), "str")
    return rows.pool(str(path), "str", {"source": "omgm"})
