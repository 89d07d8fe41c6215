"""Planning a setting before renting chips: compile its programs from abstract arguments (no
allocation, no run) and read XLA's own figures, then hold them against each chip's memory.

Arguments are ``jax.ShapeDtypeStruct``s laid out on the mesh (``abstract``, ``rows``), so the
compiled program is the one a real run would get, partitioned per device. XLA reports per
device: argument, output and temporary bytes and how many output bytes reuse a donated argument
(``Compiled``), and its FLOP count. On CPU devices compilation skips LLVM's optimisation of the
emitted code (``FAST_COMPILE``), which changes neither the buffers nor the FLOPs; a TPU
topology's devices (``tpu_target``) get XLA's TPU compiler as a real run would.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrank.parallel import batch_sharding
from jaxrank.perf.memory import tree_bytes
from jaxrank.perf.throughput import memory_gib

GIB = 2**30
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# The planner's chip names -> their device_kind in perf/throughput's tables.
CHIPS = {
    "v4": "TPU v4",
    "v5e": "TPU v5 lite",
    "v5p": "TPU v5p",
    "v6e": "TPU v6 lite",
    "h100": "NVIDIA H100",
}


@dataclasses.dataclass(frozen=True)
class Compiled:
    """XLA's figures for one compiled program, bytes per device."""

    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    flops: float
    compile_s: float
    refusal: str = ""  # the compiler's out-of-memory message, when it refused the program

    @property
    def peak(self) -> int:
        """What the program needs on a device: arguments, outputs that do not reuse a donated
        argument, and temporaries."""
        return self.arguments + self.outputs - self.aliased + self.temporaries

    def as_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "peak": self.peak}


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# XLA:TPU's refusals: "... required for HLO temporaries (24.00G) exceeds available HBM ..."
# or "Used 20.51G of 15.48G hbm. Exceeded hbm capacity by 5.03G."
_TEMPORARIES = re.compile(r"temporaries \(([\d.]+)([KMGT]?)\)")
_USED = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm")


def _gib(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit])


def refused(error: Exception, arguments: int, seconds: float, capacity: float) -> Compiled:
    """A program the compiler would not build because it exceeds the chip's ``capacity``
    bytes (XLA:TPU refuses those), with the bytes its message says were needed (the
    temporaries beside the arguments, or the total it used), or else just over ``capacity``:
    its peak is a lower bound that does not fit."""
    message = str(error).splitlines()[0]
    temporaries = int(capacity) + 1 - arguments
    if found := _TEMPORARIES.search(message):
        temporaries = max(temporaries, _gib(*found.groups()))
    elif found := _USED.search(message):
        temporaries = max(temporaries, _gib(*found.groups()[:2]) - arguments)
    return Compiled(arguments, 0, 0, temporaries, 0.0, seconds, refusal=message)


def compile_program(fn: Callable, args: Sequence[Any], mesh: Mesh) -> Compiled:
    """Lower and compile jitted ``fn`` on abstract ``args`` under ``mesh``; XLA's figures and
    the seconds it took (tracing, lowering and compiling). A program the compiler refuses for
    want of memory comes back ``refused``, not raised: that is an answer."""
    options = FAST_COMPILE if mesh.devices.flat[0].platform == "cpu" else {}
    started = time.perf_counter()
    try:
        with jax.set_mesh(mesh):
            compiled = fn.lower(*args).compile(compiler_options=options)
    except jax.errors.JaxRuntimeError as error:
        if not str(error).startswith("RESOURCE_EXHAUSTED"):
            raise
        capacity = (memory_gib(mesh.devices.flat[0].device_kind) or 0) * GIB
        return refused(error, tree_bytes(args), time.perf_counter() - started, capacity)
    seconds = time.perf_counter() - started
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return Compiled(
        arguments=memory.argument_size_in_bytes,
        outputs=memory.output_size_in_bytes,
        aliased=memory.alias_size_in_bytes,
        temporaries=memory.temp_size_in_bytes,
        flops=float(cost.get("flops", 0.0)),
        compile_s=seconds,
    )


def abstract(tree: Any, mesh: Mesh) -> Any:
    """``jax.ShapeDtypeStruct``s of ``tree`` (``nnx.eval_shape``'s, say) placed on ``mesh``:
    each leaf keeps its sharding's partition spec, a leaf without one is replicated."""

    def place(leaf):
        spec = getattr(getattr(leaf, "sharding", None), "spec", PartitionSpec())
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(mesh, spec))

    return jax.tree.map(place, tree)


def rows(mesh: Mesh, shape: Sequence[int], dtype: Any) -> jax.ShapeDtypeStruct:
    """An abstract batch leaf: leading axis split over ``data``."""
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=batch_sharding(mesh, len(shape)))


def chip_memory(chip: str) -> float:
    """Bytes of memory per chip of a planner chip name (``CHIPS``)."""
    if chip not in CHIPS:
        raise ValueError(f"unknown chip {chip!r}; expected one of {sorted(CHIPS)}")
    gib = memory_gib(CHIPS[chip])
    assert gib is not None, CHIPS[chip]
    return gib * GIB


def verdict(peak: float, chip: str) -> dict[str, Any]:
    """Whether ``peak`` bytes fit one ``chip`` and the headroom left (negative: the shortfall),
    in GiB."""
    memory = chip_memory(chip)
    return {
        "chip": chip,
        "memory_gib": memory / GIB,
        "fits": peak <= memory,
        "headroom_gib": (memory - peak) / GIB,
    }


def largest_batch(peak_of: Callable[[int], float], capacity: float, limit: int = 4096) -> int:
    """The largest batch ``b`` <= ``limit`` with ``peak_of(b) <= capacity`` (0 when not even
    1 fits), for a ``peak_of`` that grows with ``b``: doubling, then bisection."""
    if peak_of(1) > capacity:
        return 0
    low = 1
    while low < limit and peak_of(min(2 * low, limit)) <= capacity:
        low = min(2 * low, limit)
    high = limit + 1 if low == limit else min(2 * low, limit)  # high: known not to fit
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if peak_of(middle) <= capacity else (low, middle)
    return low
