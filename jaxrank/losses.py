"""Contrastive losses for dual encoders: CLIP's softmax InfoNCE and SigLIP's pairwise sigmoid.

Both take the embeddings of the whole (global) batch. Inside a jitted step whose inputs are
sharded over the ``data`` mesh axis, the ``a @ b.T`` here is a global matmul and XLA inserts the
collectives, so no per-device logic is needed. Logits are computed in float32 at full matmul
precision whatever the embedding dtype: a bf16 similarity multiplied by a learned scale of ~100
would put errors of a whole logit into the loss.

With ``labels`` (entity ids), every pair sharing a label is a positive, so an entity that occurs
twice in a batch is not pushed away from itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def contrastive_logits(
    a: jax.Array,
    b: jax.Array,
    logit_scale: jax.Array | float,
    logit_bias: jax.Array | float | None = None,
) -> jax.Array:
    """``exp(logit_scale) * a @ b.T (+ logit_bias)`` in float32: CLIP's and SigLIP's logits of
    every (a_i, b_j) pair, with the scale stored in log space as both checkpoints store it."""
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    similarity = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    logits = jnp.exp(jnp.asarray(logit_scale, jnp.float32)) * similarity
    return logits if logit_bias is None else logits + jnp.asarray(logit_bias, jnp.float32)


def _positive_pairs(batch_size: int, labels: jax.Array | None) -> jax.Array:
    if labels is None:
        return jnp.eye(batch_size, dtype=bool)
    labels = jnp.asarray(labels)
    return labels[:, None] == labels[None, :]


def _targets(batch_size: int, labels: jax.Array | None) -> jax.Array:
    """Each row's target distribution: uniform over the columns that share its label."""
    positives = _positive_pairs(batch_size, labels).astype(jnp.float32)
    return positives / positives.sum(axis=-1, keepdims=True)


def infonce_loss(
    queries: jax.Array,
    candidates: jax.Array,
    logit_scale: jax.Array | float,
    labels: jax.Array | None = None,
) -> jax.Array:
    """InfoNCE as ELVA writes it (PAPERS.md §2): the mean cross-entropy of each query over the
    global batch's candidates, one direction only (query -> candidate)."""
    logits = contrastive_logits(queries, candidates, logit_scale)
    return optax.softmax_cross_entropy(logits, _targets(logits.shape[0], labels)).mean()


def softmax_contrastive_loss(
    a: jax.Array,
    b: jax.Array,
    logit_scale: jax.Array | float,
    labels: jax.Array | None = None,
) -> jax.Array:
    """Symmetric InfoNCE: mean cross-entropy of a->b and b->a over the global batch.

    ``logit_scale`` is the log inverse temperature, as CLIP stores it. With ``labels`` the target
    distribution of a row is uniform over the columns that share its label.
    """
    logits = contrastive_logits(a, b, logit_scale)
    targets = _targets(logits.shape[0], labels)
    a_to_b = optax.softmax_cross_entropy(logits, targets).mean()
    b_to_a = optax.softmax_cross_entropy(logits.T, targets.T).mean()
    return 0.5 * (a_to_b + b_to_a)


def sigmoid_contrastive_loss(
    a: jax.Array,
    b: jax.Array,
    logit_scale: jax.Array | float,
    logit_bias: jax.Array | float,
    labels: jax.Array | None = None,
) -> jax.Array:
    """SigLIP: every (a_i, b_j) pair is a binary positive/negative decision, summed per row.

    The loss is the sum over all B^2 pairs divided by B, as in the SigLIP paper.
    """
    logits = contrastive_logits(a, b, logit_scale, logit_bias)
    signs = jnp.where(_positive_pairs(logits.shape[0], labels), 1.0, -1.0)
    return -jax.nn.log_sigmoid(signs * logits).sum() / logits.shape[0]
