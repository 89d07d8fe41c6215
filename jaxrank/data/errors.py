"""What a reader does with bad data: a clear error, or, for bad rows of a large file, skip and
count them, naming the first few in the report (``strict`` turns the first into an error).

Every reader under ``jaxrank/data`` uses these, so a run's report reads the same whatever the
benchmark: ``{"read": N, "skipped": {reason: count}, "examples": [...]}``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class DataError(ValueError):
    """Data that is not there, not readable as asked, or too small for the protocol.

    The message names the file (and row or key) involved and what was expected.
    """


class BadRows:
    """Skipped rows of one reading, counted by reason, the first ``keep`` of them named.

    ``skip(where, reason, detail)`` records a bad row (``where``: file and row, ``reason``: a
    short category such as ``missing_image``); in ``strict`` mode it raises ``DataError``
    instead. ``read()`` counts a row that was kept.
    """

    def __init__(self, strict: bool = False, keep: int = 5):
        self.strict, self.keep = strict, keep
        self.kept = 0
        self.reasons: Counter[str] = Counter()
        self.examples: list[str] = []

    def read(self, n: int = 1) -> None:
        self.kept += n

    def skip(self, where: str, reason: str, detail: str) -> None:
        message = f"{where}: {reason}: {detail}"
        if self.strict:
            raise DataError(message)
        self.reasons[reason] += 1
        if len(self.examples) < self.keep:
            self.examples.append(message)

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def report(self) -> dict[str, Any]:
        return {"read": self.kept, "skipped": dict(self.reasons), "examples": list(self.examples)}
