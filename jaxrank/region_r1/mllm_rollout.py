"""Decision-balanced groups of the vision-language crop policy in one decoding pass.

The rule (PAPERS.md §1, ``rl.sampling``): sample G completions per query; in a group whose
completions all read as one decision, the slot ``slots_to_flip`` picks is replaced by a fresh
completion whose opening is forced to the other decision's marker (``NO_CROP_NEEDED`` or
``<tool_call>``), the rest of it sampled. The host-driven step did this in two passes: decode
B x G rows, read them, then decode B x G rows again with the flipped rows' openings forced and
keep only those rows.

Here one decoding loop runs B x (G + 2) rows: each query's G completions and two spares, one
opening with each marker. Which decision a group lacks is known only once its completions are
read, but the slot is not: ``slots_to_flip`` draws it uniformly with its own key whatever the
decisions are, so it is drawn before the loop. Each spare gets, at every step, the Gumbel noise
that the second pass would have given the flipped slot (``rl.sampler.generate``'s ``noise``).
After the loop the G completions are read on the device (``tool_reader``), the flips are taken
as ``slots_to_flip`` takes them, and a flipped slot takes the spare opening with the decision
its group lacks. Rows do not interact during decoding, so every completion, forced opening and
log-prob equals the two-pass rule's for the same keys (``tests/region_r1/test_mllm_rollout.py``
checks it against the host-driven step's code), at the cost of 2 / G more rows in one pass
instead of a second pass of G rows.

A forced opening's log-probs are the policy's; when ``forced_in_loss`` is off they leave the
loss mask (``r_grpo.RegionGRPOConfig``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrank.region_r1 import crop_tool
from jaxrank.region_r1.tool_reader import Reading
from jaxrank.rl.sampler import Completions
from jaxrank.rl.sampling import slots_to_flip

SPARES = 2  # one spare per decision: FULL's opening, then REGION's


class Balanced(NamedTuple):
    """A step's completions ``[B*G, N]`` (prompt-major), their readings ``[B*G]`` and the
    flipped slots ``[B, G]``."""

    completions: Completions
    reading: Reading
    flipped: jax.Array


def opening_table(openings: dict[int, list[int]]) -> np.ndarray:
    """``[2, F]`` int32: row d holds decision d's opening token ids, ``-1`` after."""
    width = max(map(len, openings.values()))
    table = np.full((2, width), -1, np.int32)
    for decision in (crop_tool.FULL, crop_tool.REGION):
        table[decision, : len(openings[decision])] = openings[decision]
    return table


def flip_slot(key: jax.Array, groups: int, group: int) -> jax.Array:
    """``[B, 1]``: the slot ``slots_to_flip(key, ...)`` flips in a one-sided group (its draw
    depends on the key and the shape only)."""
    return jax.random.randint(key, (groups, 1), 0, group)


def balanced_completions(
    sample: Callable[..., Completions],
    read: Callable[[jax.Array, jax.Array], Reading],
    openings: np.ndarray,
    batch_rows: int,
    group: int,
    keys: tuple[jax.Array, jax.Array, jax.Array],
    forced_in_loss: bool = True,
) -> Balanced:
    """``sample(forced, noise) -> Completions`` decodes ``batch_rows x (group + SPARES)`` rows
    (``vlm.programs.sampler_fn`` bound to its weights and prompts, ``group + SPARES`` samples
    per prompt); ``keys`` = (sample, flip, resample) as the two-pass rule used them."""
    sample_key, flip_key, resample_key = keys
    b, g, width = batch_rows, group, openings.shape[1]
    slot = flip_slot(flip_key, b, g)

    def noise(t, shape):
        vocab = shape[-1]
        draws = lambda key: jax.random.gumbel(jax.random.fold_in(key, t), (b * g, vocab))
        first = draws(sample_key).reshape(b, g, vocab)
        again = jnp.take_along_axis(draws(resample_key).reshape(b, g, vocab), slot[..., None], 1)
        return jnp.concatenate([first, *[again] * SPARES], axis=1).reshape(shape)

    free = np.full((b, g, width), -1, np.int32)
    forced = np.concatenate([free, np.broadcast_to(openings, (b, SPARES, width))], axis=1)
    out = sample(jnp.asarray(forced.reshape(-1, width)), noise)
    rows = g + SPARES
    reading = read(out.tokens, out.mask)
    decision = reading.decision.reshape(b, rows)[:, :g]
    flipped = slots_to_flip(flip_key, decision)
    # A flipped slot takes the spare of the decision its group lacks: spare g + (1 - decision).
    source = jnp.where(flipped, g + 1 - decision, jnp.arange(g))

    def pick(x):
        x = x.reshape(b, rows, *x.shape[1:])
        index = source.reshape(b, g, *([1] * (x.ndim - 2)))
        return jnp.take_along_axis(x, index, axis=1).reshape(b * g, *x.shape[2:])

    completions, reading = jax.tree.map(pick, (out, reading))
    if not forced_in_loss:  # the forced openings' tokens leave the loss
        opening = jnp.asarray(openings)[jnp.clip(source - g, 0, 1)]  # read where flipped
        forced_here = flipped.reshape(-1, 1) & (opening.reshape(b * g, width) >= 0)
        head = completions.mask[:, :width] & ~forced_here
        completions = completions.replace(mask=completions.mask.at[:, :width].set(head))
    return Balanced(completions, reading, flipped)
