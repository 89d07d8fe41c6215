"""ELVA's contrastive stage for the generative embedder (PAPERS.md §2, stage 2): InfoNCE over
the global batch on the ``[RET]`` states of queries and their positives, both embedded by the
same model.

Each input is teacher-forced through a short summary then ``[RET]`` (the summary's NLL is added
with ``summary_weight``), not ``[RET]`` right after the prompt: the RL stage samples summaries
and embeds at the ``[RET]`` the model writes itself, so the contrastive model must already write
a summary that ends in ``[RET]``, and its embedding must come from the same place.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxrank import losses
from jaxrank.models.dual_encoder import l2_normalize
from jaxrank.models.lm_scoring import completion_log_probs, hidden_at_token
from jaxrank.models.lora import join_lora
from jaxrank.models.qwen_vision import Grid
from jaxrank.train.step import LossFn
from jaxrank.vlm.programs import vlm_prompt


def ret_contrastive_loss(
    graphdef: nnx.GraphDef, grid: Grid, ret_id: int, temperature: float, summary_weight: float
) -> LossFn:
    """``loss(adapters, batch, rng, rest)``: prompt rows interleaved, ``2i`` query ``i`` and
    ``2i + 1`` its positive, each with its teacher-forced ``completion`` (summary, ``[RET]``);
    ``batch["entity"]`` [2B] labels the pairs (rows of one entity are not pushed apart)."""

    def loss_fn(adapters, batch, rng, rest):
        model = join_lora(graphdef, adapters, rest, dropout_key=rng)
        prompt = vlm_prompt(model, batch, grid)
        tokens, mask = batch["completion"], batch["completion_mask"]
        logp, hidden = completion_log_probs(model.language_model, prompt, tokens, mask)
        state, _ = hidden_at_token(hidden, tokens, ret_id, mask)
        embedded = l2_normalize(state.astype(jnp.float32))
        queries, positives = embedded[0::2], embedded[1::2]
        scale = -jnp.log(temperature)
        infonce = losses.infonce_loss(queries, positives, scale, batch["entity"][0::2])
        nll = -logp.sum() / jnp.maximum(mask.sum(), 1)
        first = jnp.argmax(queries @ positives.T, axis=1) == jnp.arange(queries.shape[0])
        metrics = {"infonce": infonce, "summary_nll": nll, "in_batch_top1": first.mean()}
        return infonce + summary_weight * nll, metrics

    return loss_fn
