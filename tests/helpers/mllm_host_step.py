"""The host-driven r-GRPO step of the vision-language crop policy, as the recipe ran it before
``region_r1.mllm_step`` made it one program: the reference the tests and
``scripts/bench_grpo.py`` compare the compiled step with.

The jitted sampler writes G completions per query; the host decodes and parses them
(``crop_tool``); groups that came out all one decision get one slot re-generated with the
other decision's opening forced (``rl.sampling.slots_to_flip``): a second decoding pass of all
B x G rows, of which the flipped ones are kept. One jitted program crops, scores the pool and
computes rewards and advantages (``r_grpo.make_judge``); one jitted update applies the
token-level clipped loss with the k3 KL to the base (adapters off).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrank import parallel
from jaxrank.perf import flop_count
from jaxrank.region_r1 import r_grpo
from jaxrank.region_r1.mllm_policy import CropPolicyBase
from jaxrank.region_r1.mllm_step import forced_openings, sampling_settings
from jaxrank.rl.sampling import slots_to_flip
from jaxrank.rl.token_grpo import make_token_grpo_loss
from jaxrank.train.step import TrainState, make_train_step
from jaxrank.vlm.programs import completion_log_probs_fn, make_sampler


class GRPOStep:
    """``step(state, batch, frozen) -> (state, metrics)`` for ``trainer.fit``: the host-driven
    rollout (sample, parse, balance, judge), then the jitted update. Its keys come from the
    state's rng and step, so a resumed run repeats exactly what the killed one would have done.
    ``frozen`` = ``{"base": ..., "kb": ..., "scorer": ...}``; the queries' questions are looked
    up by ``batch["rows"]`` in ``questions``."""

    def __init__(self, cfg, base: CropPolicyBase, graphdef, scorer, optimizer, questions, mesh):
        self.cfg, self.base, self.questions, self.mesh = cfg, base, questions, mesh
        self.rl = r_grpo.grpo_config(cfg)
        self.group = self.rl.grpo.num_generations
        settings = sampling_settings(cfg, base, greedy=False)
        self.sample = make_sampler(graphdef, settings, self.group, base.grid)
        self.openings = forced_openings(base)
        self.judge = jax.jit(r_grpo.make_judge(scorer.embed, self.rl, scorer.input_size))
        log_probs = completion_log_probs_fn(base.grid, self.group, settings.log_prob_temperature)
        loss = make_token_grpo_loss(graphdef, log_probs, self.rl.grpo)
        self.update = jax.jit(make_train_step(loss, optimizer), donate_argnums=0)
        self.seconds = dict.fromkeys(("rollout", "parse", "reward", "update"), 0.0)
        self.decoding_passes = 0  # sampler calls, every step's
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

    def rollout(self, adapters, base_params, prompts, keys, size):
        """The two-pass balanced rollout with ``keys`` = (sample, flip, resample): tokens, mask
        and log-probs ``[B*G, N]``, decisions ``[B*G]``, original-frame boxes ``[B*G, 4]``, the
        parser's outcome counts and the flipped slots ``[B, G]``."""
        sample_key, flip_key, resample_key = keys
        b, g = prompts["tokens"].shape[0], self.group
        free = np.full((b * g, 1), -1, np.int32)
        self.decoding_passes += 1
        sampled = self._timed(
            "rollout", self.sample, adapters, base_params, prompts, sample_key, free
        )
        tokens, mask, log_probs = (
            np.array(x) for x in (sampled.tokens, sampled.mask, sampled.log_probs)
        )
        decisions, boxes, counts = self._timed("parse", self.base.read, tokens, mask, size)
        flip = np.zeros((b, g), bool)
        if self.rl.balanced:
            flip = np.asarray(slots_to_flip(flip_key, jnp.asarray(decisions.reshape(b, g))))
        if flip.any():
            self.decoding_passes += 1
            forced = self._forced(flip, decisions)
            again = self._timed(
                "rollout", self.sample, adapters, base_params, prompts, resample_key, forced
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
        return tokens, mask, log_probs, decisions, boxes, counts, flip

    def __call__(self, state: TrainState, batch: dict[str, np.ndarray], frozen: dict[str, Any]):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        keys = jax.random.split(jax.random.fold_in(key, 1), 3)
        b, g = len(batch["rows"]), self.group
        prompts = parallel.shard_batch(
            self.base.prompts([self.questions[r] for r in batch["rows"]], batch["images"]),
            self.mesh,
        )
        size = batch["images"].shape[1:3]
        tokens, mask, log_probs, decisions, boxes, counts, flip = self.rollout(
            state.params, frozen["base"], prompts, keys, size
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
