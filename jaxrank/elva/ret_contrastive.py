"""ELVA's contrastive stage for the generative embedder (PAPERS.md §2, stage 2): InfoNCE over
the global batch on the ``[RET]`` states of queries and their positives, both embedded by the
same model.

The embedding is read where it will be read later: after a summary the model wrote itself
(``ret_embedder.summarise``, sampled with the pre-update weights in the step's rollout), then
``[RET]``. Evaluation and the RL stage embed after self-written summaries too; an embedding
trained on teacher-forced reference summaries learns to read the reference text, which the
model cannot yet write, and does not transfer (measured: chance Recall@5 on the benchmark).
The reference summaries (the description of what the input shows) still teach the model to
describe and to end with ``[RET]``, through their NLL weighted by ``summary_weight``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxrank import losses
from jaxrank.elva.ret_embedder import summarise
from jaxrank.models.dual_encoder import l2_normalize
from jaxrank.models.lm_scoring import completion_log_probs, hidden_at_token
from jaxrank.models.lora import join_lora
from jaxrank.models.qwen_vision import Grid
from jaxrank.rl.sampler import SamplingSettings
from jaxrank.train.step import LossFn, RolloutFn
from jaxrank.vlm.programs import vlm_prompt


def _model(graphdef: nnx.GraphDef, params: Any, frozen: Any, adapters: bool, rng=None):
    if adapters:
        return join_lora(graphdef, params, frozen, dropout_key=rng)
    return nnx.merge(graphdef, params)


def own_summaries(
    graphdef: nnx.GraphDef, grid: Grid, settings: SamplingSettings, ret_id: int, *, adapters: bool
) -> RolloutFn:
    """``rollout(params, batch, rng, frozen)``: each prompt row's summary written by the model
    (``summary`` and ``summary_mask`` added to the batch) and the rate of rows that wrote
    ``[RET]`` within the cap."""

    def rollout(params, batch, rng, frozen):
        model = _model(graphdef, params, frozen, adapters)
        if adapters:  # no adapter dropout while writing
            model = nnx.view(model, deterministic=True)
        lm, prompt = model.language_model, vlm_prompt(model, batch, grid)
        out = summarise(lm, prompt, rng, settings, ret_id)
        wrote = out.lengths <= settings.max_new_tokens
        return dict(batch, summary=out.tokens, summary_mask=out.mask), {"ret_rate": wrote.mean()}

    return rollout


def ret_contrastive_loss(
    graphdef: nnx.GraphDef,
    grid: Grid,
    ret_id: int,
    temperature: float,
    summary_weight: float,
    *,
    adapters: bool = True,
) -> LossFn:
    """``loss(params, batch, rng, frozen)``: prompt rows interleaved, ``2i`` query ``i`` and
    ``2i + 1`` its positive; each embedded at the ``[RET]`` of its own ``summary``, and its
    reference ``completion`` (summary, ``[RET]``) scored for the NLL; ``batch["entity"]`` [2B]
    labels the pairs (rows of one entity are not pushed apart). With ``adapters``, ``params``
    are LoRA adapters and ``frozen`` the rest of the model; else ``params`` is the model."""

    def loss_fn(params, batch, rng, frozen):
        model = _model(graphdef, params, frozen, adapters, rng)
        lm, prompt = model.language_model, vlm_prompt(model, batch, grid)
        own, own_mask = batch["summary"], batch["summary_mask"]
        _, hidden = completion_log_probs(lm, prompt, own, own_mask)
        state, _ = hidden_at_token(hidden, own, ret_id, own_mask)
        embedded = l2_normalize(state.astype(jnp.float32))
        queries, positives = embedded[0::2], embedded[1::2]
        scale = -jnp.log(temperature)
        infonce = losses.infonce_loss(queries, positives, scale, batch["entity"][0::2])
        target, mask = batch["completion"], batch["completion_mask"]
        logp, _ = completion_log_probs(lm, prompt, target, mask)
        nll = -logp.sum() / jnp.maximum(mask.sum(), 1)
        first = jnp.argmax(queries @ positives.T, axis=1) == jnp.arange(queries.shape[0])
        metrics = {"infonce": infonce, "summary_nll": nll, "in_batch_top1": first.mean()}
        return infonce + summary_weight * nll, metrics

    return loss_fn
