"""Index files: safetensors with the index's description and a checksum in the header metadata.

The file holds two tensors, ``ids`` (int64 ``[count]``) and ``vectors`` (``[count, dim]``,
float32 or bfloat16, stored values: unit rows for cosine), so any safetensors reader can open
it. The header's ``__metadata__`` holds ``format``, ``version``, ``dim``, ``count``,
``metric``, ``dtype``, ``normalized`` and ``checksum``: sha256 over the other metadata fields
and every data byte, so a changed byte anywhere, or a metric edited in the header, is caught.

Rows are written and read in chunks, so saving or loading never needs a host copy of the
whole database. The file appears under its final name only once complete (temporary file,
fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import ml_dtypes
import numpy as np

from jaxrank.search.errors import SearchError

FORMAT = "jaxrank.index"
VERSION = "1"
DTYPES = {"float32": ("F32", np.dtype("<f4")), "bfloat16": ("BF16", np.dtype(ml_dtypes.bfloat16))}
_PLACEHOLDER = "sha256:" + "0" * 64
_MAX_HEADER = 1 << 20


class IndexMeta(NamedTuple):
    """What an index file says about its contents."""

    dim: int
    count: int
    metric: str
    dtype: str
    normalized: bool


def _fields(meta: IndexMeta) -> dict[str, str]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "dim": str(meta.dim),
        "count": str(meta.count),
        "metric": meta.metric,
        "dtype": meta.dtype,
        "normalized": "true" if meta.normalized else "false",
    }


def _start_hash(fields: dict[str, str]):
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode())


def _header(meta: IndexMeta, checksum: str) -> bytes:
    code, dtype = DTYPES[meta.dtype]
    ids_end = 8 * meta.count
    header = {
        "__metadata__": {**_fields(meta), "checksum": checksum},
        "ids": {"dtype": "I64", "shape": [meta.count], "data_offsets": [0, ids_end]},
        "vectors": {
            "dtype": code,
            "shape": [meta.count, meta.dim],
            "data_offsets": [ids_end, ids_end + meta.count * meta.dim * dtype.itemsize],
        },
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_index(
    path: str | Path, meta: IndexMeta, ids: np.ndarray, chunks: Iterable[np.ndarray]
) -> None:
    """Write ``ids`` and the ``[rows, dim]`` vector ``chunks`` (``meta.count`` rows in all)."""
    path = Path(path)
    if meta.dtype not in DTYPES:
        raise SearchError(f"cannot store dtype {meta.dtype!r}; expected one of {list(DTYPES)}")
    _, dtype = DTYPES[meta.dtype]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    digest = _start_hash(_fields(meta))
    try:
        with open(tmp, "wb") as f:
            f.write(_header(meta, _PLACEHOLDER))
            data = np.ascontiguousarray(ids, dtype="<i8").tobytes()
            digest.update(data)
            f.write(data)
            written = 0
            for chunk in chunks:
                data = np.ascontiguousarray(chunk, dtype=dtype).tobytes()
                digest.update(data)
                f.write(data)
                written += len(chunk)
            if written != meta.count:
                raise SearchError(f"wrote {written} rows to {path}, expected {meta.count}")
            f.seek(0)
            f.write(_header(meta, "sha256:" + digest.hexdigest()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _not_index(path: Path, why: str) -> SearchError:
    return SearchError(f"{path} is not a readable jaxrank index: {why}")


def _read_header(path: Path, f) -> tuple[dict, int]:
    raw = f.read(8)
    if len(raw) < 8:
        raise _not_index(path, f"the file is only {len(raw)} bytes long")
    (size,) = struct.unpack("<Q", raw)
    if size > _MAX_HEADER:
        raise _not_index(path, f"its header claims {size} bytes")
    text = f.read(size)
    if len(text) < size:
        raise SearchError(f"index file {path} is truncated inside its header")
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _not_index(path, f"the header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise _not_index(path, "the header is not a JSON object")
    return header, 8 + size


def _parse_meta(path: Path, header: dict) -> tuple[IndexMeta, str]:
    fields = header.get("__metadata__") or {}
    if fields.get("format") != FORMAT:
        raise _not_index(path, f"its metadata has no format={FORMAT!r}")
    if fields.get("version") != VERSION:
        raise _not_index(path, f"format version {fields.get('version')!r}, expected {VERSION}")
    try:
        meta = IndexMeta(
            dim=int(fields["dim"]),
            count=int(fields["count"]),
            metric=fields["metric"],
            dtype=fields["dtype"],
            normalized=fields["normalized"] == "true",
        )
        checksum = fields["checksum"]
    except (KeyError, ValueError) as e:
        raise _not_index(path, f"its metadata is incomplete ({e})") from e
    if meta.dtype not in DTYPES:
        raise _not_index(path, f"unknown dtype {meta.dtype!r}")
    if {k: v for k, v in fields.items() if k != "checksum"} != _fields(meta):
        raise _not_index(path, "its metadata fields are malformed")
    if header != json.loads(_header(meta, checksum)[8:]):
        raise _not_index(path, "its tensors do not match the dim and count in its metadata")
    return meta, checksum


class IndexReader:
    """An open index file, checked up to its data: metadata parsed, size verified.

    ``ids()`` then ``chunks()`` stream the data in file order; the checksum is verified when
    the last chunk has been read, and a mismatch raises before ``chunks()`` finishes.
    """

    def __init__(self, path: str | Path, metric: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise SearchError(f"index file {self.path} does not exist")
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close() / __exit__
        try:
            header, self._data_start = _read_header(self.path, self._file)
            self.meta, self._checksum = _parse_meta(self.path, header)
            self._check_size()
        except BaseException:
            self._file.close()
            raise
        if metric is not None and metric != self.meta.metric:
            self._file.close()
            raise SearchError(
                f"index {self.path} was built with metric {self.meta.metric!r}, not "
                f"{metric!r}; rebuild it with metric {metric!r} or search it as "
                f"{self.meta.metric!r}"
            )
        self._digest = _start_hash(_fields(self.meta))

    def _check_size(self) -> None:
        itemsize = DTYPES[self.meta.dtype][1].itemsize
        expected = self._data_start + self.meta.count * (8 + self.meta.dim * itemsize)
        actual = os.fstat(self._file.fileno()).st_size
        if actual < expected:
            raise SearchError(
                f"index file {self.path} is truncated: {actual} bytes, its header describes "
                f"{expected}"
            )
        if actual > expected:
            raise SearchError(
                f"index file {self.path} has {actual - expected} unexpected trailing bytes"
            )

    def _read(self, n_bytes: int) -> bytes:
        data = self._file.read(n_bytes)
        if len(data) != n_bytes:
            raise SearchError(f"index file {self.path} was truncated while being read")
        self._digest.update(data)
        return data

    def ids(self) -> np.ndarray:
        return np.frombuffer(self._read(8 * self.meta.count), dtype="<i8").astype(np.int64)

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        _, dtype = DTYPES[self.meta.dtype]
        row_bytes = self.meta.dim * dtype.itemsize
        for start in range(0, self.meta.count, rows):
            n = min(rows, self.meta.count - start)
            data = self._read(n * row_bytes)
            yield np.frombuffer(data, dtype=dtype).reshape(n, self.meta.dim)
        actual = "sha256:" + self._digest.hexdigest()
        if actual != self._checksum:
            raise SearchError(
                f"index file {self.path} failed its checksum ({actual[:19]}... != "
                f"{self._checksum[:19]}...): it was changed or damaged after it was written"
            )

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
