"""The collectives a compiled program runs and the bytes they move, read from its HLO.

A step's communication is decided by XLA's SPMD partitioner, not written by hand, so the check
on any formula for it is the compiled program itself: each all-reduce, all-gather,
reduce-scatter, all-to-all and collective-permute with its result shape. ``wire_bytes`` turns a
payload into what each device sends under the bandwidth-optimal (ring) algorithms.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(r"=\s*(?P<shape>\(.*?\)|\S+)\s+(?P<kind>" + "|".join(KINDS) + r")(?:-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>pred|[a-z]+\d+)\[(?P<dims>[\d,]*)\]")


# HLO element types -> numpy names of the same width.
_NUMPY = {"bf16": "float16", "f16": "float16", "f32": "float32", "f64": "float64"}
_NUMPY.update(
    {f"{k}{b}": f"{n}{b}" for k, n in (("s", "int"), ("u", "uint")) for b in (8, 16, 32, 64)}
)


def _bytes(shape: str, asynchronous: bool) -> int:
    arrays = [(m["dtype"], m["dims"]) for m in _ARRAY.finditer(shape)]
    if asynchronous and len(arrays) > 1:  # a -start op's tuple ends with its result
        arrays = arrays[-1:]
    total = 0
    for dtype, dims in arrays:
        size = int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
        total += size * (1 if dtype == "pred" else np.dtype(_NUMPY.get(dtype, dtype)).itemsize)
    return total


def collective_payloads(hlo_text: str) -> Counter[str]:
    """Result bytes of each kind of collective in ``hlo_text`` (``compiled.as_text()``, one
    device's program), each op counted once: a collective inside a loop body runs once per
    iteration, which the caller multiplies in."""
    payloads: Counter[str] = Counter()
    for line in hlo_text.splitlines():
        match = _OP.search(line)
        if match:
            asynchronous = f"{match['kind']}-start(" in line
            payloads[match["kind"]] += _bytes(match["shape"], asynchronous)
    return payloads


def wire_bytes(kind: str, payload: int, devices: int) -> float:
    """Bytes each device sends for one collective of ``payload`` result bytes over ``devices``
    (ring all-reduce 2 (n-1)/n x size, all-gather (n-1)/n x result, reduce-scatter (n-1) x
    result, all-to-all (n-1)/n x size, a permute its whole payload)."""
    n = devices
    factor = {
        "all-reduce": 2 * (n - 1) / n,
        "all-gather": (n - 1) / n,
        "reduce-scatter": n - 1,
        "all-to-all": (n - 1) / n,
        "collective-permute": 1.0,
    }[kind]
    return factor * payload
