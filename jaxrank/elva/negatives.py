"""ELVA's negatives per query (PAPERS.md §2): "filtered hard" negatives from the sharded search
(candidates scoring above a threshold are dropped as likely false negatives, then the top
``n_hard`` of the rest) and ``n_random`` negatives drawn uniformly from everything else."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from jaxrank.data.multigrain import I2T
from jaxrank.search.errors import SearchError
from jaxrank.search.index import Index


@dataclasses.dataclass(frozen=True)
class NegativeMining:
    """``threshold``: similarity above which a candidate counts as a likely false negative.
    ``depth``: how many neighbours to search for the hard ones (default 2 * n_hard + 1); rows
    whose filtered neighbours run out before ``n_hard`` are padded with -1."""

    n_hard: int = 50
    n_random: int = 50
    threshold: float = 0.9
    depth: int | None = None

    def __post_init__(self) -> None:
        if self.n_hard < 0 or self.n_random < 0 or self.n_hard + self.n_random == 0:
            raise ValueError(
                f"n_hard ({self.n_hard}) and n_random ({self.n_random}) must be >= 0, "
                "and not both 0"
            )


def mine_negatives(
    index: Index,
    queries: np.ndarray,
    positives: np.ndarray,
    mining: NegativeMining,
    rng: np.random.Generator,
) -> np.ndarray:
    """Negative ids ``[Q, n_hard + n_random]`` (int64; -1 where too few exist) for queries
    ``[Q, D]`` whose positives' ids are ``positives [Q]``: the filtered hard ones first, in
    descending score, then the random ones. A query's positive is never among its negatives,
    and no id appears twice in a row."""
    if index.metric == "l2":
        raise SearchError("negative mining thresholds a similarity: use an ip or cosine index")
    positives = np.asarray(positives, np.int64)
    if positives.shape != (len(queries),):
        raise SearchError(f"positives must be [{len(queries)}], got {positives.shape}")
    hard = np.full((len(queries), mining.n_hard), -1, np.int64)
    if mining.n_hard:
        depth = min(mining.depth or 2 * mining.n_hard + 1, len(index))
        found = index.search(queries, depth)
        keep = (found.ids >= 0) & (found.ids != positives[:, None])
        keep &= found.scores <= mining.threshold
        for row, (ids, kept) in enumerate(zip(found.ids, keep, strict=True)):
            chosen = ids[kept][: mining.n_hard]
            hard[row, : len(chosen)] = chosen
    pool = index.ids
    random = np.full((len(queries), mining.n_random), -1, np.int64)
    for row in range(len(queries)):
        excluded = {int(positives[row]), *hard[row].tolist()}
        draw = min(len(pool), mining.n_random + len(excluded))
        candidates = pool[rng.choice(len(pool), size=draw, replace=False)]
        chosen = [c for c in candidates.tolist() if c not in excluded][: mining.n_random]
        random[row, : len(chosen)] = chosen
    return np.concatenate([hard, random], axis=1)


def mining_config(cfg: ml_collections.ConfigDict) -> NegativeMining:
    """The ``mining`` section of an ELVA config (``depth`` 0: the default depth)."""
    mining = cfg.mining.to_dict()
    mining["depth"] = mining["depth"] or None
    return NegativeMining(**mining)


def mine_grouped(
    group: np.ndarray,
    positives: np.ndarray,
    queries: np.ndarray,
    tables: list[np.ndarray],
    cfg: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> np.ndarray:
    """Negative ids ``[Q, n_hard + n_random]`` of each instance, rows of ``tables[group[q]]``
    (its candidate set: a modality of the knowledge base, or one M-BEIR pool) mined with the
    query embedding ``queries[q]`` around the positive row ``positives[q]``."""
    mining = mining_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    negatives = np.full((len(queries), mining.n_hard + mining.n_random), -1, np.int64)
    for g, table in enumerate(tables):
        chosen = np.flatnonzero(group == g)
        if not len(chosen):
            continue
        index = Index.from_array(table, metric="cosine", mesh=mesh)
        negatives[chosen] = mine_negatives(index, queries[chosen], positives[chosen], mining, rng)
    short = np.flatnonzero((negatives < 0).any(axis=1))
    if len(short):
        raise SearchError(
            f"{len(short)} RL instances (first: row {short[0]}) found fewer than "
            f"{mining.n_hard} hard negatives under mining.threshold={mining.threshold}; raise "
            "mining.depth or the threshold"
        )
    return negatives.astype(np.int32)


def mine(
    instances: dict[str, np.ndarray],
    queries: np.ndarray,
    table: np.ndarray,
    cfg: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> np.ndarray:
    """``mine_grouped`` over the knowledge base's two modalities (``table`` [2, N, D], image
    then text): each instance's negatives from the modality its task retrieves."""
    modality = (instances["task"] == I2T).astype(int)
    return mine_grouped(modality, instances["entity"], queries, [table[0], table[1]], cfg, mesh)
