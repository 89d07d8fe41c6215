"""ELVA as published (PAPERS.md §2): a vision-language model that summarises its input and
writes ``[RET]``, whose hidden state there is the embedding; on the multi-grain synthetic
benchmark (``multigrain_source``) or on M-BEIR's released files (``mbeir_source``,
``data.benchmark="mbeir"``).

embedder base (a Qwen2-VL checkpoint, or a random tiny one for CPU runs; ``[RET]`` added) ->
contrastive stage: InfoNCE on the ``[RET]`` states of queries and positives embedded by the
same model, each read after the model's own summary (``ret_contrastive``), LoRA on the
language model with the vision tower frozen (or every weight of the tiny model) -> the
contrastive model with fresh adapters for RL, so the KL reference (adapters off) is the
contrastive model -> negatives mined with the sharded search over the embedder's own
embeddings of each query's candidate set (filtered hard + random) -> RL stage: G sampled
summaries per input, ELVA's reward per rollout, GRPO with token-level clipped loss and k3 KL,
one jitted step (``generative_embedding.make_step``) -> the source's Recall@K every
``train.eval_every`` steps, embedded after greedy summaries.
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
from jaxrank.elva import evaluation, generative_embedding
from jaxrank.elva.mbeir_source import MBEIRSource
from jaxrank.elva.multigrain_source import MultiGrainSource
from jaxrank.elva.negatives import mine_grouped
from jaxrank.elva.ret_contrastive import own_summaries, ret_contrastive_loss
from jaxrank.elva.ret_embedder import BASE_DIR, RetEmbedderBase, build_embedder, make_embed
from jaxrank.elva.ret_rows import concat_rows, take_rows
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


SOURCES = {"synthetic": MultiGrainSource, "mbeir": MBEIRSource}


def make_source(cfg: ml_collections.ConfigDict) -> MultiGrainSource | MBEIRSource:
    """The benchmark of ``data.benchmark``: the multi-grain synthetic one (default) or M-BEIR."""
    name = cfg.get("data", {}).get("benchmark", "synthetic")
    if name not in SOURCES:
        raise ConfigError(f"data.benchmark={name!r}: expected one of {sorted(SOURCES)}")
    return SOURCES[name](cfg)


def setup(cfg: ml_collections.ConfigDict, workdir: Path):
    """The mesh, the benchmark, the embedder, and its base ``(graphdef, params)``."""
    mesh = parallel.mesh_from_config(cfg.mesh)
    parallel.require_divisible_batches(cfg, ("train", "contrastive", "eval"), mesh)
    source = make_source(cfg)
    base = build_embedder(cfg.embedder, workdir / BASE_DIR, source.corpus(), cfg.seed, mesh)
    return mesh, source, Embedder(cfg, base, mesh), nnx.split(base.model, nnx.Param)


# -- contrastive stage ----------------------------------------------------------------------


def contrastive_indices(cfg: ml_collections.ConfigDict) -> grain.IterDataset:
    """Endless training query indices, the four tasks in turn (row i is query i // 4 of task
    i % 4), each process its own slice of every batch."""
    per_process = cfg.contrastive.batch_size // jax.process_count()
    ds = grain.MapDataset.range(2**40)[jax.process_index() :: jax.process_count()]
    return ds.map(lambda i: {"index": np.int64(i)}).batch(per_process).to_iter_dataset()


def contrastive_batch(source, embedder: Embedder):
    """``place(batch of indices)``: each query and its positive as interleaved prompt rows."""
    return lambda batch: embedder.batch(source.contrastive_rows(batch["index"]), True)


def contrastive_step(cfg, graphdef, base: RetEmbedderBase, adapters: bool):
    """The contrastive stage's step for ``Stage``: the model's own greedy summaries (the
    rollout, pre-update weights), then InfoNCE at their ``[RET]`` (the planner compiles it
    too)."""
    section = cfg.contrastive
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
    return with_rollout(loss, rollout, 1)


def contrastive_stage(cfg, workdir: Path, source, embedder: Embedder, model) -> tuple:
    """The contrastive model ``(graphdef, params)``, trained (or resumed) in
    ``contrastive_workdir`` (default ``<workdir>/contrastive``; RL runs of one seed may share
    it): LoRA adapters merged into the base (``contrastive.train``
    "lora", the paper's), or every weight ("all": a tiny random model has no pretraining)."""
    graphdef, params = model
    section = cfg.contrastive
    if section.train not in ("lora", "all"):
        raise ConfigError(f"contrastive.train={section.train!r}: expected 'lora' or 'all'")
    adapters = section.train == "lora"
    rest = None
    if adapters:
        graphdef, params, rest = with_adapters(cfg.lora, graphdef, params, cfg.seed)
    step = contrastive_step(cfg, graphdef, embedder.base, adapters)
    shared = cfg.get("contrastive_workdir", "")
    directory = Path(shared) if shared else workdir / CONTRASTIVE_DIR
    stage = Stage(section, directory, params, step, seed=cfg.seed, mesh=embedder.mesh, frozen=rest)
    data = None if stage.finished else contrastive_indices(cfg)
    trained = stage.run(data, place=contrastive_batch(source, embedder)).params
    if not adapters:
        return graphdef, trained
    return nnx.split(merge_lora(join_lora(graphdef, trained, rest)), nnx.Param)


def rl_model(cfg, model) -> tuple[nnx.GraphDef, Any, Any]:
    """The contrastive model with fresh LoRA adapters for RL (zero at the start, so the policy
    starts as the contrastive model, which stays the KL reference with the adapters off)."""
    graphdef, params = model
    return with_adapters(cfg.lora, graphdef, params, cfg.seed + 1)


# -- RL stage -------------------------------------------------------------------------------


def rl_data(cfg, source, embedder: Embedder, embed, adapters, rest):
    """The RL set's batches of instance ids and the function that turns one into prompt rows:
    per instance its query, positive and negatives, consecutive (the rollout's pool). The
    negatives are mined with the contrastive model's embeddings of the query and its set."""
    rl = source.rl_set()
    queries, _ = embedder.embed_rows(embed, adapters, rest, rl.queries)
    tables = [embedder.embed_rows(embed, adapters, rest, rows)[0] for rows in rl.sets]
    negatives = mine_grouped(rl.group, rl.positive, queries, tables, cfg, embedder.mesh)

    def place(batch):
        parts = []
        for r in batch["row"]:
            pool = np.concatenate([[rl.positive[r]], negatives[r]])
            parts += [take_rows(rl.queries, np.array([r])), take_rows(rl.sets[rl.group[r]], pool)]
        return embedder.batch(concat_rows(parts), teacher_forced=False)

    ids = {"row": np.arange(len(rl.group))}
    return array_batches(ids, cfg.train.batch_size, cfg.seed), place


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
        cfg.embedder.get("logit_chunk", 0),
    )


