"""ELVA as published (PAPERS.md §2) on the multi-grain benchmark: a vision-language model that
summarises its input and writes ``[RET]``, whose hidden state there is the embedding.

embedder base (a Qwen2-VL checkpoint, or a random tiny one for CPU runs; ``[RET]`` added) ->
contrastive stage: LoRA on the language model, the vision tower frozen, InfoNCE on the
``[RET]`` states of queries and positives embedded by the same model, each teacher-forced
through its summary (``ret_contrastive``) -> the adapters merged into the base, fresh ones for
RL, so the KL reference (adapters off) is the contrastive model -> negatives mined with the
sharded search over the embedder's own knowledge-base embeddings (filtered hard + random) ->
RL stage: G sampled summaries per input, ELVA's reward per rollout, GRPO with token-level
clipped loss and k3 KL, one jitted step (``generative_embedding.make_step``) -> Recall@K on the
standard and multi-grain sets and grain sensitivity every ``train.eval_every`` steps, embedded
with greedy summaries.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import grain
import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxrank import parallel
from jaxrank.configs import ConfigError
from jaxrank.data.arrays import array_batches
from jaxrank.data.multigrain import QUERY_SETS, TASKS, MultiGrain
from jaxrank.elva import evaluation, generative_embedding
from jaxrank.elva.encoders import benchmark
from jaxrank.elva.negatives import mine
from jaxrank.elva.ret_contrastive import own_summaries, ret_contrastive_loss
from jaxrank.elva.ret_embedder import BASE_DIR, RetEmbedderBase, build_embedder, make_embed
from jaxrank.elva.ret_rows import (
    CANDIDATE_INSTRUCTIONS,
    IMAGE,
    INSTRUCTIONS,
    TEXT,
    BenchmarkRows,
    candidate_modality,
    concat_rows,
    take_rows,
)
from jaxrank.elva.reward import ELVARewardConfig
from jaxrank.models.lora import join_lora, merge_lora
from jaxrank.rl.grpo import GRPOConfig
from jaxrank.train.stage import Stage, with_rollout
from jaxrank.train.workdir import prepare_workdir
from jaxrank.vlm.finetune import with_adapters
from jaxrank.vlm.programs import vlm_prompt

CONTRASTIVE_DIR = "contrastive"


class Embedder:
    """The embedder's base, and what turns rows into prompt batches on the mesh."""

    def __init__(self, cfg: ml_collections.ConfigDict, base: RetEmbedderBase, mesh):
        self.cfg, self.base, self.mesh = cfg, base, mesh
        self.length = cfg.embedder.summary_tokens + 1  # the summary, then [RET]

    def batch(self, rows: dict[str, Any], teacher_forced: bool) -> dict[str, Any]:
        """Host prompt arrays of ``rows`` (with their summary + ``[RET]`` targets when
        ``teacher_forced``), placed on the mesh."""
        host = self.base.prompts(
            rows["instructions"], rows["texts"], rows["images"], rows["has_image"]
        )
        if teacher_forced:
            host.update(self.base.answers(rows["summaries"], self.length))
            host["entity"] = rows["entity"]
        return parallel.shard_batch(host, self.mesh)

    def embed_rows(self, embed, adapters, rest, rows: dict[str, Any]) -> tuple[np.ndarray, float]:
        """Unit embeddings [N, W] of every row (greedy summaries, in fixed-size batches, the
        last one padded) and the fraction of rows that wrote ``[RET]``."""
        size, n = self.cfg.eval.batch_size, len(rows["entity"])
        out, found = [], []
        for start in range(0, n, size):
            index = np.minimum(np.arange(start, start + size), n - 1)
            emb, wrote = embed(adapters, rest, self.batch(take_rows(rows, index), False))
            keep = min(size, n - start)
            out.append(np.asarray(jax.device_get(emb), np.float32)[:keep])
            found.append(np.asarray(jax.device_get(wrote))[:keep])
        return np.concatenate(out), float(np.concatenate(found).mean())


