"""The vision-language crop policy's evaluation, one program per batch.

The warm-start policy (adapters off) and the trained one decode each batch greedily, their
completions are read on the device (``tool_reader``, as in the training step), the boxes mapped
to the original image's pixels (``crop_tool.box_in_image`` in ``policy.box_frame``), and the
actions cropped and scored with the baselines' (``evaluation.make_evaluator``): no completion
leaves the device. The host only tokenises each batch's prompts. The
host-parsed evaluation it replaces is the tests' reference (``tests/helpers/mllm_host_eval.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxrank.models.lora import adapters_off
from jaxrank.region_r1 import crop_tool, evaluation
from jaxrank.region_r1.mllm_policy import CropPolicyBase
from jaxrank.region_r1.mllm_step import sampling_settings
from jaxrank.region_r1.tool_reader import ToolReader
from jaxrank.vlm.programs import PROMPT_KEYS, sampler_fn

POLICIES = ("warm_start_policy", evaluation.POLICY)

# (adapters, base weights, batch) -> completion tokens [B, N] and their mask
Decode = Callable[[Any, Any, dict[str, jax.Array]], tuple[jax.Array, jax.Array]]


def greedy_decode(cfg: ml_collections.ConfigDict, base: CropPolicyBase, graphdef) -> Decode:
    """One greedy completion per query of the batch's prompts."""
    sample = sampler_fn(graphdef, sampling_settings(cfg, base, greedy=True), 1, base.grid)

    def decode(adapters, rest, batch):
        prompts = {k: batch[k] for k in PROMPT_KEYS}
        free = jnp.full((prompts["tokens"].shape[0], 1), -1, jnp.int32)
        out = sample(adapters, rest, prompts, jax.random.key(0), free)
        return out.tokens, out.mask

    return decode


def policy_actions(
    cfg: ml_collections.ConfigDict, base: CropPolicyBase, reader: ToolReader, decode: Decode
) -> evaluation.PolicyActions:
    """``evaluation.PolicyActions`` of ``policies = {"base": frozen weights, "adapters":
    (warm start's, trained)}`` (``POLICIES`` order): each decodes, its completions read on the
    device."""
    box_frame = cfg.policy.get("box_frame", "model")  # crop_tool.BOX_FRAMES
    frame = np.asarray(base.frame)

    def actions(policies, batch, keys):
        del keys  # greedy
        original = batch["images"].shape[1:3]
        decisions, boxes = [], []
        for adapters in policies["adapters"]:
            reading = reader.read(*decode(adapters, policies["base"], batch))
            decisions.append(reading.decision)
            boxes.append(crop_tool.box_in_image(reading.box, frame, original, box_frame))
        return jnp.stack(decisions, axis=1), jnp.stack(boxes, axis=1)

    return actions


def evaluate(
    cfg: ml_collections.ConfigDict,
    base: CropPolicyBase,
    graphdef,
    reader: ToolReader,
    adapters,
    rest,
    frozen: dict[str, Any],
    scorer,
    query_sets: dict[str, dict[str, Any]],
    mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
    """``evaluation.evaluate``'s results for the baselines, the warm-start policy and the
    trained policy (both greedy) on each query set; the host tokenises each batch's prompts,
    its questions looked up by row."""
    actions = policy_actions(cfg, base, reader, greedy_decode(cfg, base, graphdef))
    policies = {"base": rest, "adapters": (adapters_off(adapters), adapters)}
    prompts = lambda queries, batch: base.prompts(
        [queries["questions"][r] for r in batch["rows"]], batch["images"]
    )
    return evaluation.evaluate(
        cfg, POLICIES, actions, policies, frozen, scorer, query_sets, mesh, (), prompts
    )
