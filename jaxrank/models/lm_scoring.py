"""Teacher-forced scoring with a causal LM: per-token log-probs of given completions (GRPO's
ratios and reference KL, RAR's listwise ranking) and the hidden state at a marker token (ELVA's
``[RET]`` embedding).

A training step needs only each sampled token's log-prob, yet the plain path holds float32
``[rows, N, V]`` logits (and, under ``jax.grad``, their gradient and the log-softmax's
exponentials): for Qwen's 151936 words that is the largest buffer of an r-GRPO update
(docs/SCALING.md). ``logit_chunk`` > 0 computes the log-probs a chunk of positions at a time
(``head_log_probs``), so only ``[rows, chunk, V]`` is ever live."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxrank.models.lm import CausalLM, KVCache
from jaxrank.models.lm_prompt import Prompt


def token_log_probs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
    """log softmax(logits / temperature) at ``targets``: [..., V] x [...] -> [...] float32,
    without materialising the full log-softmax."""
    scaled = logits.astype(jnp.float32) / temperature
    picked = jnp.take_along_axis(scaled, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(scaled, axis=-1)


def head_log_probs(
    lm: CausalLM,
    hidden: jax.Array,
    targets: jax.Array,
    temperature: float = 1.0,
    chunk: int = 0,
) -> jax.Array:
    """``token_log_probs`` of ``targets`` [R, N] under ``lm``'s head on the final hidden
    states [R, N, W] that predict them. ``chunk`` > 0 (and < N): a scan over chunks of
    ``chunk`` positions (the last one padded), each rematerialised, so the forward and the
    backward (which recomputes a chunk's logits from its hidden states) hold [R, chunk, V]
    logits at a time; the rows stay whole, so a row-sharded batch stays split."""
    rows, length = targets.shape
    if chunk <= 0 or chunk >= length:
        return token_log_probs(lm.logits(hidden), targets, temperature)
    count = -(-length // chunk)
    pad = count * chunk - length
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hidden = hidden.reshape(rows, count, chunk, -1).swapaxes(0, 1)
    targets = targets.reshape(rows, count, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(h, t):
        return token_log_probs(lm.logits(h), t, temperature)

    _, log_probs = jax.lax.scan(lambda _, xs: (None, one(*xs)), None, (hidden, targets))
    return log_probs.swapaxes(0, 1).reshape(rows, count * chunk)[:, :length]


def completion_log_probs(
    lm: CausalLM,
    prompt: Prompt,
    completion: jax.Array,
    completion_mask: jax.Array,
    temperature: float = 1.0,
    *,
    group: int = 1,
    logit_chunk: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Log-probs [R, N] of ``completion`` [R, N] following ``prompt`` (0 where the mask is off)
    and the completion's hidden states [R, N, W]. Uses the same positions and temperature as
    ``jaxrank.rl.sampler.generate``, so the two agree on what a sampled token's log-prob is.

    ``group`` = G > 1: ``prompt`` has B = R / G rows, each followed by G completions (rows
    prompt-major, as the sampler returns them). The prompt then runs once and its key/value
    cache is repeated G times, so GRPO's loss pays for B prompts, not B * G.

    ``logit_chunk`` > 0: the log-probs ``logit_chunk`` positions at a time (``head_log_probs``).
    """
    rows, length = completion.shape
    if rows != prompt.batch * group:
        raise ValueError(f"{rows} completions for {prompt.batch} prompts x group {group}")
    if group == 1:
        return _full_sequence(lm, prompt, completion, completion_mask, temperature, logit_chunk)
    dtype = None if prompt.embeddings is None else prompt.embeddings.dtype
    head = prefill(lm, prompt, length, dtype)
    repeated = prompt.repeat(group)
    tail = lm(
        completion,
        completion_mask,
        repeated.generated_positions(length),
        cache=head.cache.repeat(group),
        compute_logits=False,
    )
    first = jnp.repeat(head.hidden[:, -1:], group, axis=0)  # predicts the first token
    predicting = jnp.concatenate([first, tail.hidden[:, :-1]], axis=1)
    log_probs = head_log_probs(lm, predicting, completion, temperature, logit_chunk)
    return jnp.where(completion_mask, log_probs, 0.0), tail.hidden


def prefill(lm: CausalLM, prompt: Prompt, room: int, cache_dtype: DTypeLike | None = None):
    """The prompt run into a fresh key/value cache with ``room`` more slots (``LMOutput``: the
    prompt's hidden states and the cache; no logits). The cache is in ``cache_dtype``, by
    default the embedding table's."""
    dtype = cache_dtype or lm.embed_tokens.embedding[...].dtype
    cache = KVCache.empty(lm.config, prompt.batch, prompt.tokens.shape[1] + room, dtype)
    return lm(
        prompt.tokens,
        prompt.mask,
        prompt.positions,
        embeddings=prompt.embeddings,
        cache=cache,
        compute_logits=False,
    )


def _full_sequence(lm, prompt, completion, completion_mask, temperature, logit_chunk):
    """Teacher forcing over prompt + completion in one pass."""
    length = completion.shape[1]
    tokens = jnp.concatenate([prompt.tokens, completion.astype(jnp.int32)], axis=1)
    mask = jnp.concatenate([prompt.mask, completion_mask.astype(bool)], axis=1)
    positions = jnp.concatenate([prompt.positions, prompt.generated_positions(length)], axis=-1)
    embeddings = None
    if prompt.embeddings is not None:
        embeddings = jnp.concatenate(
            [prompt.embeddings, lm.embed_tokens(completion).astype(prompt.embeddings.dtype)], axis=1
        )
    out = lm(tokens, mask, positions, embeddings=embeddings, compute_logits=False)
    first = prompt.tokens.shape[1] - 1  # the state that predicts the first completion token
    predicting = out.hidden[:, first : first + length]
    log_probs = head_log_probs(lm, predicting, completion, temperature, logit_chunk)
    return jnp.where(completion_mask, log_probs, 0.0), out.hidden[:, first + 1 :]


def hidden_at_token(
    hidden: jax.Array, tokens: jax.Array, token_id: int, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Each row's hidden state [B, W] at the LAST occurrence of ``token_id`` and whether the row
    has one (rows without it get the state of their last slot; check ``found``)."""
    hits = tokens == token_id
    if mask is not None:
        hits = hits & mask.astype(bool)
    last = tokens.shape[1] - 1 - jnp.argmax(hits[:, ::-1], axis=1)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0], hits.any(axis=1)
