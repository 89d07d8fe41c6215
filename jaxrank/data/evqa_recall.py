"""Recall@K the way E-VQA retrieval papers score it: by Wikipedia url, on ranked url lists.

A query is a hit at K when any of its gold urls is among the first K distinct retrieved urls.
This is EchoSight's ``eval_recall`` (Go2Heart/EchoSight ``test/test_reranker.py``: ``ground_truth
in candidates[:k]`` with ``ground_truth = row["wikipedia_url"]``, after ``remove_list_duplicates``
of the retrieved urls); OMGM scores with the same function. Where a row holds several urls
(``|``-joined, as 2_hop rows do) any one counts, which on single-url rows is EchoSight's test
exactly. This is a hit rate (ranx's ``hit_rate@k``), not the fraction of gold urls found.
"""

from __future__ import annotations

from collections.abc import Sequence

Gold = str | Sequence[str]


def gold_urls(gold: Gold) -> tuple[str, ...]:
    """The gold urls of a query: a ``|``-joined cell (as in the CSV) or a sequence of urls."""
    parts = gold.split("|") if isinstance(gold, str) else gold
    urls = tuple(url.strip() for url in parts if url.strip())
    if not urls:
        raise ValueError(f"a query needs at least one gold url, got {gold!r}")
    return urls


def first_hit_rank(gold: Gold, ranked: Sequence[str]) -> int | None:
    """1-based rank of the first gold url among the distinct ranked urls, None if absent."""
    wanted, seen = set(gold_urls(gold)), set()
    for url in ranked:
        if url in seen:
            continue  # a repeated url keeps its first rank and does not push others down
        seen.add(url)
        if url in wanted:
            return len(seen)
    return None


def recall_at_k(
    golds: Sequence[Gold], rankings: Sequence[Sequence[str]], ks: Sequence[int] = (1, 5, 10, 20)
) -> dict[int, float]:
    """Mean hit@K over queries, for each K; ``golds[i]`` goes with ``rankings[i]``. A query with
    an empty ranking is a miss (it still counts in the mean)."""
    if len(golds) != len(rankings):
        raise ValueError(f"{len(golds)} gold entries but {len(rankings)} rankings")
    if not golds:
        raise ValueError("recall over no queries")
    if any(k < 1 for k in ks):
        raise ValueError(f"cut-offs must be positive, got {list(ks)}")
    ranks = [first_hit_rank(g, r) for g, r in zip(golds, rankings, strict=True)]
    return {k: sum(r is not None and r <= k for r in ranks) / len(ranks) for k in ks}
