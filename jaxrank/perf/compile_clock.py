"""Seconds JAX spends compiling, from its own monitoring events.

A training loop's first step traces, lowers and compiles; later steps only do so when a shape
or a static argument changes (a recompilation worth seeing). Reading JAX's duration events
(tracing, lowering to MLIR, XLA's compile) separates that time from the step time without
touching the step: ``seconds()`` is the process's running total, so the compile time of any
stretch is a difference of two readings.
"""

from __future__ import annotations

import threading

from jax import monitoring

# Event names from jax._src.dispatch: trace to jaxpr, jaxpr to MLIR, XLA's backend compile.
COMPILE_EVENTS = frozenset(
    {
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    }
)

_lock = threading.Lock()
_total = 0.0


def _record(event: str, duration: float, **_: object) -> None:
    global _total
    if event in COMPILE_EVENTS:
        with _lock:
            _total += duration


monitoring.register_event_duration_secs_listener(_record)


def seconds() -> float:
    """Compile seconds of this process so far."""
    return _total
