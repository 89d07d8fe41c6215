"""What the benchmarks record about the machine: the CPU, and whether anyone else used it while
they timed (on a shared 2-core VM a neighbour's job halves the numbers)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np


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


def machine_info() -> dict[str, Any]:
    """What a jax-vs-torch benchmark depends on: CPU, cores, library versions and every
    thread setting."""
    import jax
    import torch
    import transformers

    cpu = cpu_model()
    flags = cpu_field("flags").split()
    return {
        "cpu": cpu,
        "cpu_vector_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))),
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_mkldnn": torch.backends.mkldnn.is_available(),
        "env": {
            k: os.environ.get(k)
            for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        },
    }


def write_sweep(path: str, script: str, args: Any, summary: Any, runs: list) -> None:
    """A seed sweep's JSON: the command that reproduces it, the machine, the summary table
    and every run."""
    import jax

    out = {
        "command": f"scripts/{script} "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v not in (None, [])),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
        },
        "summary": summary,
        "runs": runs,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path}")
