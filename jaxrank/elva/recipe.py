"""ELVA (PAPERS.md §2) on the synthetic world's multi-grain benchmark, wired from jaxrank's parts.

contrastive stage (InfoNCE over the four tasks' queries and their positives, in-batch
negatives) -> negatives for each RL instance mined with the sharded search (filtered hard +
random) -> RL stage from the contrastive encoder: G query embeddings sampled from the Gaussian
head, ELVA's reward against the positive and the negatives (embedded by the contrastive model,
or re-embedded every step with ``candidates="current"``, and sampled too with
``policy_samples="all"``), GRPO with a KL to the contrastive model, all in one jitted step
-> Recall@K on the standard and multi-grain sets and grain sensitivity, every
``train.eval_every`` steps (``elva.evaluation``).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxrank import losses, parallel, retrieval_eval
from jaxrank.configs import ConfigError
from jaxrank.contrastive.embedders import knowledge_base
from jaxrank.contrastive.encoder import build_model, encoder_inputs
from jaxrank.data.arrays import array_batches
from jaxrank.data.multigrain import TASKS, MultiGrain
from jaxrank.elva import embedding_grpo, evaluation
from jaxrank.elva.encoders import benchmark, candidate_embedder, query_embedder, rows
from jaxrank.elva.gaussian_head import GaussianEmbeddingHead
from jaxrank.elva.negatives import mine
from jaxrank.elva.reward import ELVARewardConfig, elva_reward_terms
from jaxrank.elva.task_embedding import candidates_of
from jaxrank.rl.grpo import GRPOConfig, reward_term_means
from jaxrank.train.stage import Stage, supervised
from jaxrank.train.step import make_train_step
from jaxrank.train.workdir import prepare_workdir

CONTRASTIVE_DIR = "contrastive"
# What the contrastive stage depends on: RL runs that agree on these may share it.
CONTRASTIVE_KEYS = ("seed", "world", "model", "benchmark", "contrastive")


# -- contrastive stage ----------------------------------------------------------------------


def contrastive_data(bench: MultiGrain, cfg: ml_collections.ConfigDict) -> grain.IterDataset:
    """Endless training queries, the four tasks in turn (row i is query i // 4 of task
    i % 4); each process reads its own slice of every batch."""
    batch = cfg.contrastive.batch_size
    tokenize = encoder_inputs(cfg).tokenize

    def render(i: int) -> dict[str, np.ndarray]:
        q = bench.query("train", i % len(TASKS), "standard", i // len(TASKS))
        return {
            "images": q["image"],
            "tokens": tokenize([q["text"]])[0],
            "task": np.int32(i % len(TASKS)),
            "entity": np.int32(q["entity"]),
        }

    ds = grain.MapDataset.range(2**40)[jax.process_index() :: jax.process_count()]
    ds = ds.map(render).batch(batch // jax.process_count(), drop_remainder=True)
    options = grain.ReadOptions(num_threads=cfg.contrastive.data_threads, prefetch_buffer_size=4)
    return ds.to_iter_dataset(options)


def contrastive_loss(graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict):
    """Symmetric InfoNCE of each query against its positive (the other rows' positives are its
    negatives; rows of one entity are not pushed apart)."""
    embed = query_embedder(graphdef, cfg)
    table = candidate_embedder(graphdef, cfg)

    def loss_fn(params, batch, rng, kb):
        del rng  # the rendered views carry the randomness
        ids = batch["entity"]
        positives = table(params, {"images": kb["images"][ids], "tokens": kb["tokens"][ids]})
        positives = candidates_of(positives, batch["task"], jnp.arange(len(ids)))
        scale = nnx.merge(graphdef, params).logit_scale[...]
        loss = losses.softmax_contrastive_loss(embed(params, batch), positives, scale, ids)
        return loss, {"temperature": 1.0 / jnp.exp(scale)}

    return loss_fn


def contrastive_stage(
    cfg: ml_collections.ConfigDict, workdir: Path, bench: MultiGrain, kb: Any, mesh
) -> tuple[Any, Any]:
    """``(graphdef, params)`` of the contrastive encoder, trained (or resumed) in
    ``contrastive_workdir`` (default ``<workdir>/contrastive``), which other RL runs with the
    same ``CONTRASTIVE_KEYS`` may share. ``kb``: the knowledge base, replicated on ``mesh``."""
    stage_cfg = ml_collections.ConfigDict({k: cfg[k] for k in CONTRASTIVE_KEYS})
    directory = (
        Path(cfg.contrastive_workdir) if cfg.contrastive_workdir else workdir / CONTRASTIVE_DIR
    )
    directory = prepare_workdir(directory, stage_cfg)
    graphdef, params = nnx.split(build_model(cfg, mesh), nnx.Param)
    loss = supervised(contrastive_loss(graphdef, cfg))
    stage = Stage(cfg.contrastive, directory, params, loss, seed=cfg.seed, mesh=mesh, frozen=kb)
    state = stage.run(contrastive_data(bench, cfg))
    return graphdef, state.params


# -- RL stage -------------------------------------------------------------------------------


def rl_instances(bench: MultiGrain, cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The RL set: ``rl_data.queries_per_task`` training queries of each task."""
    n = cfg.rl_data.queries_per_task
    parts = [rows(cfg, bench.queries("train", t, "standard", n)) for t in range(len(TASKS))]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def grpo_config(cfg: ml_collections.ConfigDict) -> GRPOConfig:
    return GRPOConfig(**cfg.rl.to_dict())


