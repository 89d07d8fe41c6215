"""RAR (PAPERS.md §3): retrieve the top-k classes of a query image from a memory of labelled
shots, then let a vision-language ranker order them; the prediction is the first class.

Stages, each resumable in the workdir:

1. data: labelled images split once (``data.split_seed``) into the ranker's fine-tuning pool,
   the shot pool and the test queries (``data/labelled_images.py``);
2. the ranker's base (``rar.ranker``: a released Qwen2-VL checkpoint, or a random tiny one);
3. ranking fine-tuning (``finetune/``): the pool split into D_a / D_b, the examples of
   ``ranking_data``, the answer's negative log-likelihood. ``finetune.train = "lora"`` trains
   adapters on the frozen base, as the paper does; ``"all"`` trains every weight (a random tiny
   model has nothing for adapters to steer), and the evaluation then runs with zero adapters;
4. evaluation at each shot count: a memory of ``shots`` images per class streamed through the
   ``Index``; top-k classes per query; kNN (first retrieved class) against the ranker
   (generated answer, parsed; and the listwise score path), plus two references: whether the
   truth is in the top k at all, and kNN with the ranker's fine-tuning pool added to the
   memory (what the same labelled images give without a ranker).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxrank import parallel
from jaxrank.configs import ConfigError
from jaxrank.data.arrays import array_batches
from jaxrank.data.labelled_images import LabelledImages
from jaxrank.rar.class_memory import ClassMemory
from jaxrank.rar.data import RARData, load_data
from jaxrank.rar.memory_encoder import Embed, memory_embedder
from jaxrank.rar.ranker import BASE_DIR, RankerBase, build_ranker, make_scorer
from jaxrank.rar.ranking_data import ranking_examples, split_halves
from jaxrank.rar.ranking_text import ranking_report
from jaxrank.train import report
from jaxrank.train.checkpoint import Checkpointer
from jaxrank.train.stage import Stage, supervised
from jaxrank.train.workdir import WorkdirError, prepare_workdir
from jaxrank.vlm.finetune import answer_nll_loss, with_adapters
from jaxrank.vlm.programs import make_sampler

STRATEGIES = ("knn", "rar_generate", "rar_score", "truth_in_top_k", "knn_with_ranker_pool")


def k_for(cfg: ml_collections.ConfigDict, shots: int) -> int:
    """k retrieved classes at ``shots`` shots (the paper: 5, and 4 in the 4-shot setting)."""
    return int(cfg.k_by_shots.get(str(shots), cfg.k))


def finetune_steps(cfg: ml_collections.ConfigDict, pool: int) -> int:
    """One pass (``finetune.epochs``) over the examples of a pool of ``pool`` images."""
    examples = (pool - pool // 2) * cfg.finetune.sets_per_image
    return math.ceil(cfg.finetune.epochs * examples / cfg.finetune.batch_size)


def _finetune_batches(cfg, ranker: RankerBase, pool: LabelledImages, embed: Embed, mesh):
    """The ranking fine-tuning's batches of example rows and the function that turns one into
    prompts and target rankings on the mesh."""
    rng = np.random.default_rng(cfg.seed)
    half_a, half_b = split_halves(len(pool), rng)
    memory = ClassMemory.from_embeddings(embed(pool.images[half_a]), pool.labels[half_a])
    queries = pool.take(half_b)
    examples = ranking_examples(
        memory,
        embed(queries.images),
        queries.labels,
        len(pool.names),
        rng,
        k=cfg.k,
        neighbours=cfg.finetune.neighbours,
        sets_per_image=cfg.finetune.sets_per_image,
    )

    def place(batch):
        chosen = [examples[r] for r in batch["rows"]]
        images = queries.images[[e.query for e in chosen]]
        shown = [pool.names_of(e.shown) for e in chosen]
        host = ranker.prompts(images, shown, cfg.ranker.get("train_prompt", "generic"))
        targets = [pool.names_of(e.target) for e in chosen]
        host.update(ranker.answers(targets, cfg.ranker.max_new_tokens))
        return parallel.shard_batch(host, mesh)

    rows = {"rows": np.arange(len(examples))}
    return array_batches(rows, cfg.finetune.batch_size, cfg.seed), place


def finetuned_ranker(cfg, workdir: Path, ranker: RankerBase, pool, embed, mesh, train: bool):
    """(graphdef, adapters, rest) after ranking fine-tuning (``<workdir>/finetune``); with
    ``train`` False the stage must have finished."""
    section = cfg.finetune.copy_and_resolve_references()
    section.steps = finetune_steps(cfg, len(pool))
    graphdef, params = nnx.split(ranker.model, nnx.Param)
    if cfg.finetune.train not in ("lora", "all"):
        raise ConfigError(f"finetune.train={cfg.finetune.train!r}: expected 'lora' or 'all'")
    whole = cfg.finetune.train == "all"
    rest = None
    if not whole:
        graphdef, params, rest = with_adapters(cfg.lora, graphdef, params, cfg.seed)
    loss = supervised(answer_nll_loss(graphdef, ranker.grid, adapters=not whole))
    stage = Stage(
        section, workdir / "finetune", params, loss, seed=cfg.seed, mesh=mesh, frozen=rest
    )
    batches = place = None
    if train and not stage.finished:
        batches, place = _finetune_batches(cfg, ranker, pool, embed, mesh)
    params = stage.run(batches, place=place).params
    return (
        with_adapters(cfg.lora, graphdef, params, cfg.seed) if whole else (graphdef, params, rest)
    )


# ---- evaluation ------------------------------------------------------------------------------


def embed_all(embed: Embed, images: np.ndarray, batch: int) -> np.ndarray:
    """``embed`` over ``images`` in batches (the last one padded, so it compiles once)."""
    rows = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        pad = np.repeat(chunk[-1:], batch - len(chunk), axis=0)
        rows.append(embed(np.concatenate([chunk, pad]))[: len(chunk)])
    return np.concatenate(rows)


def shot_memory(embed: Embed, shots: LabelledImages, batch: int) -> ClassMemory:
    """The few-shot memory, each batch embedded and added to the ``Index`` in turn."""
    batches = (
        {"images": shots.images[i : i + batch], "label": shots.labels[i : i + batch]}
        for i in range(0, len(shots), batch)
    )
    return ClassMemory.from_encoder(lambda b: embed(b["images"]), batches, num_rows=len(shots))


class RankerPrograms:
    """The ranker's two readings of one batch of queries, compiled once per prompt shape."""

    def __init__(self, cfg, ranker: RankerBase, graphdef, adapters, rest, mesh):
        self.cfg, self.ranker, self.mesh = cfg, ranker, mesh
        self.adapters, self.rest = adapters, rest
        settings = ranker.sampling(cfg.ranker.max_new_tokens, 0.0)
        self.sample = make_sampler(graphdef, settings, 1, ranker.grid)
        self.score = make_scorer(graphdef, ranker.grid)

    def __call__(self, images: np.ndarray, classes: np.ndarray, names: tuple[str, ...]):
        """Per query: the generated answer's ``Ranking`` over ``classes [Q, k]`` (indices
        into each row; ``names`` by class id) and the score path's best index."""
        size, rankings, best = self.cfg.eval.batch_size, [], []
        place = lambda tree: parallel.shard_batch(tree, self.mesh)
        for start in range(0, len(images), size):
            shown = [[names[c] for c in row] for row in classes[start : start + size].tolist()]
            n = len(shown)
            shown += [shown[-1]] * (size - n)  # pad the last batch: one compiled program
            rows = images[start : start + size]
            rows = np.concatenate([rows, np.repeat(rows[-1:], size - n, axis=0)])
            style = self.cfg.ranker.get("eval_prompt", "generic")
            prompts = place(self.ranker.prompts(rows, shown, style))
            free = np.full((size, 1), -1, np.int32)
            out = self.sample(self.adapters, self.rest, prompts, jax.random.key(0), free)
            tokens, mask = jax.device_get((out.tokens, out.mask))
            rankings += self.ranker.read(tokens[:n], mask[:n], shown[:n])
            openings = place(self.ranker.openings(shown, self.cfg.ranker.opening_length))
            scores = self.score(self.adapters, self.rest, prompts, openings)
            best.append(np.asarray(scores)[:n].argmax(axis=1))
        return rankings, np.concatenate(best)


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted == labels))


