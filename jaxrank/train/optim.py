"""The optimiser every recipe uses: AdamW on a warm-up + cosine schedule, gradient clipping."""

from __future__ import annotations

import jax
import ml_collections
import optax


def adamw_warmup_cosine(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """From ``train.{learning_rate, warmup_steps, steps, grad_clip, weight_decay}``; weight
    decay only on matrices (not biases, norms or temperatures)."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, train.learning_rate, train.warmup_steps, max(train.steps, train.warmup_steps + 1)
    )
    decay_matrices = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(train.grad_clip),
        optax.adamw(schedule, weight_decay=train.weight_decay, mask=decay_matrices),
    )
