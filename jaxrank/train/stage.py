"""One training stage as every recipe runs it, so a stage reads as one call.

A stage is a config section (``steps``, ``batch_size``, the optimiser's keys, ``log_every``,
``checkpoint_every``, optionally ``profile_steps``), a folder for its checkpoints and logs, the
parameters it starts from and the step it takes. It builds the optimiser and the train state,
jits the step once (donating the state), and trains to the section's step count, resuming from
the folder's latest checkpoint. A finished stage is restored without reading any data, so a
re-run or re-evaluation never rebuilds a training set it will not use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import optax

from jaxrank import parallel
from jaxrank.train.checkpoint import Checkpointer
from jaxrank.train.optim import adamw_warmup_cosine
from jaxrank.train.step import LossFn, RolloutFn, TrainState, jit_train_step, make_train_step
from jaxrank.train.trainer import fit
from jaxrank.train.workdir import WorkdirError

StepFn = Callable[[TrainState, Any, Any], tuple[TrainState, dict[str, jax.Array]]]


def supervised(loss_fn: LossFn) -> Callable[[optax.GradientTransformation], StepFn]:
    """The step of a plain loss: gradient and update."""
    return lambda optimizer: make_train_step(loss_fn, optimizer)


def with_rollout(
    loss_fn: LossFn, rollout: RolloutFn, updates_per_batch: int
) -> Callable[[optax.GradientTransformation], StepFn]:
    """The step of a loss over what a rollout produced: one rollout with the pre-update
    parameters (RL's sampling and rewards, or any on-policy generation), then
    ``updates_per_batch`` updates on its output, in one program."""
    return lambda optimizer: make_train_step(
        loss_fn, optimizer, rollout=rollout, updates_per_batch=updates_per_batch
    )


class Stage:
    """A resumable training stage in ``directory``.

    ``step(optimizer)`` gives the un-jitted step (``supervised`` / ``with_rollout``), which the
    stage jits with the state's shardings; a host-driven step (``host_driven=True``) jits its own
    parts and is called as is. ``frozen`` is what the step reads but never updates.
    """

    def __init__(
        self,
        section: ml_collections.ConfigDict,
        directory: str | Path,
        params: Any,
        step: Callable[[optax.GradientTransformation], StepFn],
        *,
        seed: int,
        mesh: jax.sharding.Mesh,
        frozen: Any = None,
        host_driven: bool = False,
    ):
        self.section, self.directory = section, Path(directory)
        self.mesh, self.frozen = mesh, frozen
        self.optimizer = adamw_warmup_cosine(section)
        self.state = jax.jit(lambda p: TrainState.create(p, self.optimizer, seed))(params)
        step_fn = step(self.optimizer)
        self.step_fn = step_fn if host_driven else jit_train_step(step_fn, self.state)

    def latest_step(self) -> int | None:
        with Checkpointer(self.directory / "checkpoints") as checkpointer:
            return checkpointer.latest_step()

    @property
    def finished(self) -> bool:
        return self.latest_step() == self.section.steps

    def restore(self) -> TrainState:
        """The state of the folder's latest checkpoint."""
        with Checkpointer(self.directory / "checkpoints") as checkpointer:
            return checkpointer.restore(self.state)[1]

    def run(
        self,
        data: Iterable[Any] | None,
        *,
        place: Callable[[Any], Any] | None = None,
        until: int | None = None,
    ) -> TrainState:
        """Train (or resume) to step ``until`` (default: the section's ``steps``) and return the
        state. ``data`` is a resumable dataset of host batches, placed on the mesh by ``place``
        (default: split over the ``data`` axis); it may be None once the stage has finished."""
        until = self.section.steps if until is None else until
        if self.latest_step() == until:
            return self.restore()
        if data is None:
            raise WorkdirError(f"{self.directory} holds no finished stage; train the run first")
        self.directory.mkdir(parents=True, exist_ok=True)
        place = place or (lambda batch: parallel.shard_batch(batch, self.mesh))
        section = self.section
        with jax.set_mesh(self.mesh):
            self.state = fit(
                workdir=self.directory,
                state=self.state,
                step_fn=self.step_fn,
                data=data,
                place_batch=place,
                total_steps=until,
                log_every=section.log_every,
                checkpoint_every=section.checkpoint_every,
                frozen=self.frozen,
                samples_per_step=section.batch_size,
                profile_steps=tuple(section.get("profile_steps", ())) or None,
            )
        return self.state
