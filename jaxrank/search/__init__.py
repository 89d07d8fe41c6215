"""Sharded dense nearest-neighbour search: exact and approximate top-k, ``Index``, index files.

    index = Index.from_array(embeddings, ids, metric="cosine", mesh=mesh)
    result = index.search(queries, k=10)          # SearchResult(scores, ids), numpy
    index.save("kb.safetensors"); Index.load("kb.safetensors", metric="cosine")

Tie rule: equal scores rank the lower internal id (insertion order) first, across devices too.
"""

from jaxrank.search.errors import SearchError
from jaxrank.search.index import QUERY_BUCKETS, Database, Index, SearchResult
from jaxrank.search.topk import METRICS, MODES, exact_block_topk, local_topk, sharded_search

__all__ = [
    "METRICS",
    "MODES",
    "QUERY_BUCKETS",
    "Database",
    "Index",
    "SearchError",
    "SearchResult",
    "exact_block_topk",
    "local_topk",
    "sharded_search",
]
