"""The multi-grain synthetic benchmark as the generative recipe's data: contrastive pairs, the
RL set over the knowledge base's two modalities, and the fast path's metrics and report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jaxrank.data.multigrain import QUERY_SETS, TASKS
from jaxrank.elva import evaluation
from jaxrank.elva.encoders import benchmark
from jaxrank.elva.ret_rows import (
    CANDIDATE_INSTRUCTIONS,
    IMAGE,
    INSTRUCTIONS,
    TEXT,
    BenchmarkRows,
    Embed,
    RLSet,
    candidate_modality,
    concat_rows,
    take_rows,
)


class MultiGrainSource:
    """The benchmark of a config (``world``, ``benchmark``), its held-out sets rendered once."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg
        self.bench = benchmark(cfg)
        self.rows = BenchmarkRows(self.bench)
        n = cfg.eval.num_queries
        self.test_sets = {
            (name, task): self.rows.queries(self.bench.queries("test", task, name, n))
            for name in QUERY_SETS
            for task in range(len(TASKS))
        }

    def corpus(self) -> list[str]:
        """Texts the tiny tokenizer is trained on: descriptions and instructions."""
        return [*self.rows.kb_texts, *INSTRUCTIONS.values(), *CANDIDATE_INSTRUCTIONS]

    def contrastive_rows(self, index: np.ndarray) -> dict[str, Any]:
        """Training queries ``index`` (query i // 4 of task i % 4) and their positives, rows
        interleaved (query, positive) and labelled by entity."""
        tasks = index % len(TASKS)
        queries = [
            self.bench.query("train", int(t), "standard", int(i // len(TASKS)))
            for i, t in zip(index, tasks, strict=True)
        ]
        q = self.rows.queries(
            {
                "images": np.stack([x["image"] for x in queries]),
                "texts": [x["text"] for x in queries],
                "entity": np.array([x["entity"] for x in queries]),
                "task": tasks,
            }
        )
        positives = self.rows.candidates(q["entity"], candidate_modality(tasks))
        b = len(index)
        return take_rows(concat_rows([q, positives]), np.arange(2 * b).reshape(2, b).T.ravel())

    def _kb(self) -> list[dict[str, Any]]:
        entities = np.arange(len(self.rows.kb_texts))
        return [self.rows.candidates(entities, modality) for modality in (IMAGE, TEXT)]

    def rl_set(self) -> RLSet:
        """``rl_data.queries_per_task`` training queries of each task; candidates from the
        knowledge base's modality the task retrieves."""
        n = self.cfg.rl_data.queries_per_task
        parts = [
            self.rows.queries(self.bench.queries("train", t, "standard", n))
            for t in range(len(TASKS))
        ]
        queries = concat_rows(parts)
        task = np.repeat(np.arange(len(TASKS)), n)
        return RLSet(queries, candidate_modality(task), queries["entity"], self._kb())

    def evaluate(self, embed: Embed) -> dict[str, float]:
        """``evaluation.multigrain_metrics`` of the held-out query sets."""
        table = np.stack([embed(rows) for rows in self._kb()])
        embedded = {key: (embed(rows), rows["entity"]) for key, rows in self.test_sets.items()}
        return evaluation.multigrain_metrics(self.bench, embedded, table, tuple(self.cfg.eval.ks))

    def write_report(self, workdir: Path, curve: list[dict], info: dict) -> dict[str, Any]:
        return evaluation.write_report(workdir, self.cfg, curve, info)
