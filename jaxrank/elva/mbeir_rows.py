"""M-BEIR's released files as the generative embedder's rows (PAPERS.md §2, DATA_FORMATS.md §3):
each (dataset, task) pair's queries with their instructions, its local candidate pool, and
UniIR's Recall@K over that pool.

A query's instruction is one of its row's prompts in the instruction TSV, chosen by its qid (so
every run and every evaluation shows it the same one). Images are resized to the embedder's
square; a text-only input shows none. Bad rows (unreadable lines, missing images, unknown
candidates, instruction rows that match no task, queries without an instruction row or a
positive in the pool) are skipped and counted under their file and line (``strict`` raises on
the first).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxrank.configs import ConfigError
from jaxrank.data import mbeir
from jaxrank.data.errors import BadRows, DataError
from jaxrank.elva.ret_rows import Embed
from jaxrank.search import Index
from jaxrank.vlm.base import resize_square


@dataclasses.dataclass
class Pair:
    """One (dataset, task) of one split: usable queries, the pool (did order kept), qrels."""

    dataset: str
    task: int
    queries: list[mbeir.Query]
    pool: dict[str, mbeir.Candidate]
    qrels: dict[str, mbeir.Relevant]

    def __post_init__(self) -> None:
        self.dids = list(self.pool)
        self.row = {did: i for i, did in enumerate(self.dids)}  # did -> its row in the pool

    @property
    def name(self) -> str:
        return f"{self.dataset}/task{self.task}"


def pairs_of(data: ml_collections.ConfigDict) -> tuple[tuple[str, int], ...]:
    """``data.pairs`` ("dataset/task" names; empty = the 16 of the M-BEIR evaluation)."""
    if not data.pairs:
        return mbeir.EVAL_PAIRS
    pairs = []
    for name in data.pairs:
        dataset, _, task = str(name).partition("/task")
        if (dataset, int(task or -1)) not in mbeir.EVAL_PAIRS:
            raise ConfigError(
                f"data.pairs: {name!r} is not one of M-BEIR's evaluation pairs "
                f"({', '.join(f'{d}/task{t}' for d, t in mbeir.EVAL_PAIRS)})"
            )
        pairs.append((dataset, int(task)))
    return tuple(pairs)


class MBEIRRows:
    """The pairs of one split, read once, and their rows for the embedder."""

    def __init__(self, data: ml_collections.ConfigDict, split: str, image_size: int):
        self.root, self.size = data.root, image_size
        self.bad = BadRows(strict=data.strict)
        self.instructions = self._instructions(mbeir.instructions_path(data.root))
        self.pairs = [self._read(d, t, split) for d, t in pairs_of(data)]

    def _instructions(self, path) -> dict[tuple[int, str, str], tuple[str, ...]]:
        """The instruction rows; one whose modalities are no M-BEIR task's is a bad row."""
        table = mbeir.read_instructions(path, self.bad)
        tasks = set(mbeir.TASKS.values())
        for key in [k for k in table if k[1:] not in tasks]:
            self.bad.skip(str(path), "unknown_task", f"row {key}: its modalities are no task's")
            del table[key]
        return table

    def _read(self, dataset: str, task: int, split: str) -> Pair:
        pool = mbeir.read_pool(
            mbeir.local_pool_path(self.root, dataset, task, split),
            self.bad,
            image_root=self.root,
            check_images=True,
        )
        qrels = mbeir.read_qrels(mbeir.qrels_path(self.root, dataset, task, split), self.bad)
        queries = []
        for query in mbeir.iter_queries(
            mbeir.query_path(self.root, dataset, task, split),
            self.bad,
            image_root=self.root,
            known_dids=pool,
            check_images=True,
        ):
            key = (query.dataset_id, query.query_modality, mbeir.TASKS[query.task_id][1])
            relevant = qrels.get(query.qid)
            if key not in self.instructions:
                self.bad.skip(query.where, "no_instruction", f"no instruction row for {key}")
            elif relevant is None or not any(d in pool for d in relevant.dids):
                self.bad.skip(query.where, "no_positive", f"{query.qid}: no positive in the pool")
            else:
                queries.append(query)
        if not queries:
            raise DataError(f"M-BEIR {dataset} task {task} ({split}): no usable query")
        return Pair(dataset, task, queries, pool, qrels)

    def _image(self, record: mbeir.Query | mbeir.Candidate) -> tuple[np.ndarray, bool]:
        image = mbeir.load_image(record, self.bad)
        if image is None:
            return np.zeros((self.size, self.size, 3), np.uint8), False
        return resize_square(image, self.size), True

    def _rows(self, records: Sequence[Any], instructions: list[str], texts: list[str]) -> dict:
        images = [self._image(r) for r in records]
        return {
            "instructions": instructions,
            "texts": texts,
            "images": np.stack([i for i, _ in images]),
            "has_image": np.array([shown for _, shown in images]),
            "summaries": [t or "" for t in texts],
            "entity": np.zeros(len(records), np.int32),
        }

    def query_rows(self, queries: Sequence[mbeir.Query]) -> dict[str, Any]:
        instructions = []
        for query in queries:
            key = (query.dataset_id, query.query_modality, mbeir.TASKS[query.task_id][1])
            prompts = self.instructions[key]
            instructions.append(prompts[zlib.crc32(query.qid.encode()) % len(prompts)])
        return self._rows(queries, instructions, [q.query_txt or "" for q in queries])

    def candidate_rows(self, pair: Pair, dids: Sequence[str]) -> dict[str, Any]:
        candidates = [pair.pool[d] for d in dids]
        return self._rows(candidates, [""] * len(dids), [c.txt or "" for c in candidates])

    def positive(self, pair: Pair, query: mbeir.Query) -> int:
        """The pool row of the query's first positive that the pool holds."""
        return next(pair.row[d] for d in pair.qrels[query.qid].dids if d in pair.row)


def recall_report(rows: MBEIRRows, embed: Embed, depth: int = 50) -> dict[str, float]:
    """UniIR's Recall@K per pair against its local pool (``mbeir/{dataset}/task{t}/recall@k``
    for the pair's cut-offs), and the headline average ``mbeir/avg/recall@headline`` (R@5, R@10
    for the two fashion sets), from the sharded search's cosine ranking of ``embed``'s
    embeddings."""
    metrics: dict[str, float] = {}
    headline = []
    for pair in rows.pairs:
        queries = embed(rows.query_rows(pair.queries))
        pool = embed(rows.candidate_rows(pair, pair.dids))
        found = Index.from_array(pool, metric="cosine").search(queries, min(depth, len(pool)))
        ranked = {
            q.qid: [pair.dids[i] for i in row]
            for q, row in zip(pair.queries, found.ids, strict=True)
        }
        for k in mbeir.RECALL_CUTOFFS[(pair.dataset, pair.task)]:
            by_task = mbeir.mean_recall_by_task(ranked, pair.qrels, k)
            metrics[f"mbeir/{pair.name}/recall@{k}"] = by_task[pair.task]
        headline.append(metrics[f"mbeir/{pair.name}/recall@{mbeir.headline_k(pair.dataset)}"])
    metrics["mbeir/avg/recall@headline"] = float(np.mean(headline))
    return metrics
