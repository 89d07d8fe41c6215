"""The run folder's logs: metrics.jsonl, TensorBoard events and a progress bar.

Every training row carries the throughput TPU users read: seconds per step with compilation
taken out (``compile_s`` says how much there was), samples per second per device, and, given
the step's matmul FLOPs, TFLOP/s per device and MFU against the chip's table peak (``mfu``,
on chips in ``throughput.PEAK_BF16_TFLOPS``) and against this machine's measured matmul rate
(``mfu_measured``, on any machine).

Logs are resume-aware: reopening at step s drops every record after s (metrics.jsonl rows and
TensorBoard events via ``purge_step``), so a killed-and-resumed run leaves the same logs as an
uninterrupted one. In a multi-process run only process 0 writes them (every process computes
the same rows).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from jaxrank.distributed import is_primary
from jaxrank.perf import compile_clock, throughput
from jaxrank.train.workdir import WorkdirError


def _scalar(v: Any) -> float | int:
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else float(v.mean())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a run folder's JSON-lines log. A last line cut short by a kill is dropped
    (the only damage a run leaves); any other line that is not a JSON object with an integer
    ``step`` (when it has one) is a WorkdirError naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise WorkdirError(f"{path} cannot be read as text ({e}); move it aside to resume") from e
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step", 0), int):
            raise WorkdirError(
                f"{path}:{number}: expected a JSON object with an integer 'step', got "
                f"{line[:80]!r}; fix or delete that line to resume"
            )
        rows.append(row)
    return rows


def _truncate_jsonl(path: Path, last_step: int) -> None:
    kept = [r for r in read_jsonl(path) if r.get("step", -1) <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


class RunLog:
    """Appends metric rows for one run; ``start_step`` is where training (re)starts.

    ``flops_per_step`` (the whole step's, over all devices; 0 until known) is set by the
    trainer, which counts it from the first step's program."""

    def __init__(
        self, workdir: str | Path, start_step: int, total_steps: int, samples_per_step: int = 0
    ):
        self.workdir = Path(workdir)
        self.samples_per_step = samples_per_step
        self.flops_per_step = 0
        self.devices = jax.device_count()
        self.peak_tflops = throughput.peak_tflops(jax.devices()[0].device_kind)
        # Measured (once per process) before the clocks start, so neither its run nor its
        # compilation lands in a logged stretch.
        self.machine_peak_tflops = throughput.machine_peak_tflops()
        self.metrics_path = self.workdir / "metrics.jsonl"
        self._primary = is_primary()
        if self._primary:
            _truncate_jsonl(self.metrics_path, start_step)
        self._writer = SummaryWriter(
            str(self.workdir / "tb"), purge_step=start_step + 1, write_to_disk=self._primary
        )
        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc="train",
            dynamic_ncols=True,
            disable=not self._primary,
        )
        self._last_time = time.perf_counter()
        self._last_compile = compile_clock.seconds()
        self._last_step = start_step

    def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "train") -> dict:
        """Record one row (arrays reduced to scalars) and advance the progress bar."""
        now = time.perf_counter()
        row: dict[str, Any] = {"step": int(step)}
        row.update({f"{prefix}/{k}": _scalar(v) for k, v in metrics.items()})
        compiled = compile_clock.seconds()
        if step > self._last_step and prefix == "train":
            row.update(self._throughput(step - self._last_step, now, compiled))
        if self._primary:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)
        if prefix == "train":
            self._bar.update(step - self._last_step)
            if row.get("train/compile_s", 0.0) >= 0.1:
                self._bar.write(f"step {step}: {row['train/compile_s']:.1f} s compiling")
            shown = {
                k.split("/", 1)[1]: f"{row[k]:.4g}"
                for k in ("train/loss", "train/samples_per_s", "train/tflops_per_device")
                if k in row
            }
            self._bar.set_postfix(shown, refresh=False)
            self._last_time, self._last_step, self._last_compile = now, step, compiled
        return row

    def _throughput(self, steps: int, now: float, compiled: float) -> dict[str, float]:
        compile_s = compiled - self._last_compile
        step_s = max(now - self._last_time - compile_s, 1e-9) / steps
        row = {"train/step_s": step_s}
        if compile_s > 0:
            row["train/compile_s"] = compile_s
        if self.samples_per_step:
            row["train/samples_per_s"] = self.samples_per_step / step_s
            row["train/samples_per_s_per_device"] = row["train/samples_per_s"] / self.devices
        if self.flops_per_step:
            per_device, mfu = throughput.utilisation(
                self.flops_per_step, step_s, self.devices, self.peak_tflops
            )
            row["train/tflops_per_device"] = per_device
            if mfu is not None:
                row["train/mfu"] = mfu
            row["train/mfu_measured"] = per_device / self.machine_peak_tflops
        return row

    def close(self) -> None:
        self._bar.close()
        self._writer.close()
