"""Region-R1 as published (PAPERS.md §1): a vision-language policy writes ``NO_CROP_NEEDED`` or
an ``image_zoom_in_tool`` call, trained with token-level r-GRPO through LoRA.

Stages, each resumable in the workdir: the frozen scorer, its index and the top-K pools (shared
with the structured recipe) -> the policy's base (a released checkpoint, or a random tiny
Qwen2.5-VL-shaped model for CPU runs) -> a supervised warm start on correctly formatted answers
(``sft/``; the tiny model's "pretraining") -> r-GRPO on LoRA adapters, the base frozen
(``checkpoints/``) -> evaluation of the trained and the warm-start policy (greedy) against the
baselines, with the structured recipe's report.

One r-GRPO step is one compiled program (``mllm_step.make_step``), and so is the evaluation of
one batch (``mllm_evaluation``); the host only tokenises each batch's prompts.
"""

from __future__ import annotations

import functools
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
from jaxrank.region_r1 import benchmark, crop_tool, evaluation, mllm_evaluation
from jaxrank.region_r1.kb_rows import kb_layout, place_kb
from jaxrank.region_r1.mllm_policy import (
    BASE_DIR,
    CropPolicyBase,
    build_base,
    completion_text,
)
from jaxrank.region_r1.mllm_step import BATCH_KEYS, make_step
from jaxrank.region_r1.scorer import Scorer, query_set
from jaxrank.train.checkpoint import Checkpointer
from jaxrank.train.stage import Stage, supervised
from jaxrank.train.workdir import WorkdirError, prepare_workdir
from jaxrank.vlm.finetune import answer_nll_loss, with_adapters

# ---- supervised warm start -------------------------------------------------------------------


def sft_targets(
    cfg: ml_collections.ConfigDict, base: CropPolicyBase, boxes: np.ndarray, original: tuple
) -> list[str]:
    """Each training query's warm-start answer: a tool call on its ground-truth box (scaled to
    the model's frame) for a ``sft.crop_fraction`` of queries drawn at random, else
    ``NO_CROP_NEEDED``. The decision carries no information on purpose: RL learns when to crop."""
    rng = np.random.default_rng(cfg.seed)
    crop = rng.random(len(boxes)) < cfg.sft.crop_fraction
    (height, width), (h, w) = original, base.frame
    scale = np.asarray([w / width, h / height, w / width, h / height])
    return [
        completion_text(crop_tool.REGION if c else crop_tool.FULL, box * scale)
        for c, box in zip(crop, boxes, strict=True)
    ]


def _sft_batches(cfg, base: CropPolicyBase, train: dict[str, Any], mesh):
    """The warm start's batches of query rows and the function that turns one into prompts and
    target answers on the mesh."""
    texts = sft_targets(cfg, base, train["boxes"], train["images"].shape[1:3])

    def place(batch):
        rows = batch["rows"]
        host = base.prompts([train["questions"][r] for r in rows], batch["images"])
        host.update(base.targets([texts[r] for r in rows], cfg.policy.max_new_tokens))
        return parallel.shard_batch(host, mesh)

    arrays = {"images": train["images"], "rows": train["rows"]}
    return array_batches(arrays, cfg.sft.batch_size, cfg.seed), place


def warm_start(cfg, workdir: Path, base: CropPolicyBase, train: dict[str, Any] | None, mesh):
    """The base's parameters after ``sft.steps`` supervised steps on every weight
    (``<workdir>/sft``, resumable); ``train`` may be None once the stage has finished."""
    graphdef, params = nnx.split(base.model, nnx.Param)
    if cfg.sft.steps == 0:
        return graphdef, params
    loss = answer_nll_loss(graphdef, base.grid, adapters=False)
    stage = Stage(cfg.sft, workdir / "sft", params, supervised(loss), seed=cfg.seed, mesh=mesh)
    batches = place = None
    if train is not None and not stage.finished:
        batches, place = _sft_batches(cfg, base, train, mesh)
    return graphdef, stage.run(batches, place=place).params


# ---- the run ---------------------------------------------------------------------------------


def place_step_batch(base: CropPolicyBase, questions, mesh, batch: dict[str, np.ndarray]):
    """A training batch on the mesh, its queries' prompts tokenised (the host's only work in
    a step)."""
    rows = batch.pop("rows")
    prompts = base.prompts([questions[r] for r in rows], batch["images"])
    return parallel.shard_batch({**batch, **prompts}, mesh)