CANDIDATES = ("frozen", "current")
POLICY_SAMPLES = ("query", "all")


def frozen_candidates(cfg: ml_collections.ConfigDict) -> bool:
    """Whether candidates keep the contrastive model's embeddings (the index is built once and
    only the query side is tuned) rather than being re-embedded by the encoder being trained."""
    if cfg.candidates not in CANDIDATES:
        raise ConfigError(f"candidates={cfg.candidates!r} is not one of {CANDIDATES}")
    return cfg.candidates == "frozen"


def samples_candidates(cfg: ml_collections.ConfigDict) -> bool:
    """Whether a rollout samples its positive's and negatives' embeddings too (the paper's
    rollout, ``policy_samples="all"``), not only the query's."""
    if cfg.policy_samples not in POLICY_SAMPLES:
        raise ConfigError(f"policy_samples={cfg.policy_samples!r} is not one of {POLICY_SAMPLES}")
    if cfg.policy_samples == "all" and frozen_candidates(cfg):
        needs = 'candidates="current"'
        raise ConfigError(f'policy_samples="all" trains the candidate embeddings: it needs {needs}')
    return cfg.policy_samples == "all"


def candidates_for_evaluation(cfg: ml_collections.ConfigDict, frozen: dict) -> Any:
    """The candidate table evaluation ranks against: the frozen one, or None (the evaluated
    encoder embeds the candidates itself)."""
    return frozen["table"] if frozen_candidates(cfg) else None


def pool_embedder(graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict):
    """``(encoder params, kb, batch) -> [B, 1 + N, D]``: each row's positive and negatives
    embedded in the modality its task retrieves, without embedding the rest of the knowledge
    base."""
    table_fn = candidate_embedder(graphdef, cfg)

    def embed(params, kb, batch):
        ids = jnp.concatenate([batch["entity"][:, None], batch["negatives"]], axis=1)
        flat = ids.reshape(-1)
        table = table_fn(params, {"images": kb["images"][flat], "tokens": kb["tokens"][flat]})
        return candidates_of(table, batch["task"], jnp.arange(ids.size).reshape(ids.shape))

    return embed


def make_rl_step(cfg, graphdef, head_graphdef, optimizer):
    """The RL step: the rollout runs with the pre-update encoder (queries, the candidates unless
    frozen, the reference embeddings); the update differentiates the sampled embeddings (the
    query's, and the candidates' with ``policy_samples="all"``) and the head."""
    embed = query_embedder(graphdef, cfg)
    table_fn = candidate_embedder(graphdef, cfg)
    pool_fn = pool_embedder(graphdef, cfg)
    grpo, reward = grpo_config(cfg), ELVARewardConfig(**cfg.reward.to_dict())
    sample_all = samples_candidates(cfg)

    def means(params, batch, kb):
        """The embeddings the policy samples around, ``[B, T, D]``."""
        query = embed(params, batch)
        if not sample_all:
            return query[:, None]
        pool = pool_fn(params, kb, batch)
        return embedding_grpo.sampled_means(query, pool[:, 0], pool[:, 1:], True)

    def rollout(params, batch, rng, frozen):
        head = nnx.merge(head_graphdef, params["head"])
        current = means(params["encoder"], batch, frozen["kb"])
        if sample_all:
            positive, negatives = current[:, 1], current[:, 2:]
        else:
            table = (
                frozen["table"]
                if frozen_candidates(cfg)
                else table_fn(params["encoder"], frozen["kb"])
            )
            positive = candidates_of(table, batch["task"], batch["entity"])
            negatives = candidates_of(table, batch["task"], batch["negatives"])
        rolled = embedding_grpo.rollout(
            head, rng, current[:, 0], positive, negatives, grpo, reward, sample_all
        )
        first = (rolled.positive_scores[..., None] >= rolled.negative_scores).all(axis=-1)
        terms = elva_reward_terms(rolled.positive_scores, rolled.negative_scores, reward)
        metrics = {
            **reward_term_means(terms),
            "reward_std": rolled.rewards.std(axis=-1).mean(),
            "sampled_top1": first.mean(),
            "head_scale": jnp.exp(head.log_scale[...]).mean(),
        }
        reference = means(frozen["reference"], batch, frozen["kb"])
        return dict(batch, rollout=rolled, reference=reference), metrics

    def loss_fn(params, batch, rng, frozen):
        del rng
        head = nnx.merge(head_graphdef, params["head"])
        return embedding_grpo.loss(
            head,
            means(params["encoder"], batch, frozen["kb"]),
            batch["reference"],
            frozen["reference_log_scale"],
            batch["rollout"],
            grpo,
        )

    return make_train_step(
        loss_fn, optimizer, rollout=rollout, updates_per_batch=grpo.updates_per_batch
    )


