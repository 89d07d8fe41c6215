"""Region-R1's crop action as a factored distribution, and the pure functions RL needs over it.

An action is a decision (FULL or REGION) and, for REGION, a box whose four coordinates
(x1, y1, x2, y2) are independent categoricals over ``num_bins`` bins spanning [0, image_size].
Nothing forces x1 < x2: inverted and zero-area boxes stay in the action space so that the reward
can punish them (r = -1), as in the paper. Following PAPERS.md §4, the action's "tokens" are its
five factors (decision, x1, y1, x2, y2) and its log-probability is the sum of the factors present.

Every function accepts extra leading dimensions: a ``PolicyOutput`` of shape [B] scores actions
of shape [B, G] (G samples per query) by broadcasting over the trailing sample dimensions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

FULL = 0
REGION = 1
NUM_FACTORS = 5  # decision, x1, y1, x2, y2


@struct.dataclass
class PolicyOutput:
    """Unnormalised float32 logits: ``decision_logits`` [..., 2] over (FULL, REGION) and
    ``box_logits`` [..., 4, num_bins] over each coordinate's bins."""

    decision_logits: jax.Array
    box_logits: jax.Array

    @property
    def num_bins(self) -> int:
        return self.box_logits.shape[-1]


def bins_to_boxes(bins: jax.Array, image_size: int, num_bins: int) -> jax.Array:
    """Bin ids [..., 4] -> float32 pixel boxes: bin b maps to b / (num_bins - 1) * image_size,
    so both 0 and the far edge ``image_size`` (exclusive x2/y2) are reachable."""
    return jnp.asarray(bins, jnp.float32) * (image_size / (num_bins - 1))


def boxes_to_bins(boxes: jax.Array, image_size: int, num_bins: int) -> jax.Array:
    """Pixel boxes [..., 4] -> the nearest bin ids (int32), clipped to [0, num_bins - 1]; turns
    ground-truth or baseline boxes (centre crop, oracle) into actions the policy can score."""
    scaled = jnp.asarray(boxes, jnp.float32) * ((num_bins - 1) / image_size)
    return jnp.clip(jnp.round(scaled), 0, num_bins - 1).astype(jnp.int32)


def _expand_to(logits: jax.Array, lead_ndim: int, target_ndim: int) -> jax.Array:
    """Insert singleton sample axes after the output's ``lead_ndim`` leading axes."""
    extra = target_ndim - lead_ndim
    if extra < 0:
        raise ValueError(
            f"actions have {target_ndim} leading dims but the policy output has {lead_ndim}; "
            "actions must have the output's leading dims plus optional sample dims"
        )
    shape = logits.shape
    return logits.reshape(*shape[:lead_ndim], *([1] * extra), *shape[lead_ndim:])


def sample_boxes(out: PolicyOutput, key: jax.Array, num_samples: int) -> jax.Array:
    """``num_samples`` independent box draws per query: int32 bins [..., num_samples, 4]."""
    logits = out.box_logits[..., None, :, :]
    shape = (*out.box_logits.shape[:-2], num_samples, 4)
    return jax.random.categorical(key, logits, axis=-1, shape=shape).astype(jnp.int32)


def log_prob(
    out: PolicyOutput, decision: jax.Array, bins: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-factor log-probabilities of actions and which factors each action has.

    ``decision`` [..., *S] in {FULL, REGION} and ``bins`` [..., *S, 4] in [0, num_bins), where
    ``...`` are the output's leading dims and ``S`` optional sample dims (e.g. G). Returns
    ``factor_logp`` float32 [..., *S, 5] (decision, x1, y1, x2, y2) and ``factor_mask`` bool of the
    same shape: FULL actions have no box, so their coordinate factors are masked out, their
    bins are ignored whatever they hold, and their log-probs are exactly 0 (no gradient reaches
    the box head through them).
    """
    if bins.shape != (*decision.shape, 4):
        raise ValueError(
            f"bins shape {tuple(bins.shape)} must be decision shape {tuple(decision.shape)} + (4,)"
        )
    lead = out.decision_logits.ndim - 1
    decision_logp = jax.nn.log_softmax(
        _expand_to(out.decision_logits.astype(jnp.float32), lead, decision.ndim), axis=-1
    )
    box_logp = jax.nn.log_softmax(
        _expand_to(out.box_logits.astype(jnp.float32), lead, decision.ndim), axis=-1
    )
    decision_logp = jnp.broadcast_to(decision_logp, (*decision.shape, 2))
    box_logp = jnp.broadcast_to(box_logp, (*decision.shape, 4, out.num_bins))

    chosen_decision = jnp.take_along_axis(decision_logp, decision[..., None], axis=-1)
    chosen_bins = jnp.take_along_axis(box_logp, bins[..., None], axis=-1)[..., 0]
    has_box = jnp.broadcast_to((decision == REGION)[..., None], chosen_bins.shape)
    factor_mask = jnp.concatenate([jnp.ones_like(has_box[..., :1]), has_box], axis=-1)
    factor_logp = jnp.concatenate([chosen_decision, jnp.where(has_box, chosen_bins, 0.0)], axis=-1)
    return factor_logp, factor_mask


def action_log_prob(out: PolicyOutput, decision: jax.Array, bins: jax.Array) -> jax.Array:
    """log pi(action) [..., *S]: the sum of the log-probs of the factors the action has."""
    factor_logp, factor_mask = log_prob(out, decision, bins)
    return jnp.sum(jnp.where(factor_mask, factor_logp, 0.0), axis=-1)


def box_nll(out: PolicyOutput, bins: jax.Array) -> jax.Array:
    """-log pi(box | REGION) [...] of target bins [..., 4]: the sum over the four coordinates,
    without the decision factor. The supervised grounding loss (boxes only, so the decision
    stays for RL to learn)."""
    logp = jax.nn.log_softmax(out.box_logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, bins[..., None], axis=-1)[..., 0].sum(axis=-1)


def _categorical_entropy(logits: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def entropy(out: PolicyOutput) -> jax.Array:
    """Exact entropy [...] of the whole action distribution, by the chain rule:
    H(decision) + P(REGION) * (H(x1) + H(y1) + H(x2) + H(y2)), since a FULL action has no box.
    A uniform policy has ln 2 + 2 ln(num_bins)."""
    p_region = jax.nn.softmax(out.decision_logits.astype(jnp.float32), axis=-1)[..., REGION]
    box_entropy = jnp.sum(_categorical_entropy(out.box_logits), axis=-1)
    return _categorical_entropy(out.decision_logits) + p_region * box_entropy


def mode(out: PolicyOutput) -> tuple[jax.Array, jax.Array]:
    """The greedy action: decision [...] and bins [..., 4] (int32 argmaxes)."""
    decision = jnp.argmax(out.decision_logits, axis=-1).astype(jnp.int32)
    return decision, jnp.argmax(out.box_logits, axis=-1).astype(jnp.int32)
