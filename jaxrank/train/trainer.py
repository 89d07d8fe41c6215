"""The host loop around one jitted step: feed batches, log every N steps, checkpoint, resume.

The host touches device values only at log and checkpoint steps, so the device queue stays full.
Resuming restores the train state and the data iterator's position, so a killed run continues
with exactly the batches and random numbers it would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrank.perf import flop_count
from jaxrank.train.checkpoint import Checkpointer
from jaxrank.train.runlog import RunLog
from jaxrank.train.step import TrainState


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


def _mean_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([np.asarray(r[k]) for r in rows])) for k in rows[0]}


def fit(
    *,
    workdir: str | Path,
    state: TrainState,
    step_fn: Callable[[TrainState, Any, Any], tuple[TrainState, dict[str, jax.Array]]],
    data: Iterable[Any],
    place_batch: Callable[[Any], Any],
    total_steps: int,
    log_every: int,
    checkpoint_every: int,
    frozen: Any = None,
    samples_per_step: int = 0,
    profile_steps: tuple[int, int] | None = None,
    flops_per_step: int | None = None,
) -> TrainState:
    """Train until ``total_steps`` from the latest checkpoint in ``workdir`` (if any).

    ``data`` is a grain dataset (its iterator has ``get_state``/``set_state``); ``step_fn`` is
    jitted and donates its state argument. ``profile_steps=(first, last)`` writes a JAX
    profiler trace of those steps to ``<workdir>/profile`` (TensorBoard's profile plugin or
    Perfetto read it); pick steps after the first, which compiles.

    The log's TFLOP/s and MFU use ``flops_per_step``; by default it is counted from the first
    step's program (``flop_count``). A host-driven step that cannot be traced whole counts
    itself: it exposes ``matmul_flops``, set by its first call.
    """
    workdir = Path(workdir)
    checkpointer = Checkpointer(workdir / "checkpoints")
    iterator = iter(data)
    start = 0
    if checkpointer.latest_step() is not None:
        start, state, extra = checkpointer.restore(state)
        iterator.set_state(extra["iterator"])
    log = RunLog(workdir, start, total_steps, samples_per_step)

    def check_finite(step: int) -> None:
        bad = int(state.first_bad_step)
        if bad >= 0:
            last = checkpointer.latest_step()
            kept = f"step {last} in {checkpointer.directory}" if last is not None else "none"
            raise NonFiniteLossError(
                f"the loss or a gradient became NaN/inf at step {bad + 1}; training stopped at "
                f"step {step} without applying that update. Last good checkpoint: {kept}. "
                "Lower train.learning_rate, or check the inputs of that step."
            )

    pending: list[dict[str, jax.Array]] = []
    try:
        if start == 0 and total_steps == 0:  # a model used as is (e.g. a pretrained scorer)
            checkpointer.save(0, state, {"iterator": iterator.get_state()})
        for step in range(start + 1, total_steps + 1):
            if profile_steps and step == profile_steps[0]:
                jax.profiler.start_trace(str(workdir / "profile"))
            batch = place_batch(next(iterator))
            if flops_per_step is None and not hasattr(step_fn, "matmul_flops"):
                flops_per_step = flop_count.matmul_flops(step_fn, state, batch, frozen)
            state, metrics = step_fn(state, batch, frozen)
            if flops_per_step is None:
                flops_per_step = step_fn.matmul_flops
            log.flops_per_step = flops_per_step
            if profile_steps and step == profile_steps[1]:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
            pending.append(metrics)
            last = step == total_steps
            if step % log_every == 0 or last:
                check_finite(step)
                row = _mean_metrics(jax.device_get(pending))
                pending = []
                log.write(step, row)
            if step % checkpoint_every == 0 or last:
                check_finite(step)
                checkpointer.save(step, state, {"iterator": iterator.get_state()})
    finally:
        log.close()
        checkpointer.close()
    return state
