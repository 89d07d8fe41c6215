"""What the benchmarks record about the machine: the CPU, and whether anyone else used it while
they timed (on a shared 2-core VM a neighbour's job halves the numbers)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_field(key: str, default: str = "") -> str:
    """The first ``key`` line of /proc/cpuinfo ('model name', 'flags', ...)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return default


def cpu_model() -> str:
    return cpu_field("model name", platform.processor())


def cpu_seconds() -> tuple[dict[str, float], float]:
    """Busy and stolen CPU seconds of the whole machine (/proc/stat), and of this process."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    busy = (user + nice + system + irq + softirq) / tick
    own = sum(os.times()[:2])
    return {"busy": busy, "steal": steal / tick}, own


def contention(
    before: tuple[dict[str, float], float], after: tuple[dict[str, float], float], wall_s: float
) -> dict[str, float]:
    """CPU seconds other processes and the hypervisor took between two ``cpu_seconds()``."""
    (machine_before, own_before), (machine_after, own_after) = before, after
    return {
        "busy_cpu_s_by_others": (machine_after["busy"] - machine_before["busy"])
        - (own_after - own_before),
        "steal_cpu_s": machine_after["steal"] - machine_before["steal"],
        "own_cpu_s": own_after - own_before,
        "wall_s": wall_s,
    }