def _train_queries(cfg, scorer, mesh) -> dict[str, Any]:
    if _benchmark(cfg) == "synthetic":
        presets = tuple(cfg.data.train_presets)
        per_preset = cfg.data.train_queries_per_preset
        train = query_set(scorer, "train", presets, per_preset, cfg, mesh)
    else:
        train = benchmark.query_set(cfg, scorer, "train", mesh)
    train["rows"] = np.arange(len(train["images"]), dtype=np.int32)
    return train


def _eval_queries(cfg, scorer, mesh) -> dict[str, dict[str, Any]]:
    if _benchmark(cfg) == "synthetic":
        return {
            preset: query_set(scorer, "test", (preset,), cfg.eval.num_queries, cfg, mesh)
            for preset in cfg.eval.presets
        }
    return {_benchmark(cfg): benchmark.query_set(cfg, scorer, "test", mesh)}


def _benchmark(cfg) -> str:
    name = cfg.data.get("benchmark", "synthetic")
    if name != "synthetic" and name not in benchmark.BENCHMARKS:
        raise ConfigError(
            f"data.benchmark={name!r}: expected 'synthetic' or one of {list(benchmark.BENCHMARKS)}"
        )
    return name


def _scorer(cfg, workdir: Path, mesh):
    if _benchmark(cfg) == "synthetic":
        return Scorer(cfg, workdir, mesh)
    if cfg.sft.steps:
        raise ConfigError(
            f"sft.steps={cfg.sft.steps}: the warm start teaches ground-truth boxes, which "
            f"{_benchmark(cfg)} does not have; start from a pretrained VLM with sft.steps=0"
        )
    return benchmark.BenchmarkScorer(cfg, workdir, mesh)


def _finished(cfg, workdir: Path) -> bool:
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        return checkpointer.latest_step() == cfg.train.steps


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Every stage, each resumed from its checkpoints, then the evaluation and report."""
    _benchmark(cfg)
    workdir = prepare_workdir(workdir, cfg)
    started = time.perf_counter()
    mesh = parallel.mesh_from_config(cfg.mesh)
    scorer = _scorer(cfg, workdir, mesh)
    finished = _finished(cfg, workdir)
    # The warm start may live in another run (like the scorer), so RL seeds can share it.
    source = Path(cfg.warm_start_workdir) if cfg.warm_start_workdir else workdir
    needs_queries = not (finished and (source / BASE_DIR).exists())
    train = _train_queries(cfg, scorer, mesh) if needs_queries else None
    questions = train["questions"] if train else []
    base = build_base(cfg, source, questions, mesh)
    sft_started = time.perf_counter()
    graphdef, params = warm_start(cfg, source, base, train, mesh)
    sft_seconds = time.perf_counter() - sft_started
    graphdef, adapters, rest = with_adapters(cfg.lora, graphdef, params, cfg.seed)
    # The reference policy is the base itself (adapters off), so frozen holds no "ref".
    kb = place_kb(np.asarray(scorer.kb), mesh, kb_layout(cfg))
    frozen = {"kb": kb, "scorer": scorer.params, "base": rest}
    # The device reader of the policy's completions, for the step and the evaluation.
    reader = base.tool_reader()
    step = make_step(cfg, base, graphdef, scorer, reader)
    stage = Stage(cfg.train, workdir, adapters, step, seed=cfg.seed, mesh=mesh, frozen=frozen)
    train_started = time.perf_counter()
    batches = None
    if not finished:
        keys = [k for k in (*BATCH_KEYS, "pool_scores", "rows") if k in train]
        batches = array_batches({k: train[k] for k in keys}, cfg.train.batch_size, cfg.seed)
    place = functools.partial(place_step_batch, base, questions, mesh)
    state = stage.run(batches, place=place)
    with jax.set_mesh(mesh):
        train_seconds = time.perf_counter() - train_started
        query_sets = _eval_queries(cfg, scorer, mesh)
        results = mllm_evaluation.evaluate(
            cfg, base, graphdef, reader, state.params, rest, frozen, scorer, query_sets, mesh
        )
    info = {
        "devices": f"{len(mesh.devices.flat)} x {jax.devices()[0].device_kind}",
        "steps": cfg.train.steps,
        "sft_seconds": sft_seconds,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - started,
        "data": {name: q["report"] for name, q in query_sets.items() if "report" in q},
    }
    evaluation.write_report(
        workdir, cfg, results, info, title="Region-R1 with a vision-language crop policy"
    )
    return results


def evaluate_workdir(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Re-evaluate a finished run (every stage restored from its checkpoints)."""
    workdir = prepare_workdir(workdir, cfg)
    if not _finished(cfg, workdir):
        raise WorkdirError(f"{workdir} holds no finished r-GRPO run of {cfg.train.steps} steps")
    return train_and_evaluate(cfg, workdir)
