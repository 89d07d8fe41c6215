"""Wall-clock timing of jitted calls: compile once, then the median of several runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def milliseconds(fn: Callable[..., Any], *args: Any, repeats: int = 5) -> float:
    """Median milliseconds of ``fn(*args)`` to a finished result, excluding the first call
    (compilation). ``fn`` must not donate its arguments."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
