"""Region-R1 (PAPERS.md §1) on the synthetic world, wired from jaxrank's parts.

frozen contrastive scorer -> knowledge-base index (pair embeddings) -> top-K pools of the full
query image -> crop policy trained with r-GRPO (one jitted step: sample, crop, score the pool,
reward, advantage, clipped loss with KL, optax update) -> evaluation against the paper's
baselines (``region_r1.evaluation``).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxrank import imaging, parallel
from jaxrank.data.arrays import array_batches
from jaxrank.data.synthetic import world_vocabulary
from jaxrank.data.vocabulary import PAD
from jaxrank.perf import flop_count, profiling, step_costs
from jaxrank.region_r1 import evaluation, r_grpo
from jaxrank.region_r1.action import box_nll, boxes_to_bins
from jaxrank.region_r1.policy import CropPolicy, tiny_crop_policy
from jaxrank.region_r1.r_grpo import grpo_config
from jaxrank.region_r1.scorer import Scorer, query_set
from jaxrank.train.checkpoint import Checkpointer
from jaxrank.train.optim import adamw_warmup_cosine
from jaxrank.train.stage import Stage, supervised, with_rollout
from jaxrank.train.step import make_train_step
from jaxrank.train.workdir import prepare_workdir


def build_policy(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> CropPolicy:
    options = cfg.policy.to_dict()
    options["dtype"] = jnp.dtype(options["dtype"])
    config = tiny_crop_policy(world_vocabulary().size, **options)
    with jax.set_mesh(mesh):
        return CropPolicy(config, rngs=nnx.Rngs(cfg.seed))


def policy_fn(graphdef: nnx.GraphDef, image_size: int) -> r_grpo.PolicyFn:
    """The policy on uint8 scenes and question ids: resized and normalised in the graph."""

    def apply(params, images, tokens):
        pixels = imaging.normalize(
            imaging.resize(images, image_size), imaging.UNIT_MEAN, imaging.UNIT_STD
        )
        return nnx.merge(graphdef, params)(pixels, tokens, tokens != PAD)

    return apply


TRAIN_KEYS = ("images", "tokens", "boxes", "pool_ids", "labels", "pool_valid")


def setup(cfg: ml_collections.ConfigDict, workdir: Path):
    """The mesh, the frozen scorer with its index, and the freshly initialised policy."""
    mesh = parallel.mesh_from_config(cfg.mesh)
    parallel.require_divisible_batches(cfg, ("train", "grounding"), mesh)
    scorer = Scorer(cfg, workdir, mesh)
    graphdef, params = nnx.split(build_policy(cfg, mesh), nnx.Param)
    return mesh, scorer, graphdef, params


def grounding_loss(policy: r_grpo.PolicyFn, num_bins: int):
    """Supervised grounding: -log pi(ground-truth box | REGION), the box factors only."""

    def loss_fn(params, batch, rng, frozen):
        del rng, frozen
        out = policy(params, batch["images"], batch["tokens"])
        image_size = batch["images"].shape[1]
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
    if cfg.grounding.steps == 0:
        return params
    loss = grounding_loss(policy_fn(graphdef, cfg.policy.image_size), cfg.policy.num_bins)
    stage = Stage(
        cfg.grounding, workdir / "grounding", params, supervised(loss), seed=cfg.seed, mesh=mesh
    )
    batches = None
    if train_arrays is not None:
        batches = array_batches(train_arrays, cfg.grounding.batch_size, cfg.seed + 1)
    return stage.run(batches).params


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
    """The un-jitted r-GRPO step (rollout, then ``rl.updates_per_batch`` updates)."""
    policy, rl = policy_fn(graphdef, cfg.policy.image_size), grpo_config(cfg)
    rollout = r_grpo.make_rollout(policy, scorer.embed, rl, cfg.policy.num_bins, scorer.input_size)
    return with_rollout(r_grpo.make_loss(policy, rl), rollout, rl.grpo.updates_per_batch)(optimizer)


def rl_stage(cfg, workdir: Path, graphdef, params, scorer: Scorer, frozen, mesh) -> Stage:
    """r-GRPO from ``params`` against the frozen scorer, in the run folder itself."""
    step = functools.partial(make_step, cfg, graphdef, scorer)
    return Stage(cfg.train, workdir, params, step, seed=cfg.seed, mesh=mesh, frozen=frozen)


def step_profile(cfg, graphdef, scorer: Scorer, state, batch, frozen) -> dict[str, float]:
    """Milliseconds per step of each part (policy + sampling, crop + score, reward +
    advantage, update), each jitted on its own; the fused step's own time is the training
    log's steps/s (XLA fuses across the parts, so it is less than their sum)."""
    policy, rl = policy_fn(graphdef, cfg.policy.image_size), grpo_config(cfg)
    stages = r_grpo.rollout_stages(policy, scorer.embed, rl, cfg.policy.num_bins, scorer.input_size)
    act, score, judge = (jax.jit(stage) for stage in stages)
    update = jax.jit(make_train_step(r_grpo.make_loss(policy, rl), adamw_warmup_cosine(cfg.train)))
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
    return evaluation.evaluate(
        cfg,
        evaluation.strategy_names(sampled),
        evaluation.structured_policy_actions(cfg, policy),
        {"trained": params, "sampled": sampled},
        frozen,
        scorer,
        query_sets,
        mesh,
    )


