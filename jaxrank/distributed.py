"""Joining a multi-process run (a TPU pod slice, or several CPU processes) before JAX starts.

Every process of a multi-host run calls ``jax.distributed.initialize`` once, before any JAX
computation, so that ``jax.devices()`` lists every host's devices and one jitted step spans
them all. Where the processes come from:

- ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``: set by hand or by a launcher, on any platform (CPU processes too);
- none of them on a Cloud TPU VM: JAX reads the slice's workers from the VM's metadata;
- none of them elsewhere: one process, nothing to join.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import jax

COORDINATOR = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES = "JAX_NUM_PROCESSES"
PROCESS_ID = "JAX_PROCESS_ID"


class DistributedError(ValueError):
    """The environment describes a multi-process run incompletely or inconsistently."""


class Processes(NamedTuple):
    """Where this process belongs: process 0's ``host:port``, the count and its own id."""

    coordinator: str
    count: int
    process_id: int


def from_environment(environ: Mapping[str, str] = os.environ) -> Processes | None:
    """The run the environment variables describe; None when none of them is set. Half a
    description is an error: a process that silently ran alone would train a different model."""
    names = (COORDINATOR, NUM_PROCESSES, PROCESS_ID)
    values = {name: environ.get(name, "").strip() for name in names}
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise DistributedError(
            f"{', '.join(missing)} not set; a multi-process run needs all of "
            f"{', '.join(names)} (or none of them, for one process)"
        )
    try:
        count, process_id = int(values[NUM_PROCESSES]), int(values[PROCESS_ID])
    except ValueError:
        raise DistributedError(
            f"{NUM_PROCESSES}={values[NUM_PROCESSES]!r} and {PROCESS_ID}={values[PROCESS_ID]!r} "
            "must be integers"
        ) from None
    if count < 1 or not 0 <= process_id < count:
        raise DistributedError(f"{PROCESS_ID}={process_id} must be in [0, {NUM_PROCESSES}={count})")
    if ":" not in values[COORDINATOR]:
        raise DistributedError(
            f"{COORDINATOR}={values[COORDINATOR]!r} must be host:port (of process 0)"
        )
    return Processes(values[COORDINATOR], count, process_id)


def _fresh_cloud_tpu() -> bool:
    """On a Cloud TPU VM (JAX's own test at import: chips and libtpu present), where
    ``jax.distributed.initialize()`` finds the slice's other hosts by itself, and JAX not yet
    started (a caller that already computed, e.g. a test calling ``cli.main``, keeps its
    devices)."""
    from jax._src import cloud_tpu_init, xla_bridge

    on_tpu = bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))
    return on_tpu and not xla_bridge.backends_are_initialized()


def initialize(environ: Mapping[str, str] = os.environ) -> bool:
    """Join the run the environment describes (see the module docstring); True when this
    process is part of a multi-process run. Call once, before any JAX computation."""
    if jax.distributed.is_initialized():
        return True
    processes = from_environment(environ)
    if processes is not None:
        # Cross-process collectives on CPU (the default in JAX 0.10, named for older ones).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(*processes)
        return True
    if _fresh_cloud_tpu():
        jax.distributed.initialize()
        return True
    return False


def is_primary() -> bool:
    """Whether this process writes the run's shared files (logs, reports, index files); the
    others compute the same values and must not race it for the same paths."""
    return jax.process_index() == 0
