"""ELVA's evaluation on the multi-grain benchmark: Recall@K per task on the standard and
multi-grain query sets against the whole knowledge base of the task's candidate modality, their
averages over tasks (M-BEIR's and MRBench's headline), and grain sensitivity; the curve of
these over RL steps, and the report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxrank import retrieval_eval
from jaxrank.data.multigrain import I2T, QUERY_SETS, TASKS, MultiGrain
from jaxrank.distributed import is_primary
from jaxrank.elva import encoders
from jaxrank.train import report
from jaxrank.train.runlog import read_jsonl

GRAINS = ("shape", "colour", "pattern", "pattern_colour", "nearest")


class Evaluator:
    """Held-out queries rendered once, the encoders jitted once; call it with encoder params
    (and optionally a fixed candidate table) for a flat dict of metrics:
    ``{set}/{task}/recall@K``, ``{set}/avg/recall@K`` and ``gap/{attribute}`` (grain
    sensitivity on the multi-grain set, all tasks pooled)."""

    def __init__(self, cfg: ml_collections.ConfigDict, bench: MultiGrain, graphdef, kb, mesh):
        self.cfg, self.bench, self.kb, self.mesh = cfg, bench, kb, mesh
        n = cfg.eval.num_queries
        self.sets = {
            (name, task): encoders.rows(cfg, bench.queries("test", task, name, n))
            for name in QUERY_SETS
            for task in range(len(TASKS))
        }
        self._embed = jax.jit(encoders.query_embedder(graphdef, cfg))
        self._table = jax.jit(encoders.candidate_embedder(graphdef, cfg))

    def __call__(self, params: Any, table: Any = None) -> dict[str, float]:
        """Queries embedded with ``params``; candidates from ``table`` [2, N, D] (image and
        text embeddings of the knowledge base), by default embedded with ``params`` too."""
        table = self._table(params, self.kb) if table is None else table
        embedded = {
            key: (
                retrieval_eval.embed_in_batches(
                    lambda *b, arrays=arrays: self._embed(
                        params, dict(zip(arrays, b, strict=True))
                    ),
                    list(arrays.values()),
                    self.cfg.eval.batch_size,
                    self.mesh,
                ),
                arrays["entity"],
            )
            for key, arrays in self.sets.items()
        }
        table = np.asarray(jax.device_get(table))
        return multigrain_metrics(self.bench, embedded, table, tuple(self.cfg.eval.ks))


def multigrain_metrics(
    bench: MultiGrain,
    embedded: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]],
    table: np.ndarray,
    ks: tuple[int, ...],
) -> dict[str, float]:
    """The flat metrics dict of embedded query sets (``(query set, task)`` -> (unit query
    embeddings [Q, D], target entities [Q])) against the knowledge base's ``table`` [2, N, D]
    (image, text): ``{set}/{task}/recall@K``, ``{set}/avg/recall@K``, ``gap/{attribute}``."""
    metrics: dict[str, float] = {}
    pooled_scores, pooled_entity = [], []
    for (name, task), (queries, entity) in embedded.items():
        keys = table[int(task == I2T)]
        found = retrieval_eval.entity_retrieval_report(queries, keys, entity, ks)
        for k in ks:
            metrics[f"{name}/{TASKS[task]}/recall@{k}"] = found[f"recall@{k}"]
        if name == "multigrain":
            pooled_scores.append(queries @ keys.T)
            pooled_entity.append(entity)
    for name in QUERY_SETS:
        for k in ks:
            per_task = [metrics[f"{name}/{t}/recall@{k}"] for t in TASKS]
            metrics[f"{name}/avg/recall@{k}"] = float(np.mean(per_task))
    gaps = bench.grain_gaps(np.concatenate(pooled_scores), np.concatenate(pooled_entity))
    metrics.update({f"gap/{grain}": gaps[grain] for grain in GRAINS})
    return metrics


class Curve:
    """The evaluations of one run, a JSON line per step in ``path``; a resumed run skips the
    steps already evaluated."""

    def __init__(self, path: Path):
        self.path = path

    def rows(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def record(self, step: int, evaluate: Callable[[], dict[str, float]]) -> None:
        if any(row["step"] == step for row in self.rows()):
            return
        row = {"step": step, **evaluate()}  # on every process: its collectives need them all
        if is_primary():
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def replace(self, step: int, metrics: dict[str, float]) -> None:
        kept = [row for row in self.rows() if row["step"] != step]
        kept = sorted([*kept, {"step": step, **metrics}], key=lambda row: row["step"])
        report.atomic_write(self.path, "".join(json.dumps(row) + "\n" for row in kept))


def _recall_rows(first: dict, last: dict, k: int) -> list[dict[str, Any]]:
    rows = []
    for name in QUERY_SETS:
        for label, metrics in (("contrastive", first), ("+ RL stage", last)):
            row = {"query set": name, "model": label}
            row.update({t: metrics[f"{name}/{t}/recall@{k}"] for t in (*TASKS, "avg")})
            rows.append(row)
    return rows


def _markdown(cfg, first, last, info, plots, k) -> str:
    changes = []
    for name in QUERY_SETS:
        before, after = first[f"{name}/avg/recall@{k}"], last[f"{name}/avg/recall@{k}"]
        relative = f"{100 * (after / before - 1):+.1f}%" if before else "undefined"
        changes.append(
            f"- {name}: {before:.3f} -> {after:.3f} ({100 * (after - before):+.1f} points, "
            f"{relative} relative)"
        )
    gaps = [
        {"model": label, **{g: m[f"gap/{g}"] for g in GRAINS}}
        for label, m in (("contrastive", first), ("+ RL stage", last))
    ]
    return "\n".join(
        [
            "# ELVA on the multi-grain synthetic benchmark",
            "",
            f"{cfg.eval.num_queries} held-out queries per task and query set, ranked against all "
            f"{cfg.world.num_entities} knowledge-base entries of the task's candidate modality. "
            f"Contrastive stage {cfg.contrastive.steps} steps; RL stage {info.get('rl_steps')} "
            f"steps (batch {cfg.train.batch_size} x G={cfg.rl.num_generations}, beta "
            f"{cfg.rl.beta}, reward alpha {cfg.reward.alpha} / eps {cfg.reward.eps}, "
            f"{cfg.mining.n_hard} hard + {cfg.mining.n_random} random negatives).",
            "",
            f"## Recall@{k}",
            "",
            report.table(_recall_rows(first, last, k), ["query set", "model", *TASKS, "avg"]),
            "",
            *changes,
            "",
            "## Grain sensitivity",
            "",
            "Mean of s(positive) - s(nearest negative that differs in that attribute alone), "
            "multi-grain queries of all tasks pooled:",
            "",
            report.table(gaps, ["model", *GRAINS]),
            "",
            *(f"![{p.stem}]({p.name})" for p in plots),
            "",
        ]
    )


def write_report(
    workdir: Path, cfg: ml_collections.ConfigDict, curve: list[dict], info: dict[str, Any]
) -> dict[str, Any]:
    """report.md / report.json from the curve's first (contrastive) and last (RL) rows, with
    the training and evaluation curves and the grain-sensitivity figure."""
    first, last = curve[0], curve[-1]
    k = 5 if 5 in cfg.eval.ks else cfg.eval.ks[0]
    plots = [
        report.plot_curves(
            workdir / "metrics.jsonl",
            ["train/reward", "train/sampled_top1", "train/kl", "train/head_scale"],
            workdir / "training.png",
            "RL stage",
        ),
        report.plot_curves(
            workdir / "eval.jsonl",
            [f"{name}/avg/recall@{k}" for name in QUERY_SETS],
            workdir / f"recall_at_{k}.png",
            f"Recall@{k} over RL steps",
        ),
        report.plot_bars(
            {g: {"contrastive": first[f"gap/{g}"], "+ RL stage": last[f"gap/{g}"]} for g in GRAINS},
            workdir / "grain_sensitivity.png",
            "grain sensitivity (multi-grain queries)",
            "s(pos) - s(nearest one-off)",
        ),
    ]
    plots = [p for p in plots if p is not None]
    results = {"contrastive": first, "rl": last, "curve": curve, "train": info}
    markdown = _markdown(cfg, first, last, info, plots, k)
    report.write_report(workdir, results, markdown)
    print(report.table(_recall_rows(first, last, k), ["query set", "model", "avg"], fmt="simple"))
    print(f"report: {workdir / 'report.md'}")
    return results