# -- evaluation -----------------------------------------------------------------------------


class GenerativeEvaluator:
    """Called with adapters: the source's metrics of embeddings after greedy summaries, plus
    ``ret_rate`` (the rows that wrote ``[RET]`` within the cap)."""

    def __init__(self, cfg, source, embedder: Embedder, graphdef):
        self.source, self.embedder = source, embedder
        self.embed = make_embed(graphdef, embedder.base, cfg.embedder.summary_tokens)

    def __call__(self, adapters: Any, rest: Any) -> dict[str, float]:
        rates = []

        def embed(rows):
            embedded, rate = self.embedder.embed_rows(self.embed, adapters, rest, rows)
            rates.append(rate)
            return embedded

        metrics = self.source.evaluate(embed)
        return {**metrics, "ret_rate": float(np.mean(rates))}


# -- the run --------------------------------------------------------------------------------


class Run(NamedTuple):
    """What both entry points need: the contrastive stage done, the RL stage built."""

    source: MultiGrainSource | MBEIRSource
    embedder: Embedder
    rest: Any  # the merged base the RL adapters sit on (and the KL reference)
    stage: Stage
    evaluator: GenerativeEvaluator
    contrastive_seconds: float


def prepare(cfg, workdir: Path) -> Run:
    """The contrastive stage trained (or restored), the RL stage and the evaluator built."""
    mesh, source, embedder, model = setup(cfg, workdir)
    started = time.perf_counter()
    contrastive = contrastive_stage(cfg, workdir, source, embedder, model)
    contrastive_seconds = time.perf_counter() - started
    graphdef, rl_adapters, rest = rl_model(cfg, contrastive)
    step = functools.partial(rl_step, cfg, graphdef, embedder)
    stage = Stage(cfg.train, workdir, rl_adapters, step, seed=cfg.seed, mesh=mesh, frozen=rest)
    evaluator = GenerativeEvaluator(cfg, source, embedder, graphdef)
    return Run(source, embedder, rest, stage, evaluator, contrastive_seconds)


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Both stages, each resumed from its checkpoints, with evaluations every
    ``train.eval_every`` RL steps (step 0 is the contrastive model)."""
    workdir = prepare_workdir(workdir, cfg)
    run = prepare(cfg, workdir)
    source, embedder, rest, stage, evaluator = run[:5]
    curve = evaluation.Curve(workdir / "eval.jsonl")
    curve.record(0, lambda: evaluator(stage.state.params, rest))
    rl_started = time.perf_counter()
    data = place = None
    if cfg.train.steps and not stage.finished:
        adapters = stage.state.params
        data, place = rl_data(cfg, source, embedder, evaluator.embed, adapters, rest)
    every, steps = cfg.train.eval_every, cfg.train.steps
    stops = sorted({*range(every, steps, every), steps} - {0})  # train.steps 0: no RL stage
    for stop in stops:
        adapters = stage.run(data, place=place, until=stop).params
        curve.record(stop, lambda a=adapters: evaluator(a, rest))
    info = {
        "devices": f"{len(embedder.mesh.devices.flat)} x {jax.devices()[0].device_kind}",
        "contrastive_seconds": run.contrastive_seconds,
        "rl_seconds": time.perf_counter() - rl_started,
        "rl_steps": cfg.train.steps,
    }
    return source.write_report(workdir, curve.rows(), info)


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
    return run.source.write_report(workdir, curve.rows(), {**info, "rl_steps": step})
