"""Region-R1 as published (PAPERS.md §1): a vision-language policy writes ``NO_CROP_NEEDED`` or
an ``image_zoom_in_tool`` call, trained with token-level r-GRPO through LoRA.

Stages, each resumable in the workdir: the frozen scorer, its index and the top-K pools (shared
with the structured recipe) -> the policy's base (a released checkpoint, or a random tiny
Qwen2.5-VL-shaped model for CPU runs) -> a supervised warm start on correctly formatted answers
(``sft/``; the tiny model's "pretraining") -> r-GRPO on LoRA adapters, the base frozen
(``checkpoints/``) -> evaluation of the trained and the warm-start policy (greedy) against the
baselines, with the structured recipe's report.

One r-GRPO step: the jitted sampler writes G completions per query; the host decodes and parses
them (``crop_tool``); groups that came out all one decision get one slot re-generated with the
other decision's opening forced (``rl.sampling.slots_to_flip``); one jitted program crops,
scores the pool and computes rewards and advantages; one jitted update applies the token-level
clipped loss with the k3 KL to the base (adapters off).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxrank import crop_tool, flop_count, parallel, rerank
from jaxrank.checkpoint import Checkpointer
from jaxrank.configs import ConfigError
from jaxrank.data.arrays import array_batches
from jaxrank.models.lora import adapters_off
from jaxrank.optim import adamw_warmup_cosine
from jaxrank.recipes import region_r1, region_r1_benchmark, region_r1_eval
from jaxrank.recipes.mllm_crop_policy import (
    BASE_DIR,
    CropPolicyBase,
    build_base,
    completion_text,
)
from jaxrank.recipes.vlm_sft import answer_nll_loss, supervised_stage, with_adapters
from jaxrank.rl import region_grpo, vlm_policy
from jaxrank.rl.sampling import slots_to_flip
from jaxrank.rl.token_grpo import make_token_grpo_loss
from jaxrank.train_step import TrainState, make_train_step
from jaxrank.trainer import fit
from jaxrank.workdir import WorkdirError, prepare_workdir

QUERY_KEYS = ("images", "boxes", "pool_ids", "labels", "pool_valid", "rows")


def sampling_settings(cfg: ml_collections.ConfigDict, base: CropPolicyBase, greedy: bool):
    temperature = 0.0 if greedy else cfg.policy.temperature
    return base.sampling(cfg.policy.max_new_tokens, temperature)


def forced_openings(base: CropPolicyBase) -> dict[int, list[int]]:
    """The token ids a forced slot opens with, per decision it is forced to."""
    return {
        crop_tool.FULL: base.token_ids(crop_tool.NO_CROP),
        crop_tool.REGION: base.token_ids(crop_tool.CALL_OPEN),
    }


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


def warm_start(cfg, workdir: Path, base: CropPolicyBase, train: dict[str, Any] | None, mesh):
    """The base's parameters after ``sft.steps`` supervised steps on every weight
    (``<workdir>/sft``, resumable); ``train`` may be None once the stage has finished."""
    graphdef, params = nnx.split(base.model, nnx.Param)
    if cfg.sft.steps == 0:
        return graphdef, params

    def data():
        texts = sft_targets(cfg, base, train["boxes"], train["images"].shape[1:3])

        def place(batch):
            rows = batch["rows"]
            host = base.prompts([train["questions"][r] for r in rows], batch["images"])
            host.update(base.targets([texts[r] for r in rows], cfg.policy.max_new_tokens))
            return parallel.shard_batch(host, mesh)

        arrays = {"images": train["images"], "rows": train["rows"]}
        return array_batches(arrays, cfg.sft.batch_size, cfg.seed), place

    loss = answer_nll_loss(graphdef, base.grid, adapters=False)
    params = supervised_stage(
        cfg.sft, workdir / "sft", params, loss, cfg.seed, mesh, None if train is None else data
    )
    return graphdef, params


# ---- r-GRPO ----------------------------------------------------------------------------------


def make_judge(cfg, scorer: region_r1.Scorer, rl: region_grpo.RegionGRPOConfig):
    """Jitted: crop every action, re-rank the pools, reward, advantage, log metrics."""

    @jax.jit
    def judge(decision, boxes, batch, frozen):
        scored = rerank.score_actions(
            lambda pixels: scorer.embed(frozen["scorer"], pixels),
            batch["images"],
            decision,
            boxes,
            frozen["kb"][batch["pool_ids"]],
            scorer.input_size,
        )
        rewards, advantages, components = region_grpo.judge(
            scored, decision, batch["labels"], batch["pool_valid"], rl
        )
        logged = region_grpo.action_metrics(
            decision,
            boxes,
            scored,
            rewards,
            components,
            batch["labels"],
            batch["pool_valid"],
            batch["boxes"],
        )
        return advantages, logged

    return judge


class GRPOStep:
    """``step(state, batch, frozen) -> (state, metrics)`` for ``trainer.fit``: the host-driven
    rollout (sample, parse, balance, judge), then the jitted update. Its keys come from the
    state's rng and step, so a resumed run repeats exactly what the killed one would have done.
    ``frozen`` = ``{"base": ..., "kb": ..., "scorer": ...}``; the queries' questions are looked
    up by ``batch["rows"]`` in ``questions``."""

    def __init__(self, cfg, base: CropPolicyBase, graphdef, scorer, optimizer, questions, mesh):
        self.cfg, self.base, self.questions, self.mesh = cfg, base, questions, mesh
        self.rl = region_r1.grpo_config(cfg)
        self.group = self.rl.grpo.num_generations
        settings = sampling_settings(cfg, base, greedy=False)
        self.sample = vlm_policy.make_sampler(graphdef, settings, self.group, base.grid)
        self.openings = forced_openings(base)
        self.judge = make_judge(cfg, scorer, self.rl)
        log_probs = vlm_policy.completion_log_probs_fn(
            base.grid, self.group, settings.log_prob_temperature
        )
        loss = make_token_grpo_loss(graphdef, log_probs, self.rl.grpo)
        self.update = jax.jit(make_train_step(loss, optimizer), donate_argnums=0)
        self.seconds = dict.fromkeys(("rollout", "parse", "reward", "update"), 0.0)
        self.steps = 0  # timed steps: every step after the first (which compiles)
        self.tokens = 0
        self.first_step_seconds = 0.0
        self.max_new_tokens = settings.max_new_tokens
        self.matmul_flops = 0  # the first step's, for trainer.fit's throughput log

    def _timed(self, part: str, fn, *args):
        if not self.first_step_seconds and part != "parse":  # parse runs on the host
            trips = self.max_new_tokens  # an upper bound: decoding may stop early
            self.matmul_flops += flop_count.matmul_flops(fn, *args, while_trips=trips)
        started = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        self.seconds[part] += time.perf_counter() - started
        return out

    def _forced(self, flip: np.ndarray, decisions: np.ndarray) -> np.ndarray:
        width = max(map(len, self.openings.values()))
        forced = np.full((flip.size, width), -1, np.int32)
        for row in np.flatnonzero(flip.reshape(-1)):
            opening = self.openings[1 - int(decisions.reshape(-1)[row])]
            forced[row, : len(opening)] = opening
        return forced

    def __call__(self, state: TrainState, batch: dict[str, np.ndarray], frozen: dict[str, Any]):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        sample_key, flip_key, resample_key = jax.random.split(jax.random.fold_in(key, 1), 3)
        b, g = len(batch["rows"]), self.group
        prompts = parallel.shard_batch(
            self.base.prompts([self.questions[r] for r in batch["rows"]], batch["images"]),
            self.mesh,
        )
        size = batch["images"].shape[1:3]
        free = np.full((b * g, 1), -1, np.int32)
        sampled = self._timed(
            "rollout", self.sample, state.params, frozen["base"], prompts, sample_key, free
        )
        tokens, mask, log_probs = (
            np.array(x) for x in (sampled.tokens, sampled.mask, sampled.log_probs)
        )
        decisions, boxes, counts = self._timed("parse", self.base.read, tokens, mask, size)
        flip = np.zeros((b, g), bool)
        if self.rl.balanced:
            flip = np.asarray(slots_to_flip(flip_key, jnp.asarray(decisions.reshape(b, g))))
        if flip.any():
            forced = self._forced(flip, decisions)
            again = self._timed(
                "rollout", self.sample, state.params, frozen["base"], prompts, resample_key, forced
            )
            rows = flip.reshape(-1)
            tokens[rows], mask[rows], log_probs[rows] = (
                np.asarray(x)[rows] for x in (again.tokens, again.mask, again.log_probs)
            )
            if not self.rl.forced_in_loss:  # drop the forced opening tokens from the loss
                width = forced.shape[1]
                mask[rows, :width] &= forced[rows] < 0
            decisions[rows], boxes[rows], _ = self._timed(
                "parse", self.base.read, tokens[rows], mask[rows], size
            )
        places = lambda tree: parallel.shard_batch(tree, self.mesh)
        judged = places(
            {k: batch[k] for k in ("images", "pool_ids", "labels", "pool_valid", "boxes")}
        )
        advantages, logged = self._timed(
            "reward",
            self.judge,
            places(decisions.reshape(b, g)),
            places(boxes.reshape(b, g, 4)),
            judged,
            frozen,
        )
        update_batch = dict(
            prompts,
            completion=places(tokens),
            completion_mask=places(mask),
            old_log_probs=places(log_probs),
            advantages=advantages,
        )
        state, metrics = self._timed("update", self.update, state, update_batch, frozen["base"])
        if not self.first_step_seconds:  # compilation: kept apart from the step profile
            self.first_step_seconds = sum(self.seconds.values())
            self.seconds = dict.fromkeys(self.seconds, 0.0)
        else:
            self.steps += 1
            self.tokens += int(mask.sum())
        total = sum(counts.values())
        outcomes = {f"outcome/{k}": v / total for k, v in counts.items()}
        extra = {"forced_rate": flip.mean(), "completion_tokens": mask.sum(axis=1).mean()}
        return state, {**logged, **metrics, **outcomes, **extra}

    def profile(self) -> dict[str, float]:
        """Mean milliseconds per step of each part (after the first step, which compiles),
        generated tokens per second of sampling, and the first step's seconds."""
        steps = max(self.steps, 1)
        out = {f"{part}_ms": 1000 * s / steps for part, s in self.seconds.items()}
        out["generated_tokens_per_s"] = self.tokens / max(self.seconds["rollout"], 1e-9)
        out["first_step_s"] = self.first_step_seconds
        return out


