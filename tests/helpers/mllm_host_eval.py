"""The vision-language crop policy's evaluation as the recipe ran it before
``region_r1.mllm_evaluation`` read completions on the device: the reference the tests compare
the in-graph evaluation with. Each policy decodes the query set greedily in jitted batches, the
host decodes and parses the completions (``CropPolicyBase.read``, ``crop_tool``), and the
parsed actions go to ``evaluation.evaluate`` as batch arrays."""

from __future__ import annotations

import jax
import numpy as np

from jaxrank import parallel
from jaxrank.models.lora import adapters_off
from jaxrank.region_r1 import evaluation
from jaxrank.region_r1.mllm_evaluation import POLICIES
from jaxrank.region_r1.mllm_policy import CropPolicyBase
from jaxrank.region_r1.mllm_step import sampling_settings
from jaxrank.vlm.programs import make_sampler


def greedy_completions(cfg, base: CropPolicyBase, graphdef, adapters, rest, queries, mesh):
    """The policy's greedy completions ``[N, L]`` and their mask, on the host."""
    sample = make_sampler(graphdef, sampling_settings(cfg, base, greedy=True), 1, base.grid)
    batch = cfg.eval.batch_size
    tokens, masks = [], []
    for start in range(0, len(queries["images"]), batch):
        rows = slice(start, start + batch)
        images = queries["images"][rows]
        host = base.prompts(queries["questions"][rows], images)
        pad = batch - len(images)  # the last batch: pad to keep one compiled program
        host = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in host.items()}
        forced = np.full((batch, 1), -1, np.int32)
        out = sample(adapters, rest, parallel.shard_batch(host, mesh), jax.random.key(0), forced)
        t, m = jax.device_get((out.tokens, out.mask))
        tokens.append(t[: len(images)])
        masks.append(m[: len(images)])
    return np.concatenate(tokens), np.concatenate(masks)


def read_policy_actions(policies, batch, keys):
    """``evaluation.PolicyActions`` of actions parsed on the host, carried by the batch."""
    del policies, keys
    return batch["policy_decisions"], batch["policy_boxes"]


def evaluate_parsed(cfg, base: CropPolicyBase, completions, frozen, scorer, query_sets, mesh):
    """``evaluation.evaluate`` of ``completions[name] = [(tokens, mask) per policy]`` (the
    ``POLICIES`` order) parsed on the host; the query sets gain the parsed actions."""
    for name, queries in query_sets.items():
        size = queries["images"].shape[1:3]
        actions = [base.read(tokens, mask, size)[:2] for tokens, mask in completions[name]]
        queries["policy_decisions"] = np.stack([d for d, _ in actions], axis=1)
        queries["policy_boxes"] = np.stack([b for _, b in actions], axis=1)
    keys = ("policy_decisions", "policy_boxes")
    return evaluation.evaluate(
        cfg, POLICIES, read_policy_actions, None, frozen, scorer, query_sets, mesh, keys
    )


def evaluate(cfg, base: CropPolicyBase, graphdef, adapters, rest, frozen, scorer, query_sets, mesh):
    """The baselines, the warm-start policy and the trained policy (both greedy) on each
    query set, every completion parsed on the host."""
    completions = {
        name: [
            greedy_completions(cfg, base, graphdef, a, rest, queries, mesh)
            for a in (adapters_off(adapters), adapters)
        ]
        for name, queries in query_sets.items()
    }
    return evaluate_parsed(cfg, base, completions, frozen, scorer, query_sets, mesh)
