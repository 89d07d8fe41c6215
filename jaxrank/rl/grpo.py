"""GRPO's pieces as small functions: group advantages, the k3 KL, the clipped policy loss.

Shapes: ``rewards``/``advantages`` are ``[B, G]`` (G sampled outputs per query); log-probs and
masks are ``[B, G, T]`` where T indexes tokens, or, for a structured action such as Region-R1's
crop, the action's factors (decision, x1, y1, x2, y2; a FULL action masks out its box factors).
A group lies along one row, so with the batch sharded over ``data`` no group straddles devices
and every function here is plain ``jnp`` that ``jax.jit`` partitions by itself.

The loss returns ``(loss_sum, count)`` rather than a mean: summing both over micro-batches and
dividing once gives the same loss and gradient as one big batch (unbiased accumulation).

With one update per batch (``updates_per_batch = 1``) the caller passes
``old_logp = stop_gradient(logp)``: then rho = 1, clipping never binds, and the gradient is the
plain policy gradient -A * grad(logp) (plus the KL term's), token by token, divided by the
aggregation's count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrank.metrics import masked_mean

GRPO_STD_EPSILON = 1e-4


def _centred(rewards: jax.Array) -> jax.Array:
    """r - group mean, forced to exactly 0 in constant groups (a float mean can miss by an ulp)."""
    rewards = jnp.asarray(rewards, jnp.float32)
    constant = jnp.all(rewards == rewards[..., :1], axis=-1, keepdims=True)
    return jnp.where(constant, 0.0, rewards - rewards.mean(axis=-1, keepdims=True))


def dr_grpo_advantages(rewards: jax.Array) -> jax.Array:
    """A = r - mean(r): Dr.GRPO, and Region-R1's released code; no std, so no length/difficulty
    reweighting of groups."""
    return _centred(rewards)


def grpo_advantages(rewards: jax.Array) -> jax.Array:
    """A = (r - mean) / (std + 1e-4), std with Bessel's correction (torch's default, which the
    reference GRPO trainers use); a group of one has A = 0."""
    centred = _centred(rewards)
    group = centred.shape[-1]
    if group < 2:
        return centred
    std = jnp.sqrt((centred**2).sum(axis=-1, keepdims=True) / (group - 1))
    return centred / (std + GRPO_STD_EPSILON)


def rloo_advantages(rewards: jax.Array) -> jax.Array:
    """A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean); a group of one has A = 0."""
    centred = _centred(rewards)
    group = centred.shape[-1]
    return centred if group < 2 else centred * (group / (group - 1))


ADVANTAGES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
}


def compute_advantages(rewards: jax.Array, kind: str = "dr_grpo") -> jax.Array:
    """Group advantages ``[..., G]`` of ``rewards [..., G]`` by the estimator named ``kind``."""
    if kind not in ADVANTAGES:
        raise ValueError(f"unknown advantage {kind!r}; expected one of {sorted(ADVANTAGES)}")
    return ADVANTAGES[kind](rewards)


def reward_term_means(
    terms: dict[str, jax.Array], where: jax.Array | None = None
) -> dict[str, jax.Array]:
    """``{"reward/<term>": mean}`` for the training log, one per term of a composite reward;
    ``where`` restricts each mean to the rollouts a term applies to (e.g. the scored crops)."""
    if where is None:
        return {f"reward/{name}": jnp.mean(value) for name, value in terms.items()}
    return {
        f"reward/{name}": masked_mean(value, jnp.broadcast_to(where, value.shape))
        for name, value in terms.items()
    }


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """k3 estimate of KL(pi || pi_ref) per token: exp(d) - d - 1 with d = ref_logp - logp.

    Unbiased for samples from pi and never negative; expm1 keeps it accurate near d = 0, and the
    clamp at 0 removes the last ulp of rounding.
    """
    d = jnp.asarray(ref_logp, jnp.float32) - jnp.asarray(logp, jnp.float32)
    return jnp.maximum(jnp.expm1(d) - d, 0.0)


def _seq_mean(losses: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """GRPO: each sequence's token mean, then the mean over sequences that have a token."""
    tokens = mask.sum(axis=-1)
    per_sequence = losses.sum(axis=-1) / jnp.maximum(tokens, 1.0)
    return per_sequence.sum(), (tokens > 0).sum(dtype=jnp.float32)


