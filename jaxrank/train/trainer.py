"""The host loop around one jitted step: feed batches, log every N steps, checkpoint, resume.

The host touches device values only at log and checkpoint steps, so the device queue stays full.
Resuming restores the train state and the data iterator's position, so a killed run continues
with exactly the batches and random numbers it would have seen.

A checkpoint is *good* when its parameters and optimizer state are finite and the step taken
from it had a finite loss and finite gradients: training can continue from it. The step's guard
(``step.py``) freezes the state at the first non-finite loss or gradient; the host sees it at
the next log or checkpoint step and stops. Every checkpoint saved before the one the failing step
started from has passed the test; that one (if it was saved) has not, so it is moved to
``<workdir>/diverged/<step>`` and the run folder's latest checkpoint, the one a resume or an
``eval`` reads, is the last good one. A state that is itself non-finite is never saved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrank.distributed import is_primary
from jaxrank.perf import flop_count
from jaxrank.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    describe_leaves,
    nonfinite_leaves,
)
from jaxrank.train.runlog import RunLog
from jaxrank.train.step import TrainState

GOOD_CHECKPOINT_RULE = (
    "a checkpoint is good when its parameters and optimizer state are finite and the step "
    "taken from it had a finite loss and finite gradients"
)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss, gradient, parameter or optimizer state."""


def _diverged(checkpointer: Checkpointer, workdir: Path, problem: str, suspect: int | None) -> str:
    """The message of a stopped run; moves checkpoint ``suspect`` (the one the failing step
    started from, which fails the rule) out of the way when it was saved."""
    moved, steps = "", checkpointer.all_steps()
    if suspect in steps:
        destination = workdir / "diverged" / str(suspect)
        if is_primary():  # the processes of a multi-process run share the folder
            checkpointer.set_aside(suspect, destination)
        moved = f" The checkpoint of step {suspect} fails that test and was moved to {destination}."
    good = [s for s in steps if s != suspect]
    kept = f"step {good[-1]} in {checkpointer.directory}" if good else "none"
    return (
        f"{problem}. Last good checkpoint: {kept} ({GOOD_CHECKPOINT_RULE}).{moved} "
        "A resume of this workdir starts from that checkpoint; lower train.learning_rate "
        "(in a new --workdir), or check the inputs of the failing step."
    )


def _mean_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([np.asarray(r[k]) for r in rows])) for k in rows[0]}


def restore_position(iterator: Any, extra: dict[str, Any], checkpoint: Path) -> None:
    """Put the data iterator where the checkpoint's run left it; a saved position that the
    iterator cannot take (a damaged or foreign ``data`` item) is a ``CheckpointError``."""
    try:
        iterator.set_state(extra["iterator"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise CheckpointError(
            f"checkpoint {checkpoint}: its data iterator position cannot be restored "
            f"({type(e).__name__}: {e}); expected the state the run's grain iterator saved"
        ) from e


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
        restore_position(iterator, extra, checkpointer.directory / str(start))
    log = RunLog(workdir, start, total_steps, samples_per_step)

    def check_finite(step: int) -> None:
        bad = int(state.first_bad_step)  # steps taken before the failing one
        if bad >= 0:
            problem = (
                f"the loss or a gradient became NaN/inf at step {bad + 1}; training stopped at "
                f"step {step} without applying that update"
            )
            raise NonFiniteLossError(_diverged(checkpointer, workdir, problem, suspect=bad))

    def save(step: int) -> None:
        check_finite(step)
        nonfinite = nonfinite_leaves({"params": state.params, "opt_state": state.opt_state})
        if nonfinite:
            problem = (
                f"after step {step}, with every loss and gradient finite, the update left NaN/inf "
                f"in {describe_leaves(nonfinite)}; that state was not saved"
            )
            raise NonFiniteLossError(_diverged(checkpointer, workdir, problem, suspect=None))
        checkpointer.save(step, state, {"iterator": iterator.get_state()})

    pending: list[dict[str, jax.Array]] = []
    try:
        if start == 0 and total_steps == 0:  # a model used as is (e.g. a pretrained scorer)
            save(0)
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
                save(step)
    finally:
        log.close()
        checkpointer.close()
    return state
