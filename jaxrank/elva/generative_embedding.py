"""ELVA's generative embedding and its rollouts (PAPERS.md §2), as pure functions of a causal
LM (a vision-language model's language model with its image tokens already in the prompt).

The model writes a summary of its input and then ``[RET]``; the embedding is the last hidden
state at ``[RET]`` (after the final norm, as transformers' ``last_hidden_state``). A rollout
of query b is the g-th completion of each of its ``pool`` inputs (the query, its positive,
its negatives): embeddings for all of them, scored by cosine against the query's. ELVA's
reward per rollout, group advantages over the G rollouts, and every completion of the rollout
carries its advantage into token-level GRPO (``token_grpo.make_token_grpo_loss``), so the
rollout's log-prob is the sum over its generated summaries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxrank.elva.reward import ELVARewardConfig, elva_reward, elva_reward_terms
from jaxrank.models.dual_encoder import l2_normalize
from jaxrank.models.lm import CausalLM
from jaxrank.models.lm_prompt import Prompt
from jaxrank.models.lm_scoring import completion_log_probs, hidden_at_token
from jaxrank.models.lora import join_lora
from jaxrank.rl.grpo import GRPOConfig, compute_advantages, reward_term_means
from jaxrank.rl.sampler import Completions, SamplingSettings, generate
from jaxrank.rl.token_grpo import make_token_grpo_loss
from jaxrank.train.step import LossFn, make_train_step


def ret_embeddings(
    lm: CausalLM,
    prompt: Prompt,
    completions: Completions,
    ret_id: int,
    temperature: float,
    group: int,
) -> tuple[jax.Array, jax.Array]:
    """Unit embeddings ``[R, W]`` at each completion's ``[RET]`` (teacher-forced, so they are
    a function of the parameters) and whether it wrote one ``[R]``; R = prompts x ``group``."""
    _, hidden = completion_log_probs(
        lm, prompt, completions.tokens, completions.mask, temperature, group=group
    )
    state, found = hidden_at_token(hidden, completions.tokens, ret_id, completions.mask)
    return l2_normalize(state), found


class GenerativeRollout(NamedTuple):
    completions: Completions  # [B*pool*G, N], prompt-major
    embeddings: jax.Array  # [B, pool, G, W]
    complete: jax.Array  # [B, G]: every input of the rollout wrote [RET]
    positive_scores: jax.Array  # [B, G]
    negative_scores: jax.Array  # [B, G, pool - 2]
    rewards: jax.Array  # [B, G]
    advantages: jax.Array  # [B, G]
    completion_advantages: jax.Array  # [B*pool, G]: each completion's rollout advantage


def rollout(
    lm: CausalLM,
    prompt: Prompt,
    key: jax.Array,
    settings: SamplingSettings,
    pool: int,
    ret_id: int,
    grpo: GRPOConfig,
    reward: ELVARewardConfig,
    missing_ret_reward: float = -1.0,
) -> GenerativeRollout:
    """G completions for every prompt row, rows grouped ``pool`` to a query (query, positive,
    negatives), and their rollouts' rewards. A rollout in which any input wrote no ``[RET]``
    (it hit ``settings.max_new_tokens``) gets ``missing_ret_reward``."""
    if pool < 3 or prompt.batch % pool:
        raise ValueError(
            f"{prompt.batch} prompt rows do not group into queries of pool {pool} "
            "(query, positive and at least one negative)"
        )
    group = grpo.num_generations
    completions = generate(lm, prompt, key, settings, group)
    embeddings, found = ret_embeddings(
        lm, prompt, completions, ret_id, settings.log_prob_temperature, group
    )
    queries = prompt.batch // pool
    embeddings = embeddings.reshape(queries, pool, group, -1)
    complete = found.reshape(queries, pool, group).all(axis=1)
    query = embeddings[:, 0]
    positive_scores = jnp.einsum("bgw,bgw->bg", query, embeddings[:, 1])
    negative_scores = jnp.einsum("bgw,bngw->bgn", query, embeddings[:, 2:])
    rewards = jnp.where(
        complete, elva_reward(positive_scores, negative_scores, reward), missing_ret_reward
    )
    advantages = compute_advantages(rewards, grpo.advantage)
    per_completion = jnp.broadcast_to(advantages[:, None], (queries, pool, group))
    return GenerativeRollout(
        completions,
        embeddings,
        complete,
        positive_scores,
        negative_scores,
        rewards,
        advantages,
        per_completion.reshape(queries * pool, group),
    )


PromptOf = Callable[[nnx.Module, Any], tuple[CausalLM, Prompt]]


def text_prompt(model: CausalLM, batch: dict[str, Any]) -> tuple[CausalLM, Prompt]:
    """A text decoder's prompt rows: ``batch["tokens"]`` and ``batch["mask"]`` (left-padded)."""
    return model, Prompt.from_tokens(batch["tokens"], batch["mask"])