def _token_mean(losses: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """DAPO: every token weighs the same, whatever its sequence's length."""
    return losses.sum(), mask.sum()


def _dr_grpo(losses: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Dr.GRPO: a constant denominator, B * G * T_max, so length does not reweight tokens."""
    return losses.sum(), jnp.float32(mask.size)


AGGREGATIONS: dict[str, Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]] = {
    "seq_mean": _seq_mean,
    "token_mean": _token_mean,
    "dr_grpo": _dr_grpo,
}


def _token_log_ratio(log_ratio: jax.Array, mask: jax.Array) -> jax.Array:
    """GRPO/PPO: every token has its own importance ratio."""
    del mask
    return log_ratio


def _sequence_log_ratio(log_ratio: jax.Array, mask: jax.Array) -> jax.Array:
    """GSPO (Zheng et al. 2025): one ratio per sequence, the geometric mean of its tokens'
    ratios, exp(mean_t log rho_t), shared by all its tokens; clipping then keeps or drops whole
    sequences, and the gradient of each token's term flows through the sequence's ratio."""
    tokens = jnp.maximum(mask.sum(axis=-1, keepdims=True), 1.0)
    per_sequence = (log_ratio * mask).sum(axis=-1, keepdims=True) / tokens
    return jnp.broadcast_to(per_sequence, log_ratio.shape)


IMPORTANCE: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "token": _token_log_ratio,
    "sequence": _sequence_log_ratio,
}


def informative_groups(advantages: jax.Array) -> jax.Array:
    """``[..., G] -> [...]``: whether a group's rewards vary. Every estimator in ``ADVANTAGES``
    gives exactly 0 to each member of a constant group (``_centred``), so a group is
    uninformative exactly when all its advantages are 0."""
    return jnp.any(jnp.asarray(advantages) != 0, axis=-1)


def clipped_policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.1,
    aggregation: str = "seq_mean",
    importance: str = "token",
    skip_constant_groups: bool = False,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Clipped surrogate with a k3 KL penalty; returns ``(loss_sum, count, metrics)``.

    Per token: -[min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) - beta * KL] with
    rho = exp(logp - old_logp) per token, or per sequence with ``importance="sequence"``
    (GSPO). ``logp``, ``old_logp``, ``ref_logp`` and ``mask`` are ``[B, G, T]``;
    ``advantages`` ``[B, G]``. Masked-out entries may hold anything, NaN included: they are
    replaced before any arithmetic, so neither the loss nor its gradient sees them.

    ``skip_constant_groups`` is DAPO's dynamic sampling with static shapes: instead of
    resampling until every group's rewards vary, groups whose rewards do not are masked out of
    the loss (their KL term and their share of the denominator included) and counted in
    ``metrics["constant_groups"]``.

    The loss is ``loss_sum / count``; metrics (mean KL, clip fraction, mean ratio) are means
    over the unmasked tokens, the clip fraction counting the tokens whose clipped term binds
    (so their surrogate gradient is 0).
    """
    for name, value, known in (
        ("aggregation", aggregation, AGGREGATIONS),
        ("importance", importance, IMPORTANCE),
    ):
        if value not in known:
            raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(known)}")
    mask = jnp.asarray(mask, bool)
    informative = informative_groups(advantages)
    if skip_constant_groups:
        mask = mask & informative[..., None, None]
    logp, old_logp, ref_logp = (
        jnp.where(mask, jnp.asarray(x, jnp.float32), 0.0) for x in (logp, old_logp, ref_logp)
    )
    advantages = jnp.asarray(advantages, jnp.float32)[..., None]

    ratio = jnp.exp(IMPORTANCE[importance](logp - old_logp, mask.astype(jnp.float32)))
    clipped_ratio = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    surrogate = jnp.minimum(ratio * advantages, clipped_ratio * advantages)
    kl = kl_k3(logp, ref_logp)
    weights = mask.astype(jnp.float32)
    losses = -(surrogate - beta * kl) * weights
    loss_sum, count = AGGREGATIONS[aggregation](losses, weights)

    clipped = ((ratio > 1.0 + eps_high) & (advantages > 0)) | (
        (ratio < 1.0 - eps_low) & (advantages < 0)
    )
    tokens = jnp.maximum(weights.sum(), 1.0)
    metrics = {
        "kl": (kl * weights).sum() / tokens,
        "clip_fraction": (clipped * weights).sum() / tokens,
        "ratio": (ratio * weights).sum() / tokens,
        "constant_groups": (~informative).sum(dtype=jnp.float32),
    }
    return loss_sum, count, metrics


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """r-GRPO's settings (PAPERS.md §1, §4): Region-R1's paper G and released-code advantage."""

    num_generations: int = 8
    advantage: str = "dr_grpo"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.1
    aggregation: str = "seq_mean"
    updates_per_batch: int = 1
    importance: str = "token"
    skip_constant_groups: bool = False

    def __post_init__(self) -> None:
        for name, known in (
            ("advantage", ADVANTAGES),
            ("aggregation", AGGREGATIONS),
            ("importance", IMPORTANCE),
        ):
            if getattr(self, name) not in known:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {sorted(known)}")
        if self.num_generations < 1 or self.updates_per_batch < 1:
            raise ValueError(
                f"num_generations ({self.num_generations}) and updates_per_batch "
                f"({self.updates_per_batch}) must be >= 1"
            )
        if min(self.eps_low, self.eps_high, self.beta) < 0:
            raise ValueError(
                f"eps_low ({self.eps_low}), eps_high ({self.eps_high}) and beta ({self.beta}) "
                "must be >= 0"
            )

    def loss_options(self) -> dict:
        """The keyword arguments of ``clipped_policy_loss`` that these settings fix."""
        return {
            "eps_low": self.eps_low,
            "eps_high": self.eps_high,
            "beta": self.beta,
            "aggregation": self.aggregation,
            "importance": self.importance,
            "skip_constant_groups": self.skip_constant_groups,
        }