# ---- evaluation ------------------------------------------------------------------------------


def greedy_actions(cfg, base: CropPolicyBase, graphdef, adapters, rest, queries, mesh):
    """Decisions ``[N]`` and original-frame boxes ``[N, 4]`` of the policy's greedy answers."""
    sample = vlm_policy.make_sampler(
        graphdef, sampling_settings(cfg, base, greedy=True), 1, base.grid
    )
    batch = cfg.eval.batch_size
    decisions, boxes = [], []
    size = queries["images"].shape[1:3]
    for start in range(0, len(queries["images"]), batch):
        rows = slice(start, start + batch)
        images = queries["images"][rows]
        host = base.prompts(queries["questions"][rows], images)
        pad = batch - len(images)  # the last batch: pad to keep one compiled program
        host = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in host.items()}
        out = sample(
            adapters,
            rest,
            parallel.shard_batch(host, mesh),
            jax.random.key(0),
            np.full((batch, 1), -1, np.int32),
        )
        tokens, mask = jax.device_get((out.tokens, out.mask))
        d, b, _ = base.read(tokens[: len(images)], mask[: len(images)], size)
        decisions.append(d)
        boxes.append(b)
    return np.concatenate(decisions), np.concatenate(boxes)


POLICIES = ("warm_start_policy", region_r1_eval.POLICY)