def grpo_loss(
    graphdef: nnx.GraphDef,
    prompt_of: PromptOf,
    temperature: float,
    grpo: GRPOConfig,
    logit_chunk: int = 0,
) -> LossFn:
    """The update's token-level GRPO loss (``token_grpo.make_token_grpo_loss``) on the
    completions' log-probs after their prompts. ``logit_chunk`` > 0 computes them that many
    positions at a time (``lm_scoring.head_log_probs``): [rows, chunk, V] float32 logits live
    instead of [rows, N, V], the largest buffer of the update at M-BEIR's 816 completions."""

    def log_probs(model, batch):
        lm, prompt = prompt_of(model, batch)
        logp, _ = completion_log_probs(
            lm,
            prompt,
            batch["completion"],
            batch["completion_mask"],
            temperature,
            group=grpo.num_generations,
            logit_chunk=logit_chunk,
        )
        return logp

    return make_token_grpo_loss(graphdef, log_probs, grpo)


def make_step(
    graphdef: nnx.GraphDef,
    prompt_of: PromptOf,
    settings: SamplingSettings,
    pool: int,
    ret_id: int,
    grpo: GRPOConfig,
    reward: ELVARewardConfig,
    optimizer: optax.GradientTransformation,
    missing_ret_reward: float = -1.0,
    logit_chunk: int = 0,
):
    """One GRPO step on a LoRA-adapted policy for ``jit_train_step``: the rollout (sampling,
    [RET] embeddings, rewards) runs with the pre-update adapters, then token-level GRPO updates
    the adapters; the base weights are the step's ``frozen``. ``prompt_of(model, batch)`` gives
    the language model and the prompt rows (``text_prompt``, or a VLM's prompt with its image
    tokens). ``logit_chunk``: ``grpo_loss``'s."""

    def sample(adapters, batch, rng, base):
        model = nnx.view(join_lora(graphdef, adapters, base), deterministic=True)
        lm, prompt = prompt_of(model, batch)
        out = rollout(lm, prompt, rng, settings, pool, ret_id, grpo, reward, missing_ret_reward)
        first = (out.positive_scores[..., None] > out.negative_scores).all(axis=-1)
        terms = elva_reward_terms(out.positive_scores, out.negative_scores, reward)
        metrics = {
            **reward_term_means(terms, out.complete),
            "reward": out.rewards.mean(),
            "complete": out.complete.mean(),
            "positive_first": (first & out.complete).mean(),
        }
        filled = dict(
            batch,
            completion=out.completions.tokens,
            completion_mask=out.completions.mask,
            advantages=out.completion_advantages,
        )
        return filled, metrics

    loss = grpo_loss(graphdef, prompt_of, settings.log_prob_temperature, grpo, logit_chunk)
    return make_train_step(
        loss,
        optimizer,
        rollout=sample,
        updates_per_batch=grpo.updates_per_batch,
    )
