"""Token-level GRPO for a language policy trained through LoRA adapters (Region-R1's MLLM
policy, PAPERS.md §1 and §4).

The trainable parameters are the adapters only; the base weights arrive as the step's
``frozen``. The reference policy of the KL term is the same model with its adapters zeroed
(``lora.adapters_off``), so no second copy of the weights exists. Per-token log-probs come from
a recipe-supplied function of (model, batch), so the same loss serves a text decoder and a
vision-language model (whose log-probs also run the vision tower).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from jaxrank.models.lora import adapters_off, join_lora
from jaxrank.rl.grpo import GRPOConfig, clipped_policy_loss
from jaxrank.train.step import LossFn

LogProbs = Callable[[nnx.Module, Any], jax.Array]


def make_token_grpo_loss(graphdef: nnx.GraphDef, log_probs: LogProbs, grpo: GRPOConfig) -> LossFn:
    """``loss_fn(adapters, batch, rng, base)`` for ``train.step.make_train_step``.

    ``log_probs(model, batch)`` returns the completions' per-token log-probs ``[B*G, L]`` (rows
    prompt-major, as ``rl.sampler.generate`` returns them). ``batch`` holds ``completion_mask``
    ``[B*G, L]``, ``advantages`` ``[B, G]`` and, optionally, ``old_log_probs`` ``[B*G, L]`` (the
    sampler's, from the pre-update policy); without them the ratio is taken against
    ``stop_gradient`` of the log-probs (one update per batch: rho = 1, the plain policy
    gradient, as TRL does with one iteration, whatever the dropout). The loss is
    ``clipped_policy_loss`` with ``grpo``'s clip range, KL weight and aggregation; ``rng``
    drives the adapters' dropout.
    """

    def loss_fn(adapters, batch, rng, base):
        policy = join_lora(graphdef, adapters, base, dropout_key=rng)
        reference = join_lora(graphdef, adapters_off(adapters), base)
        advantages = batch["advantages"]
        shape = (*advantages.shape, -1)  # [B*G, L] -> [B, G, L]
        logp = log_probs(policy, batch).reshape(shape)
        ref_logp = jax.lax.stop_gradient(log_probs(reference, batch)).reshape(shape)
        old = batch.get("old_log_probs")
        old = jax.lax.stop_gradient(logp) if old is None else old.reshape(shape)
        loss_sum, count, metrics = clipped_policy_loss(
            logp,
            old,
            ref_logp,
            advantages,
            batch["completion_mask"].reshape(shape),
            **grpo.loss_options(),
        )
        return loss_sum / count, metrics

    return loss_fn