def build_head(cfg: ml_collections.ConfigDict, dim: int, mesh) -> tuple[nnx.GraphDef, Any]:
    with jax.set_mesh(mesh):
        return nnx.split(GaussianEmbeddingHead(dim, cfg.head.init_scale), nnx.Param)


def setup(cfg: ml_collections.ConfigDict, workdir: Path):
    """The mesh, benchmark, the graphdefs of the contrastive encoder and the head, the RL
    stage, and the frozen inputs (knowledge base, reference encoder and scale)."""
    mesh = parallel.mesh_from_config(cfg.mesh)
    parallel.require_divisible_batches(cfg, ("train", "contrastive"), mesh)
    bench = benchmark(cfg)
    kb = parallel.put_replicated(knowledge_base(bench.world, cfg), mesh)
    graphdef, encoder = contrastive_stage(cfg, workdir, bench, kb, mesh)
    table = jax.jit(candidate_embedder(graphdef, cfg))(encoder, kb)  # [2, N, D]
    head_graphdef, head = build_head(cfg, table.shape[-1], mesh)
    params = {"encoder": jax.tree.map(jnp.copy, encoder), "head": head}
    frozen = {
        "kb": kb,
        "table": table,
        "reference": encoder,
        "reference_log_scale": jnp.copy(head["log_scale"][...]),
    }
    step = functools.partial(make_rl_step, cfg, graphdef, head_graphdef)
    stage = Stage(cfg.train, workdir, params, step, seed=cfg.seed, mesh=mesh, frozen=frozen)
    return mesh, bench, (graphdef, head_graphdef), stage, frozen


def training_arrays(cfg, bench, graphdef, frozen, mesh) -> dict[str, np.ndarray]:
    """The RL instances with their mined negatives."""
    instances = rl_instances(bench, cfg)
    embed = jax.jit(query_embedder(graphdef, cfg))
    queries = retrieval_eval.embed_in_batches(
        lambda *b: embed(frozen["reference"], dict(zip(instances, b, strict=True))),
        list(instances.values()),
        cfg.eval.batch_size,
        mesh,
    )
    table = np.asarray(jax.device_get(frozen["table"]))
    return dict(instances, negatives=mine(instances, queries, table, cfg, mesh))


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Both stages, each resumed from its checkpoints, with evaluations every
    ``train.eval_every`` RL steps (step 0 is the contrastive model)."""
    benchmark = cfg.get("data", {}).get("benchmark", "synthetic")
    if benchmark != "synthetic":
        raise ConfigError(
            f"data.benchmark={benchmark!r}: the ELVA recipe trains on the synthetic multi-grain "
            "benchmark only so far; jaxrank/data/mbeir.py reads M-BEIR, but the recipe does "
            "not use it yet"
        )
    workdir = prepare_workdir(workdir, cfg)
    started = time.perf_counter()
    mesh, bench, (graphdef, _), stage, frozen = setup(cfg, workdir)
    contrastive_seconds = time.perf_counter() - started
    evaluator = evaluation.Evaluator(cfg, bench, graphdef, frozen["kb"], mesh)
    curve = evaluation.Curve(workdir / "eval.jsonl")
    with jax.set_mesh(mesh):
        curve.record(0, lambda: evaluator(frozen["reference"], frozen["table"]))
        candidates = candidates_for_evaluation(cfg, frozen)
        arrays = training_arrays(cfg, bench, graphdef, frozen, mesh)
        data = array_batches(arrays, cfg.train.batch_size, cfg.seed, cfg.train.data_threads)
        rl_started = time.perf_counter()
        stops = sorted(
            {*range(cfg.train.eval_every, cfg.train.steps, cfg.train.eval_every), cfg.train.steps}
        )
        for stop in stops:
            encoder = stage.run(data, until=stop).params["encoder"]
            curve.record(stop, lambda p=encoder: evaluator(p, candidates))
    info = {
        "devices": f"{len(mesh.devices.flat)} x {jax.devices()[0].device_kind}",
        "contrastive_seconds": contrastive_seconds,
        "rl_seconds": time.perf_counter() - rl_started,
        "rl_steps": cfg.train.steps,
    }
    return evaluation.write_report(workdir, cfg, curve.rows(), info)


def evaluate_workdir(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Re-evaluate a run's latest RL checkpoint (and the contrastive model) and rewrite its
    report."""
    workdir = prepare_workdir(workdir, cfg)
    mesh, bench, (graphdef, _), stage, frozen = setup(cfg, workdir)
    step, state = stage.latest_step(), stage.restore()
    evaluator = evaluation.Evaluator(cfg, bench, graphdef, frozen["kb"], mesh)
    curve = evaluation.Curve(workdir / "eval.jsonl")
    with jax.set_mesh(mesh):
        curve.replace(0, evaluator(frozen["reference"], frozen["table"]))
        candidates = candidates_for_evaluation(cfg, frozen)
        curve.replace(step, evaluator(state.params["encoder"], candidates))
    previous = workdir / "report.json"
    info = json.loads(previous.read_text())["train"] if previous.exists() else {}
    return evaluation.write_report(workdir, cfg, curve.rows(), {**info, "rl_steps": step})
