"""RAR's memory (PAPERS.md §3): labelled embeddings in the sharded ``Index`` and the top-k
classes of a query.

- Few-shot / fine-grained: one row per labelled shot (its image embedding); the row's id in the
  index is its class.
- Zero-shot / detection: one row per class, the class name's text embedding. Several prompt
  templates are ensembled as CLIP does: the mean of the name's unit embeddings under each
  template, renormalised (``class_text_embeddings``).

**Class-level aggregation.** A query's nearest rows are searched ``depth`` deep (default: every
row, so no class is missed). A class scores the similarity of its best row: max pooling, so one
close shot is enough evidence, and a class is not favoured for having more shots. Classes are
ranked by that score; a tie goes to the class whose best row ranks first in the search. The
top k are returned. Classes with no row within ``depth`` are not returned; their slots hold -1
and a score of -inf.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

from jaxrank.search.errors import SearchError
from jaxrank.search.index import Index


def class_text_embeddings(
    encode_text: Callable[[Sequence[str]], Any], names: Sequence[str], templates: Sequence[str]
) -> np.ndarray:
    """``[C, D]`` unit embeddings of the class ``names``, ensembled over ``templates`` (each
    with one ``{}`` for the name). ``encode_text(texts) -> [n, D]``."""
    if not templates or any(t.count("{}") != 1 for t in templates):
        raise ValueError(f"templates must each hold one '{{}}', got {list(templates)}")
    total = None
    for template in templates:
        rows = np.asarray(jax.device_get(encode_text([template.format(n) for n in names])))
        rows = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
        total = rows if total is None else total + rows
    return total / np.linalg.norm(total, axis=-1, keepdims=True)


class ClassMemory:
    """Labelled rows in a cosine ``Index``, searched for each query's top-k classes."""

    def __init__(self, index: Index):
        if index.metric != "cosine":
            raise SearchError(f"a class memory ranks by cosine, got a {index.metric} index")
        self.index = index

    @classmethod
    def from_embeddings(cls, embeddings: Any, labels: Any, **options: Any) -> ClassMemory:
        """Rows ``[N, D]`` with their class ids ``[N]``; ``options`` go to ``Index``."""
        return cls(Index.from_array(embeddings, labels, metric="cosine", **options))

    @classmethod
    def from_encoder(
        cls, encode: Callable[[Any], Any], batches: Iterable[Any], **options: Any
    ) -> ClassMemory:
        """Rows embedded batch by batch (``Index.from_encoder``): each batch is a mapping with
        a ``label`` entry (class ids), the rest is what ``encode`` takes."""
        return cls(Index.from_encoder(encode, batches, metric="cosine", id_key="label", **options))

    def top_classes(
        self, queries: Any, k: int, depth: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class ids ``[Q, k]`` (int64, best first) and their scores ``[Q, k]``."""
        depth = min(depth or len(self.index), len(self.index))
        found = self.index.search(queries, depth)
        classes = np.full((len(found.ids), k), -1, np.int64)
        scores = np.full((len(found.ids), k), -np.inf, np.float32)
        for row, (ids, sims) in enumerate(zip(found.ids, found.scores, strict=True)):
            # Rows arrive best first, so a class's first row is its best one.
            _, first = np.unique(ids, return_index=True)
            best = np.sort(first)[:k]
            classes[row, : len(best)] = ids[best]
            scores[row, : len(best)] = sims[best]
        return classes, scores
