"""Embed a collection in fixed-size sharded batches and score queries against a knowledge base.

Batches are padded to one size so evaluation compiles each encoder once, whatever the
collection size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxrank import metrics
from jaxrank.parallel import shard_whole_batch, to_host


def embed_in_batches(
    fn: Callable[..., Any],
    arrays: Sequence[np.ndarray],
    batch_size: int,
    mesh: Mesh,
    prepare: Callable[..., Sequence[Any]] | None = None,
) -> Any:
    """``fn(*batch)`` over row chunks of ``arrays`` (same leading size), concatenated on host.
    ``fn`` may return a pytree of per-row arrays; the result has the same structure. Every
    process passes the whole ``arrays`` and gets the whole result. ``prepare(*chunk)`` turns
    each padded chunk into the host arguments of ``fn`` (work the host must do per batch, such
    as tokenising prompts)."""
    n = len(arrays[0])
    outputs = []
    for start in range(0, n, batch_size):
        chunk = [a[start : start + batch_size] for a in arrays]
        pad = batch_size - len(chunk[0])
        if pad:
            chunk = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) for c in chunk]
        host = tuple(chunk) if prepare is None else tuple(prepare(*chunk))
        out = to_host(fn(*shard_whole_batch(host, mesh)))
        outputs.append(jax.tree.map(lambda x, pad=pad: np.asarray(x)[: batch_size - pad], out))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


@jax.jit
def _scores(queries: jax.Array, keys: jax.Array) -> jax.Array:
    return jnp.einsum("qd,nd->qn", queries, keys, preferred_element_type=jnp.float32)


def entity_retrieval_report(
    query_embeddings: np.ndarray,
    kb_embeddings: np.ndarray,
    query_entity: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Rank every knowledge-base entry for each query by cosine; the query's entity is the one
    relevant entry. Returns the metric means as floats."""
    scores = _scores(jnp.asarray(query_embeddings), jnp.asarray(kb_embeddings))
    relevance = jnp.arange(kb_embeddings.shape[0])[None, :] == jnp.asarray(query_entity)[:, None]
    report = metrics.ranking_report(scores, relevance, ks=tuple(ks))
    return {k: float(v) if "num" not in k else int(v) for k, v in report.items()}