def _read_policy_actions(policies, batch, keys):
    del policies, keys
    return batch["policy_decisions"], batch["policy_boxes"]


def evaluate(cfg, base, graphdef, adapters, rest, frozen, scorer, query_sets, mesh):
    """The baselines, the warm-start policy and the trained policy (both greedy) on each
    query set."""
    for queries in query_sets.values():
        actions = [
            greedy_actions(cfg, base, graphdef, a, rest, queries, mesh)
            for a in (adapters_off(adapters), adapters)
        ]
        queries["policy_decisions"] = np.stack([d for d, _ in actions], axis=1)
        queries["policy_boxes"] = np.stack([b for _, b in actions], axis=1)
    return region_r1_eval.evaluate(
        cfg,
        POLICIES,
        _read_policy_actions,
        None,
        frozen,
        scorer,
        query_sets,
        mesh,
        batch_keys=("policy_decisions", "policy_boxes"),
    )


# ---- the run ---------------------------------------------------------------------------------


def _train_queries(cfg, scorer, mesh) -> dict[str, Any]:
    if _benchmark(cfg) == "synthetic":
        presets = tuple(cfg.data.train_presets)
        per_preset = cfg.data.train_queries_per_preset
        train = region_r1.query_set(scorer, "train", presets, per_preset, cfg, mesh)
    else:
        train = region_r1_benchmark.query_set(cfg, scorer, "train", mesh)
    train["rows"] = np.arange(len(train["images"]), dtype=np.int32)
    return train