def evaluate(cfg, programs: RankerPrograms, data: RARData, embed: Embed) -> list[dict[str, Any]]:
    """One row per shot count: each strategy's top-1 accuracy on the test queries, and the
    generated answers' parse outcomes."""
    batch, test = cfg.eval.batch_size, data.test
    queries = embed_all(embed, test.images, batch)
    pool_rows = embed_all(embed, data.ranker_pool.images, batch)
    same_classes = data.ranker_pool.names == test.names
    rows = []
    for shots in cfg.eval.shots:
        k = k_for(cfg, shots)
        chosen = data.shots[shots]
        classes, _ = shot_memory(embed, chosen, batch).top_classes(queries, k)
        rankings, best = programs(test.images, classes, test.names)
        every = np.arange(len(classes))
        generated = classes[every, [r.prediction for r in rankings]]
        row = {
            "shots": shots,
            "k": k,
            "knn": accuracy(classes[:, 0], test.labels),
            "rar_generate": accuracy(generated, test.labels),
            "rar_score": accuracy(classes[every, best], test.labels),
            "truth_in_top_k": float(np.mean((classes == test.labels[:, None]).any(axis=1))),
            "answers": ranking_report(rankings),
        }
        if same_classes:  # the ranker's pool is labelled with the test's classes
            with_pool = ClassMemory.from_embeddings(
                np.concatenate([embed_all(embed, chosen.images, batch), pool_rows]),
                np.concatenate([chosen.labels, data.ranker_pool.labels]),
            )
            found = with_pool.top_classes(queries, 1)[0][:, 0]
            row["knn_with_ranker_pool"] = accuracy(found, test.labels)
        rows.append(row)
    return rows


