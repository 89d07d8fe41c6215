"""Supervised fine-tuning of a vision-language model on (prompt, answer) pairs: the mean
negative log-likelihood of the answer's tokens, teacher-forced after the prompt. Region-R1's
warm start trains every weight of its tiny policy this way; RAR's ranking fine-tuning trains
LoRA adapters with the base frozen, as the paper does.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxrank.models.lora import OUTPUT_HEAD, LoRAConfig, apply_lora, join_lora, split_lora
from jaxrank.models.qwen_vision import Grid
from jaxrank.train.step import LossFn
from jaxrank.vlm.programs import completion_log_probs_fn

LANGUAGE_MODEL = "language-model"


def language_model_linears(model: nnx.Module) -> tuple[str, ...]:
    """The dotted paths of the language model's linears, its output head excepted."""
    return tuple(
        ".".join(map(str, path))
        for path, module in nnx.iter_graph(model)
        if isinstance(module, nnx.Linear)
        and path[0] == "language_model"
        and path[-1] != OUTPUT_HEAD
    )


def with_adapters(
    lora: ml_collections.ConfigDict, graphdef: nnx.GraphDef, params: nnx.State, seed: int
) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """The model ``(graphdef, params)`` with LoRA adapters of ``lora``'s settings:
    ``(graphdef, adapters, frozen rest)`` (``split_lora``). ``targets`` may also be
    ``LANGUAGE_MODEL``: every linear of the language model, the vision tower left frozen (as
    ELVA trains its embedder)."""
    model = nnx.merge(graphdef, params)
    settings = lora.to_dict()
    if settings["targets"] == LANGUAGE_MODEL:
        settings["targets"] = language_model_linears(model)
    elif not isinstance(settings["targets"], str):
        settings["targets"] = tuple(settings["targets"])
    apply_lora(model, LoRAConfig(**settings), nnx.Rngs(params=seed, dropout=seed + 1))
    return split_lora(model)


def answer_nll_loss(graphdef: nnx.GraphDef, grid: Grid, *, adapters: bool) -> LossFn:
    """``loss(params, batch, rng, frozen)`` for ``make_train_step``. With ``adapters``,
    ``params`` are LoRA adapters and ``frozen`` the rest of the model (``split_lora``), and
    the adapters' dropout draws from ``rng``; else ``params`` is the whole model."""
    log_probs = completion_log_probs_fn(grid, 1, 1.0)

    def loss_fn(params, batch, rng, frozen):
        if adapters:
            model = join_lora(graphdef, params, frozen, dropout_key=rng)
        else:
            model = nnx.merge(graphdef, params)
        logp = log_probs(model, batch)
        nll = -logp.sum() / jnp.maximum(batch["completion_mask"].sum(), 1)
        return nll, {"nll": nll}

    return loss_fn