def _info(mesh, **values) -> dict[str, Any]:
    return {"devices": f"{len(mesh.devices.flat)} x {jax.devices()[0].device_kind}", **values}


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Every stage, each resumed from its checkpoints; a finished run is only re-evaluated."""
    workdir = prepare_workdir(workdir, cfg)
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        if checkpointer.latest_step() == cfg.train.steps:
            return evaluate_workdir(cfg, workdir)
    started = time.perf_counter()
    mesh, scorer, graphdef, params = setup(cfg, workdir)
    initial = _copy(params)
    presets, per_preset = tuple(cfg.data.train_presets), cfg.data.train_queries_per_preset
    train = query_set(scorer, "train", presets, per_preset, cfg, mesh)
    train_arrays = {k: train[k] for k in TRAIN_KEYS}
    grounding_started = time.perf_counter()
    params = ground(cfg, workdir, graphdef, params, train_arrays, mesh)
    grounding_seconds = time.perf_counter() - grounding_started
    frozen = frozen_inputs(scorer, _copy(params), mesh)
    stage = rl_stage(cfg, workdir, graphdef, params, scorer, frozen, mesh)
    data = array_batches(train_arrays, cfg.train.batch_size, cfg.seed, cfg.train.data_threads)
    with jax.set_mesh(mesh):
        sample = parallel.shard_batch(next(iter(data)), mesh)
        profile = step_profile(cfg, graphdef, scorer, stage.state, sample, frozen)
    print("r-GRPO step parts (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in profile.items()))
    train_started = time.perf_counter()
    state = stage.run(data)
    train_seconds = time.perf_counter() - train_started
    with jax.set_mesh(mesh):
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
    evaluation.write_report(workdir, cfg, results, info)
    return results


def evaluate_workdir(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Re-evaluate the latest policy checkpoint of a trained run (keeping the report's
    training figures)."""
    workdir = prepare_workdir(workdir, cfg)
    mesh, scorer, graphdef, params = setup(cfg, workdir)
    initial = _copy(params)
    reference = ground(cfg, workdir, graphdef, params, None, mesh)
    frozen = frozen_inputs(scorer, reference, mesh)
    stage = rl_stage(cfg, workdir, graphdef, _copy(reference), scorer, frozen, mesh)
    step, state = stage.latest_step(), stage.restore()
    with jax.set_mesh(mesh):
        results = evaluate(cfg, graphdef, state.params, initial, frozen, scorer, mesh)
    previous = workdir / "report.json"
    info = json.loads(previous.read_text())["train"] if previous.exists() else {}
    info = {"train_seconds": 0.0, "step_profile": {}, **info, **_info(mesh, steps=step)}
    evaluation.write_report(workdir, cfg, results, info)
    return results