def write_report(workdir: Path, cfg, rows, info: dict[str, Any]) -> None:
    present = [s for s in STRATEGIES if s in rows[0]]
    columns = ["shots", "k", *present]
    series = {s: [r[s] for r in rows] for s in present}
    shots = [r["shots"] for r in rows]
    plot = report.plot_lines(
        shots, series, workdir / "accuracy.png", "RAR: top-1 accuracy by shots", "shots"
    )
    outcomes = [{"shots": r["shots"], **r["answers"]} for r in rows]
    markdown = "\n\n".join(
        [
            f"# RAR on {cfg.data.source} (seed {cfg.seed})",
            "Images: ranker pool {}, largest memory {}, test {}.".format(*info["sizes"]),
            "Top-1 accuracy on the test queries:",
            report.table(rows, columns),
            "The ranker's generated answers:",
            report.table(outcomes, list(outcomes[0])),
            f"![accuracy]({plot.name})",
            f"Fine-tuning {info['finetune_seconds']:.0f} s, evaluation "
            f"{info['eval_seconds']:.0f} s on {info['devices']}.",
        ]
    )
    report.write_report(workdir, {"rows": rows, "info": info}, markdown + "\n")


def _finished(cfg, workdir: Path, pool: int) -> bool:
    with Checkpointer(workdir / "finetune" / "checkpoints") as checkpointer:
        return checkpointer.latest_step() == finetune_steps(cfg, pool)


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path) -> list[dict]:
    """Every stage, each resumed from its checkpoints, then the evaluation and report."""
    return _run(cfg, prepare_workdir(workdir, cfg), train=True)


def evaluate_workdir(cfg: ml_collections.ConfigDict, workdir: str | Path) -> list[dict]:
    """Re-evaluate a finished run (the fine-tuned ranker restored from its checkpoint)."""
    return _run(cfg, prepare_workdir(workdir, cfg), train=False)


def _run(cfg, workdir: Path, train: bool) -> list[dict]:
    started = time.perf_counter()
    mesh = parallel.mesh_from_config(cfg.mesh)
    data = load_data(cfg)
    pool = data.ranker_pool
    if not train and not _finished(cfg, workdir, len(pool)):
        raise WorkdirError(f"{workdir} holds no finished ranking fine-tuning; train it first")
    embed = memory_embedder(cfg.memory)
    names = tuple(dict.fromkeys((*pool.names, *data.test.names)))
    ranker = build_ranker(cfg, workdir / BASE_DIR, names, mesh)
    graphdef, adapters, rest = finetuned_ranker(cfg, workdir, ranker, pool, embed, mesh, train)
    finetuned = time.perf_counter()
    with jax.set_mesh(mesh):
        programs = RankerPrograms(cfg, ranker, graphdef, adapters, rest, mesh)
        rows = evaluate(cfg, programs, data, embed)
    info = {
        "devices": f"{len(mesh.devices.flat)} x {jax.devices()[0].device_kind}",
        "sizes": [len(pool), len(data.shots[max(data.shots)]), len(data.test)],
        "finetune_steps": finetune_steps(cfg, len(pool)),
        "finetune_seconds": finetuned - started,
        "eval_seconds": time.perf_counter() - finetuned,
    }
    if data.bad_rows is not None:
        info["data"] = data.bad_rows
    write_report(workdir, cfg, rows, info)
    return rows
