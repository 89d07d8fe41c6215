"""Cheaper XLA compilation for tests whose time is almost all compilation.

XLA still runs its HLO pipeline (sharding propagation, SPMD partitioning, fusion); what is cut
is mainly LLVM's optimisation of the CPU code it emits. The tests that use it compare programs
compiled alike (sharded vs one device, resumed vs uninterrupted, re-evaluated vs first
evaluation) or check wiring, not the speed or the last bits of optimised code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import jax

# What ``jax_disable_most_optimizations`` sets on CPU, as XLA options (also valid as a jit's
# ``compiler_options``).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@contextlib.contextmanager
def fast_compile() -> Iterator[None]:
    """The same options for every compilation inside (for jits made inside library code).

    Code compiled this way may differ from optimised code in the last bits, so JAX's caches are
    emptied on the way out: no later test of the process reuses an executable made here."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
        jax.clear_caches()


def subprocess_env(cache: Path) -> dict[str, str]:
    """The environment of a ``jaxrank`` command run by a test: one CPU device, FAST_COMPILE,
    and a persistent compilation cache in ``cache``. Runs of one test that share ``cache``
    compile the same programs, so only the first one pays for it."""
    flags = ["--xla_force_host_platform_device_count=1"]
    flags += [f"--{k}={str(v).lower()}" for k, v in FAST_COMPILE.items()]
    return dict(
        os.environ,
        XLA_FLAGS=" ".join(flags),
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
