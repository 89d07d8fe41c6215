"""The planner's time model: how long one step of a stage should take on a chip, before anyone
rents one. Each program's matmul FLOPs are counted from its jaxpr (``flop_count``: scanned
layers and loops included) and run at ``MFU`` of the chip's bf16 peak; a decode loop also
reads the resident weights it uses from HBM once per token, at ``HBM_EFFICIENCY`` of the
chip's bandwidth (docs/SCALING.md's model of the r-GRPO step). Programs of a stage run one
after another, so their times add.

A ``PlannedSetting`` may name its loops: ``while_trips(name)``, the trips of ``name``'s while
loops (a decode's new tokens, a search's blocks; 1 when absent), and ``decoders``, the
programs whose loop streams the weights.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxrank.perf import plan
from jaxrank.perf.flop_count import matmul_flops
from jaxrank.perf.throughput import hbm_gbps, peak_tflops

MFU = 0.4
HBM_EFFICIENCY = 0.8


def while_trips(setting: Any, name: str) -> int:
    trips = getattr(setting, "while_trips", None)
    return trips(name) if trips else 1


def program_flops(setting: Any, name: str, b: int) -> float:
    """Matmul FLOPs per device of ``name`` at ``b`` rows per data shard."""
    fn, args = setting.program(name, b)
    with jax.set_mesh(setting.mesh):
        total = matmul_flops(fn, *args, while_trips=while_trips(setting, name))
    return total / setting.mesh.devices.size


def program_seconds(setting: Any, name: str, b: int, flops: float, chip: str) -> dict[str, float]:
    """``name``'s compute seconds on ``chip`` and, for a decoder, its weight-streaming
    seconds."""
    kind = plan.CHIPS[chip]
    compute = flops / (peak_tflops(kind) * 1e12 * MFU)
    stream = 0.0
    if name in getattr(setting, "decoders", ()):
        weights = setting.estimate(name, b, 1).arguments
        read = sum(v for k, v in weights.items() if k != "batch")
        stream = while_trips(setting, name) * read / (hbm_gbps(kind) * 1e9 * HBM_EFFICIENCY)
    return {"compute_s": compute, "weights_stream_s": stream, "seconds": compute + stream}
