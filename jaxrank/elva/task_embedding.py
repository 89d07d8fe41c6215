"""A universal-retrieval query or candidate embedded by its task's modalities with one dual
encoder (M-BEIR's tasks, ``jaxrank.data.multigrain.TASKS``): text, image, or an image with a
text fused as the normalised sum of the two unit embeddings (UniIR's score fusion, the form
``DualEncoder.encode_pair`` gives knowledge-base entries)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrank.data.multigrain import I2T, IT2I, T2I
from jaxrank.models.dual_encoder import DualEncoder, l2_normalize


def query_embedding(
    model: DualEncoder, pixels: jax.Array, tokens: jax.Array, task: jax.Array
) -> jax.Array:
    """Unit query embeddings [B, D] for rows of mixed tasks: both towers run on every row (one
    program for any task mix) and ``task`` [B] picks text, image or their fusion."""
    image = model.encode_image(pixels)
    text = model.encode_text(tokens)
    task = task[:, None]
    fused = l2_normalize(image + text)
    return jnp.where(task == T2I, text, jnp.where(task == IT2I, fused, image))


def candidate_table(model: DualEncoder, pixels: jax.Array, tokens: jax.Array) -> jax.Array:
    """Every knowledge-base entry's image and text embedding, ``[2, N, D]`` (image first)."""
    return jnp.stack([model.encode_image(pixels), model.encode_text(tokens)])


def candidates_of(table: jax.Array, task: jax.Array, ids: jax.Array) -> jax.Array:
    """Rows ``ids`` ([B] or [B, N]) of the table's modality each row's task retrieves."""
    modality = (task == I2T).astype(jnp.int32)
    modality = modality.reshape(modality.shape + (1,) * (ids.ndim - 1))
    return table[modality, ids]
