"""Sampling the G decisions of a group, plain or decision-balanced (Region-R1's r-GRPO).

Balancing (PAPERS.md §1): every group holds both FULL and REGION actions, so the group baseline
mean(r) is never set by one decision alone; otherwise a query whose policy already always crops
compares crops only with crops and never learns whether FULL would have been better. Here the
G decisions are drawn i.i.d. from the policy and, when a group came out all one decision, one
slot chosen uniformly at random is flipped to the other.

A flipped ("forced") action was not drawn from the policy. The loss still uses the policy's
log-prob of the action actually taken, with no importance weight, as the paper describes, so the
forced slot is off-policy; callers that prefer an on-policy gradient drop it from the loss with
``mask & ~forced[..., None]`` and keep its reward in the group baseline. The default is to keep
it (the released code has no balancing to compare with).

Decisions are indices into the logits' last axis: 0 = FULL, 1 = REGION. Functions are pure,
deterministic given the key, jittable (``num_generations`` static) and vmappable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_logits(logits: jax.Array) -> None:
    if logits.ndim < 1 or logits.shape[-1] != 2:
        raise ValueError(
            f"decision logits must be [..., 2] (FULL, REGION), got shape {tuple(logits.shape)}"
        )


def sample_decisions(key: jax.Array, logits: jax.Array, num_generations: int) -> jax.Array:
    """G i.i.d. decisions per query from ``logits [..., 2]``: int32 ``[..., G]`` (no balancing)."""
    logits = jnp.asarray(logits, jnp.float32)
    _check_logits(logits)
    shape = (*logits.shape[:-1], num_generations)
    draws = jax.random.categorical(key, logits[..., None, :], axis=-1, shape=shape)
    return draws.astype(jnp.int32)


def sample_balanced_decisions(
    key: jax.Array, logits: jax.Array, num_generations: int
) -> tuple[jax.Array, jax.Array]:
    """Decisions ``[..., G]`` where every group holds both decisions (when G >= 2), and the
    ``forced [..., G]`` mask of the slots flipped to achieve it (at most one per group).

    The raw draws are ``sample_decisions(jax.random.split(key)[0], ...)``, so the balanced and
    unbalanced ablations can share them. With G = 1 nothing can be balanced: no slot is forced.
    """
    draw_key, slot_key = jax.random.split(key)
    draws = sample_decisions(draw_key, logits, num_generations)
    forced = slots_to_flip(slot_key, draws)
    return jnp.where(forced, 1 - draws, draws), forced


def slots_to_flip(key: jax.Array, decisions: jax.Array) -> jax.Array:
    """``[..., G]`` bool: in each group whose decisions are all the same, one slot chosen
    uniformly at random (none when G < 2). Flipping those slots balances every group."""
    group = decisions.shape[-1]
    if group < 2:
        return jnp.zeros(decisions.shape, bool)
    one_sided = jnp.all(decisions == decisions[..., :1], axis=-1, keepdims=True)
    slot = jax.random.randint(key, (*decisions.shape[:-1], 1), 0, group)
    return one_sided & (jnp.arange(group) == slot)
