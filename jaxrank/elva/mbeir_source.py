"""M-BEIR as the generative recipe's data (PAPERS.md §2): contrastive pairs and the RL set from
the training split (``data.rl_fraction`` of each pair's queries, the paper's 1%), each with
its candidates from its own pool; evaluation on the test split's local pools with UniIR's
Recall@K; and a report that puts the paper's number beside jaxrank's.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jaxrank.data import mbeir
from jaxrank.elva.mbeir_rows import MBEIRRows, recall_report
from jaxrank.elva.ret_rows import Embed, RLSet, concat_rows
from jaxrank.train import report

PAPER_AVG = 58.7  # ELVA-7B, M-BEIR (local) average of R@5 (R@10 for the fashion sets)


class MBEIRSource:
    """The configured pairs of ``data.train_split`` (training) and ``data.split`` (test)."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg
        size = cfg.embedder.image_size
        self.train = MBEIRRows(cfg.data, cfg.data.train_split, size)
        self.test = MBEIRRows(cfg.data, cfg.data.split, size)
        # every training query once, pairs in turn: (pair index, query index)
        self.order = [
            (p, q) for p, pair in enumerate(self.train.pairs) for q in range(len(pair.queries))
        ]

    def corpus(self) -> list[str]:
        """Texts a tiny tokenizer is trained on: instructions, queries and candidates."""
        texts = [p for prompts in self.train.instructions.values() for p in prompts]
        for rows in (self.train, self.test):
            for pair in rows.pairs:
                texts += [q.query_txt for q in pair.queries if q.query_txt]
                texts += [c.txt for c in pair.pool.values() if c.txt]
        return texts

    def contrastive_rows(self, index: np.ndarray) -> dict[str, Any]:
        """Training queries ``index`` (cycling over all pairs' queries) and their first
        positives, rows interleaved (query, positive), labelled by the positive's id."""
        parts = []
        for i in index:
            p, q = self.order[int(i) % len(self.order)]
            pair = self.train.pairs[p]
            query = pair.queries[q]
            did = pair.dids[self.train.positive(pair, query)]
            label = np.int32(zlib.crc32(did.encode()) & 0x7FFFFFFF)
            for rows in (self.train.query_rows([query]), self.train.candidate_rows(pair, [did])):
                parts.append(dict(rows, entity=np.array([label])))
        return concat_rows(parts)

    def rl_set(self) -> RLSet:
        """``data.rl_fraction`` of each pair's training queries (at least one), drawn with the
        config's seed; candidates from the query's pool."""
        rng = np.random.default_rng(self.cfg.seed)
        parts, group, positive = [], [], []
        for p, pair in enumerate(self.train.pairs):
            n = max(1, round(self.cfg.data.rl_fraction * len(pair.queries)))
            chosen = np.sort(rng.choice(len(pair.queries), n, replace=False))
            queries = [pair.queries[i] for i in chosen]
            parts.append(self.train.query_rows(queries))
            group += [p] * n
            positive += [self.train.positive(pair, q) for q in queries]
        sets = [self.train.candidate_rows(pair, pair.dids) for pair in self.train.pairs]
        return RLSet(concat_rows(parts), np.array(group), np.array(positive), sets)

    def evaluate(self, embed: Embed) -> dict[str, float]:
        return recall_report(self.test, embed)

    def write_report(self, workdir: Path, curve: list[dict], info: dict) -> dict[str, Any]:
        """report.json / report.md: Recall per pair of the contrastive model and after RL,
        the headline average beside the paper's, and the bad rows of both splits."""
        first, last = curve[0], curve[-1]
        rows = []
        for pair in self.test.pairs:
            k = mbeir.headline_k(pair.dataset)
            key = f"mbeir/{pair.name}/recall@{k}"
            rows.append({"pair": pair.name, "K": k, "contrastive": first[key], "+ RL": last[key]})
        avg = "mbeir/avg/recall@headline"
        rows.append({"pair": "average", "K": "", "contrastive": first[avg], "+ RL": last[avg]})
        data = {"train": self.train.bad.report(), "test": self.test.bad.report()}
        results = {"contrastive": first, "rl": last, "curve": curve, "train": info, "data": data}
        columns = ["pair", "K", "contrastive", "+ RL"]
        markdown = "\n".join(
            [
                "# ELVA on M-BEIR (local pools)",
                "",
                report.table(rows, columns),
                "",
                f"The paper's ELVA-7B average: {PAPER_AVG} (Recall in percent).",
                "",
            ]
        )
        report.write_report(workdir, results, markdown)
        print(report.table(rows, columns, fmt="simple"))
        return results
