"""Region-R1 (PAPERS.md §1) on the synthetic world, wired from jaxrank's parts.

frozen contrastive scorer -> knowledge-base index (pair embeddings) -> top-K pools of the full
query image -> crop policy trained with r-GRPO (one jitted step: sample, crop, score the pool,
reward, advantage, clipped loss with KL, optax update) -> evaluation against the paper's
baselines (``region_r1_eval``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxrank import flop_count, imaging, parallel, profiling, retrieval_eval, step_costs
from jaxrank.checkpoint import Checkpointer
from jaxrank.data.arrays import array_batches
from jaxrank.data.synthetic import World, query_preset, world_vocabulary
from jaxrank.data.vocabulary import PAD
from jaxrank.models.action import box_nll, boxes_to_bins
from jaxrank.models.crop_policy import CropPolicy, tiny_crop_policy
from jaxrank.optim import adamw_warmup_cosine
from jaxrank.recipes import contrastive, region_r1_eval
from jaxrank.rewards.region_r1 import RegionR1RewardConfig
from jaxrank.rl import region_grpo
from jaxrank.rl.grpo import GRPOConfig
from jaxrank.search import Index
from jaxrank.train_step import TrainState, jit_train_step, make_train_step
from jaxrank.trainer import fit
from jaxrank.workdir import WorkdirError, prepare_workdir

INDEX_FILE = "kb_index.safetensors"


def grpo_config(cfg: ml_collections.ConfigDict) -> region_grpo.RegionGRPOConfig:
    rl = cfg.rl.to_dict()
    balanced, forced_in_loss = rl.pop("balanced"), rl.pop("forced_in_loss")
    reward = cfg.reward.to_dict()
    reward["weights"] = tuple(reward["weights"])
    return region_grpo.RegionGRPOConfig(
        GRPOConfig(**rl), RegionR1RewardConfig(**reward), balanced, forced_in_loss
    )


def build_policy(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> CropPolicy:
    options = cfg.policy.to_dict()
    options["dtype"] = jnp.dtype(options["dtype"])
    config = tiny_crop_policy(world_vocabulary().size, **options)
    with jax.set_mesh(mesh):
        return CropPolicy(config, rngs=nnx.Rngs(cfg.seed))


def policy_fn(graphdef: nnx.GraphDef, image_size: int) -> region_grpo.PolicyFn:
    """The policy on uint8 scenes and question ids: resized and normalised in the graph."""

    def apply(params, images, tokens):
        pixels = imaging.normalize(
            imaging.resize(images, image_size), imaging.UNIT_MEAN, imaging.UNIT_STD
        )
        return nnx.merge(graphdef, params)(pixels, tokens, tokens != PAD)

    return apply


class Scorer:
    """The frozen scorer: its image tower, its parameters and the knowledge-base index."""

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: Path, mesh: jax.sharding.Mesh):
        scorer_dir = Path(cfg.scorer_workdir) if cfg.scorer_workdir else workdir / "scorer"
        graphdef, self.params = contrastive.train_or_restore(cfg.scorer, scorer_dir, mesh)
        self.world: World = contrastive.build_world(cfg.scorer)
        self.input_size: int = contrastive.encoder_inputs(cfg.scorer).image_size
        self.embed = contrastive.image_embedder(graphdef, cfg.scorer)
        kb = contrastive.knowledge_base_embeddings(
            graphdef, self.params, self.world, cfg.scorer, mesh
        )
        self.kb = kb["pair"]
        self.index = Index.from_array(self.kb, metric="cosine", mesh=mesh)
        self.index.save(workdir / INDEX_FILE)
        self._full, _, _ = contrastive.encoders(graphdef, cfg.scorer)

    def full_image_embeddings(self, images: np.ndarray, batch: int, mesh) -> np.ndarray:
        return retrieval_eval.embed_in_batches(
            lambda x: self._full(self.params, x), [images], batch, mesh
        )


def untrained_scorer(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """``(scorer, params)``: the scorer's image tower at the config's sizes with fresh
    weights, shaped like ``Scorer`` for ``make_step``. For step tests and cost studies, where
    what a step computes and costs does not depend on the scorer's training."""
    graphdef, params = nnx.split(contrastive.build_model(cfg.scorer, mesh), nnx.Param)
    scorer = SimpleNamespace(
        embed=contrastive.image_embedder(graphdef, cfg.scorer),
        input_size=cfg.scorer.model.image_size,
    )
    return scorer, params


