"""The E-VQA Wikipedia knowledge base (``encyclopedic_kb_wiki.json``, 2M pages, several GB) and
EchoSight's 100K InfoSeek subset of it, streamed entry by entry: the whole file is never parsed
into memory, and a lookup keeps only the entries a query set names.

Format, checked in the E-VQA README (google-research/google-research ``encyclopedic_vqa``): one
JSON object mapping each ``wikipedia_url`` to an entry with ``title``, ``section_titles`` (the first
equals the title), ``section_texts``, ``image_urls``, ``image_reference_descriptions`` (captions),
``image_section_indices`` (the section of each image) and ``url`` (the key again). That the InfoSeek
100K KB has the same format: EchoSight's README. That every entry has all seven fields: EchoSight's
``model/retriever.py::WikipediaKnowledgeBaseEntry`` indexes each of them without a default.

Streaming is ijson's (C backend when available): objects are built one entry at a time. A ``.zip``
(the released ``encyclopedic_kb_wiki.zip``) is read through its single ``.json`` member without
unpacking. An entry that breaks the format is a bad row (``BadRows``), named by its url; a file
that is not a JSON object, or that is cut short, is a ``DataError``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ijson

from jaxrank.data.errors import BadRows, DataError

_WHITESPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class WikiEntry:
    """One knowledge-base page; ``url`` is its key, the id that E-VQA rows and recall use."""

    url: str
    title: str
    section_titles: tuple[str, ...]
    section_texts: tuple[str, ...]
    image_urls: tuple[str, ...]
    image_reference_descriptions: tuple[str, ...]
    image_section_indices: tuple[int, ...]


@dataclass(frozen=True)
class KbLookup:
    """The entries found for a set of urls, and the urls the KB lacks (sorted), so a missing page
    is reported, not silently dropped. ``scanned``: KB entries streamed before the lookup ended."""

    entries: dict[str, WikiEntry]
    absent: tuple[str, ...]
    scanned: int

    def report(self, keep: int = 5) -> dict[str, Any]:
        return {
            "found": len(self.entries),
            "absent": len(self.absent),
            "examples": list(self.absent[:keep]),
        }


class _Prefixed:
    """A binary reader that first returns bytes already read (to look at the first token)."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.rest.read(n)
        if n is None or n < 0:
            out, self.head = self.head + self.rest.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out


@contextmanager
def _open(source: str | Path | BinaryIO) -> Iterator[tuple[BinaryIO, str]]:
    """A binary stream over the KB JSON and its name for messages; an open file is not closed."""
    if not isinstance(source, str | Path):
        yield source, getattr(source, "name", "<stream>")
        return
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: no such knowledge-base file")
    if path.suffix != ".zip":
        with path.open("rb") as f:
            yield f, str(path)
        return
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.namelist() if m.endswith(".json")]
        if len(members) != 1:
            raise DataError(f"{path}: expected one .json member, found {members}")
        with archive.open(members[0]) as f:
            yield f, f"{path}:{members[0]}"


def _as_object_stream(f: BinaryIO, name: str) -> _Prefixed:
    """Check that the stream holds a JSON object (ijson would yield nothing for a list); a UTF-8
    byte-order mark, which the parser would reject, is dropped."""
    head = b""
    while not head.removeprefix(_BOM).lstrip(_WHITESPACE):
        chunk = f.read(4096)
        if not chunk:
            raise DataError(f"{name}: empty, expected a JSON object of url -> entry")
        head += chunk
    head = head.removeprefix(_BOM)
    if not head.lstrip(_WHITESPACE).startswith(b"{"):
        raise DataError(f"{name}: expected a JSON object of url -> entry, found {head[:40]!r}")
    return _Prefixed(head, f)


def iter_kb_items(source: str | Path | BinaryIO) -> Iterator[tuple[str, Any]]:
    """The raw ``(url, entry)`` pairs in file order, one parsed entry in memory at a time."""
    with _open(source) as (f, name):
        last = None
        try:
            for last, value in ijson.kvitems(_as_object_stream(f, name), "", use_float=True):
                yield last, value
        except ijson.JSONError as e:
            after = "at the start" if last is None else f"after entry {last!r}"
            raise DataError(f"{name}: broken JSON {after}: {e}") from e


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def parse_entry(url: str, value: Any, where: str, bad: BadRows) -> WikiEntry | None:
    """A typed entry, or None when it breaks the format (recorded in ``bad`` under ``where``)."""
    if not isinstance(value, dict):
        bad.skip(where, "malformed_entry", f"expected an object, got {type(value).__name__}")
        return None
    fields = ("section_titles", "section_texts", "image_urls", "image_reference_descriptions")
    indices = value.get("image_section_indices")
    problems = [name for name in fields if not _strings(value.get(name))]
    if not isinstance(value.get("title"), str):
        problems.append("title")
    if not isinstance(indices, list) or not all(type(i) is int for i in indices):
        problems.append("image_section_indices")
    if problems:
        bad.skip(where, "malformed_entry", f"missing or mistyped {problems}")
        return None
    if len(value["section_titles"]) != len(value["section_texts"]):
        bad.skip(where, "malformed_entry", "section_titles and section_texts differ in length")
        return None
    images = {len(value[name]) for name in ("image_urls", "image_reference_descriptions")}
    if images != {len(indices)}:
        bad.skip(where, "malformed_entry", "image_urls / descriptions / indices differ in length")
        return None
    if value.get("url", url) != url:
        bad.skip(where, "url_mismatch", f"its url field is {value.get('url')!r}")
        return None
    return WikiEntry(url, value["title"], *(tuple(value[n]) for n in fields), tuple(indices))


def iter_kb(source: str | Path | BinaryIO, bad: BadRows) -> Iterator[WikiEntry]:
    """Every well-formed entry of the KB, streamed; bad entries are counted in ``bad``."""
    for url, value in iter_kb_items(source):
        entry = parse_entry(url, value, f"kb entry {url}", bad)
        if entry is not None:
            bad.read()
            yield entry


def lookup_kb(source: str | Path | BinaryIO, urls: Iterable[str], bad: BadRows) -> KbLookup:
    """One pass over the KB keeping the entries of ``urls``; it stops as soon as all are found.
    Only those entries are typed and checked; a needed entry that is malformed is a bad row and
    also listed as absent."""
    needed, entries, scanned = set(urls), {}, 0
    if not needed:
        return KbLookup({}, (), 0)
    with closing(iter_kb_items(source)) as items:  # closes the file at once when we stop early
        for url, value in items:
            scanned += 1
            if url in needed and url not in entries:
                entry = parse_entry(url, value, f"kb entry {url}", bad)
                if entry is not None:
                    bad.read()
                    entries[url] = entry
                    if len(entries) == len(needed):
                        break
    return KbLookup(entries, tuple(sorted(needed - entries.keys())), scanned)