def _corpus(rows: BenchmarkRows) -> list[str]:
    """Texts the tiny tokenizer is trained on: descriptions and instructions."""
    return [*rows.kb_texts, *INSTRUCTIONS.values(), *CANDIDATE_INSTRUCTIONS]


def setup(cfg: ml_collections.ConfigDict, workdir: Path):
    """The mesh, the benchmark and its rows, the embedder, and its base ``(graphdef, params)``."""
    mesh = parallel.mesh_from_config(cfg.mesh)
    parallel.require_divisible_batches(cfg, ("train", "contrastive", "eval"), mesh)
    bench = benchmark(cfg)
    rows = BenchmarkRows(bench)
    base = build_embedder(cfg.embedder, workdir / BASE_DIR, _corpus(rows), cfg.seed, mesh)
    return mesh, bench, rows, Embedder(cfg, base, mesh), nnx.split(base.model, nnx.Param)


# -- contrastive stage ----------------------------------------------------------------------


def contrastive_indices(cfg: ml_collections.ConfigDict) -> grain.IterDataset:
    """Endless training query indices, the four tasks in turn (row i is query i // 4 of task
    i % 4), each process its own slice of every batch."""
    per_process = cfg.contrastive.batch_size // jax.process_count()
    ds = grain.MapDataset.range(2**40)[jax.process_index() :: jax.process_count()]
    return ds.map(lambda i: {"index": np.int64(i)}).batch(per_process).to_iter_dataset()


