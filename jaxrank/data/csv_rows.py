"""The records of a CSV file, read so that damage is named instead of guessed around.

- Bytes that are not UTF-8 end the reading with a ``DataError`` naming the file, the row and
  the line: decoding line by line (not by the text layer's 8 KiB blocks) puts the number on the
  right line.
- Quotes are read strictly (``csv``'s ``strict``): a quote that is opened and never closed would
  otherwise swallow every following row into one cell, silently when the swallowed text happens
  to leave the right cell count. Strict reading stops where the swallowed text runs into the
  next quote or the end of the file; the error names the row and line where the cell opened.
  (A swallow that ends exactly on a stray quote before a line end is indistinguishable from a
  multi-line cell, which the format allows.)
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from jaxrank.data.errors import DataError

_FIELD_LIMIT = 1 << 24  # E-VQA's evidence cells can exceed csv's default 128 KiB


class _NotUtf8(Exception):
    def __init__(self, line: int, error: UnicodeDecodeError):
        super().__init__(str(error))
        self.line, self.error = line, error


def _decoded(f: BinaryIO) -> Iterator[str]:
    for number, raw in enumerate(f, start=1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise _NotUtf8(number, e) from None


def csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line, cells)`` of each non-blank record of ``path``, the header first; ``line`` is
    where the record starts (1-based). Data rows are numbered from 0 after the header in errors,
    as the readers number them."""
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    with path.open("rb") as f:
        reader = csv.reader(_decoded(f), strict=True)
        records, start = 0, 1
        try:
            for cells in reader:
                if cells:
                    records += 1
                    yield start, cells
                start = reader.line_num + 1
        except _NotUtf8 as e:
            what = "the header" if records == 0 else f"row {records - 1}"
            raise DataError(
                f"{path} {what} (line {e.line}): not UTF-8 text ({e.error.reason} at byte "
                f"{e.error.start} of the line); re-encode the file as UTF-8"
            ) from e.error
        except csv.Error as e:
            what = "the header" if records == 0 else f"row {records - 1}"
            if reader.line_num > start:
                raise DataError(
                    f"{path} {what} (line {start}): a quoted cell opened here is still open at "
                    f"line {reader.line_num} ({e}): a closing quote is missing, and the rows "
                    "after it would be read as one cell"
                ) from e
            raise DataError(f"{path} {what} (line {start}): not readable as CSV: {e}") from e