def query_set(
    scorer: Scorer,
    split: str,
    presets: tuple[str, ...],
    per_preset: int,
    cfg: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
    """Rendered queries of each preset with their first-stage pools: the top ``pool_size``
    knowledge-base entries by the full image's embedding. Presets take disjoint query indices,
    so the same index never renders the same target under two presets."""
    parts = [
        scorer.world.queries(split, per_preset, query_preset(p), start=i * per_preset)
        for i, p in enumerate(presets)
    ]
    images = np.concatenate([p["images"] for p in parts])
    entity = np.concatenate([p["entity"] for p in parts])
    questions = [q for p in parts for q in p["questions"]]
    embeddings = scorer.full_image_embeddings(images, cfg.eval.batch_size, mesh)
    pools = scorer.index.search(embeddings, cfg.data.pool_size).ids
    queries = {
        "images": images,
        "boxes": np.concatenate([p["boxes"] for p in parts]).astype(np.float32),
        "pool_ids": np.maximum(pools, 0).astype(np.int32),
        "labels": (pools == entity[:, None]).astype(np.float32),
        "pool_valid": pools >= 0,
        "questions": questions,
    }
    if "max_len" in cfg.policy:  # the structured policy reads the question's word ids
        queries["tokens"] = world_vocabulary().encode(questions, cfg.policy.max_len)
    return queries


TRAIN_KEYS = ("images", "tokens", "boxes", "pool_ids", "labels", "pool_valid")


def setup(cfg: ml_collections.ConfigDict, workdir: Path):
    """The mesh, the frozen scorer with its index, and the freshly initialised policy."""
    mesh = parallel.mesh_from_config(cfg.mesh)
    for stage in ("train", "grounding"):
        if cfg[stage].batch_size % mesh.shape[parallel.DATA]:
            raise ValueError(
                f"{stage}.batch_size={cfg[stage].batch_size} must be divisible by the "
                f"{mesh.shape[parallel.DATA]} devices of the data axis"
            )
    scorer = Scorer(cfg, workdir, mesh)
    graphdef, params = nnx.split(build_policy(cfg, mesh), nnx.Param)
    return mesh, scorer, graphdef, params


def grounding_loss(policy: region_grpo.PolicyFn, image_size: int, num_bins: int):
    """Supervised grounding: -log pi(ground-truth box | REGION), the box factors only."""

    def loss_fn(params, batch, rng, frozen):
        del rng, frozen
        out = policy(params, batch["images"], batch["tokens"])
        nll = box_nll(out, boxes_to_bins(batch["boxes"], image_size, num_bins)).mean()
        return nll, {"box_nll": nll}

    return loss_fn


def ground(
    cfg: ml_collections.ConfigDict,
    workdir: Path,
    graphdef: nnx.GraphDef,
    params: Any,
    train_arrays: dict[str, np.ndarray] | None,
    mesh: jax.sharding.Mesh,
) -> Any:
    """The policy RL starts from: ``grounding.steps`` supervised steps on the training queries'
    ground-truth boxes (in ``<workdir>/grounding``, resumable), or ``params`` when 0.

    Region-R1's policy is a pretrained VLM that can already draw boxes; RL teaches it when to
    crop and which crop helps the scorer. This stage gives the small policy that starting
    point. ``train_arrays`` may be None once the stage has finished (re-evaluation).
    """
    grounding = cfg.grounding
    if grounding.steps == 0:
        return params
    directory = workdir / "grounding"
    directory.mkdir(exist_ok=True)
    optimizer = adamw_warmup_cosine(grounding)
    state = jax.jit(lambda p: TrainState.create(p, optimizer, cfg.seed))(params)
    with Checkpointer(directory / "checkpoints") as checkpointer:
        if checkpointer.latest_step() == grounding.steps:
            return checkpointer.restore(state)[1].params
    if train_arrays is None:
        raise WorkdirError(f"{directory} holds no finished grounding stage; train the run first")
    policy = policy_fn(graphdef, cfg.policy.image_size)
    loss = grounding_loss(policy, train_arrays["images"].shape[1], cfg.policy.num_bins)
    step_fn = jit_train_step(make_train_step(loss, optimizer), state)
    with jax.set_mesh(mesh):
        state = fit(
            workdir=directory,
            state=state,
            step_fn=step_fn,
            data=array_batches(train_arrays, grounding.batch_size, cfg.seed + 1),
            place_batch=lambda b: parallel.shard_batch(b, mesh),
            total_steps=grounding.steps,
            log_every=grounding.log_every,
            checkpoint_every=grounding.checkpoint_every,
            samples_per_step=grounding.batch_size,
        )
    return state.params


def frozen_inputs(scorer: Scorer, reference: Any, mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """What the step reads but never updates: candidate embeddings, scorer, reference policy."""
    return {
        "kb": parallel.put_replicated(scorer.kb, mesh),
        "scorer": scorer.params,
        "ref": reference,
    }


def _copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


def make_step(cfg, graphdef, scorer: Scorer, optimizer):
    policy, rl = policy_fn(graphdef, cfg.policy.image_size), grpo_config(cfg)
    rollout = region_grpo.make_rollout(
        policy, scorer.embed, rl, cfg.policy.num_bins, scorer.input_size
    )
    return make_train_step(
        region_grpo.make_loss(policy, rl),
        optimizer,
        rollout=rollout,
        updates_per_batch=rl.grpo.updates_per_batch,
    )


def step_profile(cfg, graphdef, scorer: Scorer, state, batch, frozen) -> dict[str, float]:
    """Milliseconds per step of each part (policy + sampling, crop + score, reward +
    advantage, update), each jitted on its own; the fused step's own time is the training
    log's steps/s (XLA fuses across the parts, so it is less than their sum)."""
    policy, rl = policy_fn(graphdef, cfg.policy.image_size), grpo_config(cfg)
    stages = region_grpo.rollout_stages(
        policy, scorer.embed, rl, cfg.policy.num_bins, scorer.input_size
    )
    act, score, judge = (jax.jit(stage) for stage in stages)
    update = jax.jit(
        make_train_step(region_grpo.make_loss(policy, rl), adamw_warmup_cosine(cfg.train))
    )
    key = jax.random.key(0)
    _, actions = act(state.params, batch, key, frozen)
    scored = score(actions, batch, frozen)
    _, advantages, _ = judge(scored, actions, batch)
    filled = dict(batch, actions=actions, advantages=advantages)
    timed = {
        "policy_and_sampling_ms": (act, state.params, batch, key, frozen),
        "crop_and_score_ms": (score, actions, batch, frozen),
        "reward_and_advantage_ms": (judge, scored, actions, batch),
        "update_ms": (update, state, filled, frozen),
    }
    repeats = cfg.train.profile_repeats
    return {name: profiling.milliseconds(*call, repeats=repeats) for name, call in timed.items()}


def per_example_flops(cfg, graphdef, params, scorer, scorer_params, image, tokens):
    """``step_costs.PerExampleFlops`` of this recipe's parts, each counted from its program
    on one query (``image`` ``[1, H, W, 3]``, ``tokens`` ``[1, L]``)."""
    size = scorer.input_size
    box = jnp.asarray([[[0.0, 0.0, image.shape[2] / 2, image.shape[1] / 2]]])
    policy = policy_fn(graphdef, cfg.policy.image_size)
    outputs_sum = lambda p: sum(jnp.sum(x) for x in jax.tree.leaves(policy(p, image, tokens)))
    return step_costs.PerExampleFlops(
        policy=flop_count.matmul_flops(policy, params, image, tokens),
        policy_update=flop_count.matmul_flops(jax.grad(outputs_sum), params),
        scorer=flop_count.matmul_flops(
            scorer.embed, scorer_params, jnp.zeros((1, size, size, 3), jnp.float32)
        ),
        crop_resize=flop_count.matmul_flops(
            lambda x, b: imaging.crop_and_resize(x, b, size), image[:, None], box
        ),
        full_resize=flop_count.matmul_flops(lambda x: imaging.resize(x, size), image),
        embed_dim=cfg.scorer.model.embed_dim,
    )


def evaluate(cfg, graphdef, params, initial, frozen, scorer: Scorer, mesh) -> dict[str, Any]:
    """The policy and the baselines on each evaluation preset's held-out queries."""
    query_sets = {
        preset: query_set(scorer, "test", (preset,), cfg.eval.num_queries, cfg, mesh)
        for preset in cfg.eval.presets
    }
    sampled = {"untrained_policy": initial}
    if cfg.grounding.steps:
        sampled["grounded_policy"] = frozen["ref"]
    policy = policy_fn(graphdef, cfg.policy.image_size)
    return region_r1_eval.evaluate(
        cfg,
        region_r1_eval.strategy_names(sampled),
        region_r1_eval.structured_policy_actions(cfg, policy),
        {"trained": params, "sampled": sampled},
        frozen,
        scorer,
        query_sets,
        mesh,
    )


def _info(mesh, **values) -> dict[str, Any]:
    return {"devices": f"{len(mesh.devices.flat)} x {jax.devices()[0].device_kind}", **values}


def _finished(cfg: ml_collections.ConfigDict, workdir: Path) -> bool:
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        return checkpointer.latest_step() == cfg.train.steps


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Every stage, each resumed from its checkpoints; a finished run is only re-evaluated."""
    workdir = prepare_workdir(workdir, cfg)
    if _finished(cfg, workdir):
        return evaluate_workdir(cfg, workdir)
    started = time.perf_counter()
    mesh, scorer, graphdef, params = setup(cfg, workdir)
    initial = _copy(params)
    train = query_set(
        scorer,
        "train",
        tuple(cfg.data.train_presets),
        cfg.data.train_queries_per_preset,
        cfg,
        mesh,
    )
    train_arrays = {k: train[k] for k in TRAIN_KEYS}
    grounding_started = time.perf_counter()
    params = ground(cfg, workdir, graphdef, params, train_arrays, mesh)
    grounding_seconds = time.perf_counter() - grounding_started
    frozen = frozen_inputs(scorer, _copy(params), mesh)
    optimizer = adamw_warmup_cosine(cfg.train)
    state = jax.jit(lambda p: TrainState.create(p, optimizer, cfg.seed))(params)
    data = array_batches(train_arrays, cfg.train.batch_size, cfg.seed, cfg.train.data_threads)
    step_fn = jit_train_step(make_step(cfg, graphdef, scorer, optimizer), state)
    with jax.set_mesh(mesh):
        sample = parallel.shard_batch(next(iter(data)), mesh)
        profile = step_profile(cfg, graphdef, scorer, state, sample, frozen)
        print("r-GRPO step parts (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in profile.items()))
        train_started = time.perf_counter()
        state = fit(
            workdir=workdir,
            state=state,
            step_fn=step_fn,
            data=data,
            place_batch=lambda b: parallel.shard_batch(b, mesh),
            total_steps=cfg.train.steps,
            log_every=cfg.train.log_every,
            checkpoint_every=cfg.train.checkpoint_every,
            frozen=frozen,
            samples_per_step=cfg.train.batch_size,
            profile_steps=tuple(cfg.train.get("profile_steps", ())) or None,
        )
        train_seconds = time.perf_counter() - train_started
        results = evaluate(cfg, graphdef, state.params, initial, frozen, scorer, mesh)
    info = _info(
        mesh,
        steps=cfg.train.steps,
        grounding_seconds=grounding_seconds,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        step_profile=profile,
        train_pools_with_positive=float(train["labels"].any(axis=1).mean()),
    )
    region_r1_eval.write_report(workdir, cfg, results, info)
    return results


def evaluate_workdir(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Re-evaluate the latest policy checkpoint of a trained run (keeping the report's
    training figures)."""
    workdir = prepare_workdir(workdir, cfg)
    mesh, scorer, graphdef, params = setup(cfg, workdir)
    initial = _copy(params)
    reference = ground(cfg, workdir, graphdef, params, None, mesh)
    frozen = frozen_inputs(scorer, reference, mesh)
    optimizer = adamw_warmup_cosine(cfg.train)
    state = jax.jit(lambda p: TrainState.create(p, optimizer, cfg.seed))(_copy(reference))
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        step, state, _ = checkpointer.restore(state)
    with jax.set_mesh(mesh):
        results = evaluate(cfg, graphdef, state.params, initial, frozen, scorer, mesh)
    previous = workdir / "report.json"
    info = json.loads(previous.read_text())["train"] if previous.exists() else {}
    info = {"train_seconds": 0.0, "step_profile": {}, **info, **_info(mesh, steps=step)}
    region_r1_eval.write_report(workdir, cfg, results, info)
    return results
