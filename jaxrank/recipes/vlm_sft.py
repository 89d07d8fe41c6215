"""Supervised fine-tuning of a vision-language model on (prompt, answer) pairs: the mean
negative log-likelihood of the answer's tokens, teacher-forced after the prompt. Region-R1's
warm start trains every weight of its tiny policy this way; RAR's ranking fine-tuning trains
LoRA adapters with the base frozen, as the paper does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxrank.checkpoint import Checkpointer
from jaxrank.models.lora import LoRAConfig, apply_lora, join_lora, split_lora
from jaxrank.models.qwen_vision import Grid
from jaxrank.optim import adamw_warmup_cosine
from jaxrank.rl import vlm_policy
from jaxrank.train_step import LossFn, TrainState, jit_train_step, make_train_step
from jaxrank.trainer import fit
from jaxrank.workdir import WorkdirError


def with_adapters(
    lora: ml_collections.ConfigDict, graphdef: nnx.GraphDef, params: nnx.State, seed: int
) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """The model ``(graphdef, params)`` with LoRA adapters of ``lora``'s settings:
    ``(graphdef, adapters, frozen rest)`` (``split_lora``)."""
    model = nnx.merge(graphdef, params)
    settings = lora.to_dict()
    if not isinstance(settings["targets"], str):
        settings["targets"] = tuple(settings["targets"])
    apply_lora(model, LoRAConfig(**settings), nnx.Rngs(params=seed, dropout=seed + 1))
    return split_lora(model)


def answer_nll_loss(graphdef: nnx.GraphDef, grid: Grid, *, adapters: bool) -> LossFn:
    """``loss(params, batch, rng, frozen)`` for ``make_train_step``. With ``adapters``,
    ``params`` are LoRA adapters and ``frozen`` the rest of the model (``split_lora``), and
    the adapters' dropout draws from ``rng``; else ``params`` is the whole model."""
    log_probs = vlm_policy.completion_log_probs_fn(grid, 1, 1.0)

    def loss_fn(params, batch, rng, frozen):
        if adapters:
            model = join_lora(graphdef, params, frozen, dropout_key=rng)
        else:
            model = nnx.merge(graphdef, params)
        logp = log_probs(model, batch)
        nll = -logp.sum() / jnp.maximum(batch["completion_mask"].sum(), 1)
        return nll, {"nll": nll}

    return loss_fn


def supervised_stage(
    section: ml_collections.ConfigDict,
    directory: Path,
    params: Any,
    loss_fn: LossFn,
    seed: int,
    mesh: jax.sharding.Mesh,
    data: Callable[[], tuple[Iterable[Any], Callable[[Any], Any]]] | None,
    frozen: Any = None,
) -> Any:
    """``params`` after ``section.steps`` steps of ``loss_fn`` (AdamW, warm-up + cosine, from
    ``section``), checkpointed in ``directory`` and resumed. ``data()`` gives the batches and
    the function that places one on the mesh; it may be None once the stage has finished."""
    directory.mkdir(parents=True, exist_ok=True)
    optimizer = adamw_warmup_cosine(section)
    state = jax.jit(lambda p: TrainState.create(p, optimizer, seed))(params)
    with Checkpointer(directory / "checkpoints") as checkpointer:
        if checkpointer.latest_step() == section.steps:
            return checkpointer.restore(state)[1].params
    if data is None:
        raise WorkdirError(f"{directory} holds no finished supervised stage; train the run first")
    batches, place = data()
    step_fn = jit_train_step(make_train_step(loss_fn, optimizer), state)
    with jax.set_mesh(mesh):
        state = fit(
            workdir=directory,
            state=state,
            step_fn=step_fn,
            data=batches,
            place_batch=place,
            total_steps=section.steps,
            log_every=section.log_every,
            checkpoint_every=section.checkpoint_every,
            frozen=frozen,
            samples_per_step=section.batch_size,
        )
    return state.params
