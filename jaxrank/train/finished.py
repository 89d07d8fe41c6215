"""A finished training stage's parameters, restored from its folder without building its step
or its data (for exporting a trained model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections

from jaxrank.train.checkpoint import Checkpointer
from jaxrank.train.optim import adamw_warmup_cosine
from jaxrank.train.step import TrainState
from jaxrank.train.workdir import WorkdirError


def finished_params(
    section: ml_collections.ConfigDict,
    directory: str | Path,
    params: Any,
    seed: int,
    steps: int | None = None,
) -> Any:
    """The parameters of ``directory``'s checkpoint at step ``steps`` (default
    ``section.steps``), restored onto ``params``' shapes and shardings (the train state a
    ``Stage`` of ``section`` checkpoints); a stage that has not reached it is refused."""
    steps = section.steps if steps is None else steps
    with Checkpointer(Path(directory) / "checkpoints") as checkpointer:
        latest = checkpointer.latest_step()
        if latest != steps:
            raise WorkdirError(
                f"{directory} holds no finished stage of {steps} steps (latest checkpoint: "
                f"{latest}); finish training it first"
            )
        optimizer = adamw_warmup_cosine(section)
        like = jax.jit(lambda p: TrainState.create(p, optimizer, seed))(params)
        return checkpointer.restore(like, steps)[1].params