def contrastive_batch(bench: MultiGrain, rows: BenchmarkRows, embedder: Embedder):
    """``place(batch of indices)``: each query and its positive as interleaved prompt rows."""

    def place(batch):
        index = batch["index"]
        queries = [
            bench.query("train", int(i % len(TASKS)), "standard", int(i // len(TASKS)))
            for i in index
        ]
        q = rows.queries(
            {
                "images": np.stack([x["image"] for x in queries]),
                "texts": [x["text"] for x in queries],
                "entity": np.array([x["entity"] for x in queries]),
                "task": np.asarray(index % len(TASKS)),
            }
        )
        positives = rows.candidates(q["entity"], candidate_modality(index % len(TASKS)))
        b = len(index)
        pairs = concat_rows([q, positives])
        interleaved = take_rows(pairs, np.arange(2 * b).reshape(2, b).T.reshape(-1))
        return embedder.batch(interleaved, teacher_forced=True)

    return place


def contrastive_stage(cfg, workdir: Path, bench, rows, embedder: Embedder, model) -> tuple:
    """The contrastive model ``(graphdef, params)``, trained (or resumed) in
    ``<workdir>/contrastive``: LoRA adapters merged into the base (``contrastive.train``
    "lora", the paper's), or every weight ("all": a tiny random model has no pretraining)."""
    graphdef, params = model
    section = cfg.contrastive
    if section.train not in ("lora", "all"):
        raise ConfigError(f"contrastive.train={section.train!r}: expected 'lora' or 'all'")
    adapters = section.train == "lora"
    rest = None
    if adapters:
        graphdef, params, rest = with_adapters(cfg.lora, graphdef, params, cfg.seed)
    base = embedder.base
    loss = ret_contrastive_loss(
        graphdef,
        base.grid,
        base.ret_id,
        section.temperature,
        section.summary_weight,
        adapters=adapters,
    )
    settings = base.ret_sampling(cfg.embedder.summary_tokens, section.sampling_temperature)
    rollout = own_summaries(graphdef, base.grid, settings, base.ret_id, adapters=adapters)
    step = with_rollout(loss, rollout, 1)
    directory = workdir / CONTRASTIVE_DIR
    stage = Stage(section, directory, params, step, seed=cfg.seed, mesh=embedder.mesh, frozen=rest)
    data = None if stage.finished else contrastive_indices(cfg)
    trained = stage.run(data, place=contrastive_batch(bench, rows, embedder)).params
    if not adapters:
        return graphdef, trained
    return nnx.split(merge_lora(join_lora(graphdef, trained, rest)), nnx.Param)


def rl_model(cfg, model) -> tuple[nnx.GraphDef, Any, Any]:
    """The contrastive model with fresh LoRA adapters for RL (zero at the start, so the policy
    starts as the contrastive model, which stays the KL reference with the adapters off)."""
    graphdef, params = model
    return with_adapters(cfg.lora, graphdef, params, cfg.seed + 1)


# -- RL stage -------------------------------------------------------------------------------


def rl_instances(bench: MultiGrain, rows: BenchmarkRows, cfg) -> tuple[dict, np.ndarray]:
    """The RL set: ``rl_data.queries_per_task`` training queries of each task, as rows, and
    their tasks."""
    n = cfg.rl_data.queries_per_task
    parts = [rows.queries(bench.queries("train", t, "standard", n)) for t in range(len(TASKS))]
    return concat_rows(parts), np.repeat(np.arange(len(TASKS), dtype=np.int32), n)


def candidate_table(embedder: Embedder, embed, adapters, rest, rows: BenchmarkRows):
    """``([2, N, W] image and text embeddings of the knowledge base, [RET] rate)``."""
    entities = np.arange(len(rows.kb_texts))
    tables, rates = [], []
    for modality in (IMAGE, TEXT):
        emb, rate = embedder.embed_rows(embed, adapters, rest, rows.candidates(entities, modality))
        tables.append(emb)
        rates.append(rate)
    return np.stack(tables), float(np.mean(rates))


def rl_batch(instances: dict, task: np.ndarray, negatives: np.ndarray, rows, embedder: Embedder):
    """``place(batch of instance ids)``: per instance its query, positive and negatives as
    consecutive prompt rows (the rollout's pool)."""

    def place(batch):
        parts = []
        for r in batch["row"]:
            modality = candidate_modality(task[r])
            pool = np.concatenate([[instances["entity"][r]], negatives[r]])
            parts += [take_rows(instances, np.array([r])), rows.candidates(pool, modality)]
        joined = concat_rows(parts)
        return embedder.batch(joined, teacher_forced=False)

    return place


def rl_step(cfg, graphdef, embedder: Embedder, optimizer):
    """The RL stage's un-jitted step (``generative_embedding.make_step``)."""
    grid = embedder.base.grid
    prompt_of = lambda model, batch: (model.language_model, vlm_prompt(model, batch, grid))
    settings = embedder.base.ret_sampling(cfg.embedder.summary_tokens + 1, cfg.sampling.temperature)
    return generative_embedding.make_step(
        graphdef,
        prompt_of,
        settings,
        2 + cfg.mining.n_hard + cfg.mining.n_random,
        embedder.base.ret_id,
        GRPOConfig(**cfg.rl.to_dict()),
        ELVARewardConfig(**cfg.reward.to_dict()),
        optimizer,
        cfg.missing_ret_reward,
    )


# -- evaluation -----------------------------------------------------------------------------


class GenerativeEvaluator:
    """Held-out query rows built once; called with adapters, the flat metrics dict of
    ``evaluation.multigrain_metrics`` plus ``ret_rate`` (rows that wrote ``[RET]``)."""

    def __init__(self, cfg, bench: MultiGrain, rows: BenchmarkRows, embedder: Embedder, graphdef):
        self.cfg, self.bench, self.rows, self.embedder = cfg, bench, rows, embedder
        n = cfg.eval.num_queries
        self.sets = {
            (name, task): rows.queries(bench.queries("test", task, name, n))
            for name in QUERY_SETS
            for task in range(len(TASKS))
        }
        self.embed = make_embed(graphdef, embedder.base, cfg.embedder.summary_tokens)

    def __call__(self, adapters: Any, rest: Any) -> dict[str, float]:
        table, table_rate = candidate_table(self.embedder, self.embed, adapters, rest, self.rows)
        embedded, rates = {}, [table_rate]
        for key, set_rows in self.sets.items():
            emb, rate = self.embedder.embed_rows(self.embed, adapters, rest, set_rows)
            embedded[key] = (emb, set_rows["entity"])
            rates.append(rate)
        metrics = evaluation.multigrain_metrics(
            self.bench, embedded, table, tuple(self.cfg.eval.ks)
        )
        return {**metrics, "ret_rate": float(np.mean(rates))}


# -- the run --------------------------------------------------------------------------------


class Run(NamedTuple):
    """What both entry points need: the contrastive stage done, the RL stage built."""

    bench: MultiGrain
    rows: BenchmarkRows
    embedder: Embedder
    rest: Any  # the merged base the RL adapters sit on (and the KL reference)
    stage: Stage
    evaluator: GenerativeEvaluator
    contrastive_seconds: float


def prepare(cfg, workdir: Path) -> Run:
    """The contrastive stage trained (or restored), the RL stage and the evaluator built."""
    mesh, bench, rows, embedder, model = setup(cfg, workdir)
    started = time.perf_counter()
    contrastive = contrastive_stage(cfg, workdir, bench, rows, embedder, model)
    contrastive_seconds = time.perf_counter() - started
    graphdef, rl_adapters, rest = rl_model(cfg, contrastive)
    step = functools.partial(rl_step, cfg, graphdef, embedder)
    stage = Stage(cfg.train, workdir, rl_adapters, step, seed=cfg.seed, mesh=mesh, frozen=rest)
    evaluator = GenerativeEvaluator(cfg, bench, rows, embedder, graphdef)
    return Run(bench, rows, embedder, rest, stage, evaluator, contrastive_seconds)


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Both stages, each resumed from its checkpoints, with evaluations every
    ``train.eval_every`` RL steps (step 0 is the contrastive model)."""
    workdir = prepare_workdir(workdir, cfg)
    run = prepare(cfg, workdir)
    bench, rows, embedder, rest, stage, evaluator = run[:6]
    curve = evaluation.Curve(workdir / "eval.jsonl")
    curve.record(0, lambda: evaluator(stage.state.params, rest))
    rl_started = time.perf_counter()
    data = None
    if not stage.finished:
        instances, task = rl_instances(bench, rows, cfg)
        embed = evaluator.embed
        queries, _ = embedder.embed_rows(embed, stage.state.params, rest, instances)
        table, _ = candidate_table(embedder, embed, stage.state.params, rest, rows)
        mined_for = {"task": task, "entity": instances["entity"]}
        negatives = mine(mined_for, queries, table, cfg, embedder.mesh)
        ids = {"row": np.arange(len(task))}
        data = array_batches(ids, cfg.train.batch_size, cfg.seed)
        place = rl_batch(instances, task, negatives, rows, embedder)
    else:
        place = None
    stops = sorted(
        {*range(cfg.train.eval_every, cfg.train.steps, cfg.train.eval_every), cfg.train.steps}
    )
    for stop in stops:
        adapters = stage.run(data, place=place, until=stop).params
        curve.record(stop, lambda a=adapters: evaluator(a, rest))
    info = {
        "devices": f"{len(embedder.mesh.devices.flat)} x {jax.devices()[0].device_kind}",
        "contrastive_seconds": run.contrastive_seconds,
        "rl_seconds": time.perf_counter() - rl_started,
        "rl_steps": cfg.train.steps,
    }
    return evaluation.write_report(workdir, cfg, curve.rows(), info)


def evaluate_workdir(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Re-evaluate a run's latest RL checkpoint (and the contrastive model) and rewrite its
    report."""
    workdir = prepare_workdir(workdir, cfg)
    run = prepare(cfg, workdir)
    curve = evaluation.Curve(workdir / "eval.jsonl")
    curve.replace(0, run.evaluator(run.stage.state.params, run.rest))
    step = run.stage.latest_step()
    curve.replace(step, run.evaluator(run.stage.restore().params, run.rest))
    previous = workdir / "report.json"
    info = json.loads(previous.read_text())["train"] if previous.exists() else {}
    return evaluation.write_report(workdir, cfg, curve.rows(), {**info, "rl_steps": step})