def _eval_queries(cfg, scorer, mesh) -> dict[str, dict[str, Any]]:
    if _benchmark(cfg) == "synthetic":
        return {
            preset: region_r1.query_set(scorer, "test", (preset,), cfg.eval.num_queries, cfg, mesh)
            for preset in cfg.eval.presets
        }
    return {_benchmark(cfg): region_r1_benchmark.query_set(cfg, scorer, "test", mesh)}


def _benchmark(cfg) -> str:
    benchmark = cfg.data.get("benchmark", "synthetic")
    if benchmark != "synthetic" and benchmark not in region_r1_benchmark.BENCHMARKS:
        raise ConfigError(
            f"data.benchmark={benchmark!r}: expected 'synthetic' or one of "
            f"{list(region_r1_benchmark.BENCHMARKS)}"
        )
    return benchmark


def _scorer(cfg, workdir: Path, mesh):
    if _benchmark(cfg) == "synthetic":
        return region_r1.Scorer(cfg, workdir, mesh)
    if cfg.sft.steps:
        raise ConfigError(
            f"sft.steps={cfg.sft.steps}: the warm start teaches ground-truth boxes, which "
            f"{_benchmark(cfg)} does not have; start from a pretrained VLM with sft.steps=0"
        )
    return region_r1_benchmark.BenchmarkScorer(cfg, workdir, mesh)


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
    optimizer = adamw_warmup_cosine(cfg.train)
    state = jax.jit(lambda a: TrainState.create(a, optimizer, cfg.seed))(adapters)
    # The reference policy is the base itself (adapters off), so frozen holds no "ref".
    kb = parallel.put_replicated(scorer.kb, mesh)
    frozen = {"kb": kb, "scorer": scorer.params, "base": rest}
    step = GRPOStep(cfg, base, graphdef, scorer, optimizer, questions, mesh)
    train_started = time.perf_counter()
    with jax.set_mesh(mesh):
        if finished:
            with Checkpointer(workdir / "checkpoints") as checkpointer:
                _, state, _ = checkpointer.restore(state)
        else:
            state = fit(
                workdir=workdir,
                state=state,
                step_fn=step,
                data=array_batches(
                    {k: train[k] for k in QUERY_KEYS}, cfg.train.batch_size, cfg.seed
                ),
                place_batch=lambda b: b,
                total_steps=cfg.train.steps,
                log_every=cfg.train.log_every,
                checkpoint_every=cfg.train.checkpoint_every,
                frozen=frozen,
                samples_per_step=cfg.train.batch_size,
            )
        train_seconds = time.perf_counter() - train_started
        query_sets = _eval_queries(cfg, scorer, mesh)
        results = evaluate(
            cfg, base, graphdef, state.params, rest, frozen, scorer, query_sets, mesh
        )
    info = {
        "devices": f"{len(mesh.devices.flat)} x {jax.devices()[0].device_kind}",
        "steps": cfg.train.steps,
        "sft_seconds": sft_seconds,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - started,
        "step_profile": step.profile() if step.steps else {},
        "data": {name: q["report"] for name, q in query_sets.items() if "report" in q},
    }
    region_r1_eval.write_report(
        workdir, cfg, results, info, title="Region-R1 with a vision-language crop policy"
    )
    return results


def evaluate_workdir(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Re-evaluate a finished run (every stage restored from its checkpoints)."""
    workdir = prepare_workdir(workdir, cfg)
    if not _finished(cfg, workdir):
        raise WorkdirError(f"{workdir} holds no finished r-GRPO run of {cfg.train.steps} steps")
    return train_and_evaluate(cfg, workdir)
