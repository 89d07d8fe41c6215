"""A LoRA-adapted vision-language policy's device programs for token-level GRPO: sample G
completions per image+text prompt, and score given completions (teacher forcing) under any
adapters: the trained ones, or zeroed ones for the reference policy.

A batch is a dict of ``tokens`` ``[B, P]``, ``mask`` ``[B, P]``, ``positions`` ``[B, 3, P]``
(``QwenVLInputs.batch``'s M-RoPE positions, rows first) and ``patches`` ``[B, n, d]`` (each
row's image patches): every leaf has the rows first, so a batch shards over ``data`` by rows.
All images of a batch share one patch grid (``grid``, static), which is what lets the programs
compile once: recipes resize query images to one size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from jax.typing import DTypeLike

from jaxrank.models.hf.qwen_vl_processor import smart_resize
from jaxrank.models.lm_prompt import Prompt
from jaxrank.models.lm_scoring import completion_log_probs
from jaxrank.models.lora import join_lora
from jaxrank.models.qwen_vision import Grid
from jaxrank.models.vlm import VisionLanguageModel
from jaxrank.perf import plan
from jaxrank.rl.sampler import Completions, Noise, SamplingSettings, generate

PROMPT_KEYS = ("tokens", "mask", "positions", "patches")


def square_grid(side: int, vision: Any) -> Grid:
    """The patch grid of a ``side`` x ``side`` image as the Qwen-VL processor resizes it
    (``smart_resize``), for a vision tower config ``vision``."""
    height, width = smart_resize(side, side)
    return (1, height // vision.patch_size, width // vision.patch_size)


def abstract_prompts(
    mesh: Mesh, rows: int, length: int, patches: int, patch_dim: int
) -> dict[str, jax.ShapeDtypeStruct]:
    """A prompt batch of ``rows`` rows (all data shards) as abstract arrays split by rows over
    ``data``: what a planner compiles these programs against."""
    return {
        "tokens": plan.rows(mesh, (rows, length), jnp.int32),
        "mask": plan.rows(mesh, (rows, length), jnp.bool_),
        "positions": plan.rows(mesh, (rows, 3, length), jnp.int32),
        "patches": plan.rows(mesh, (rows, patches, patch_dim), jnp.float32),
    }


def vlm_prompt(model: VisionLanguageModel, batch: dict[str, Any], grid: Grid) -> Prompt:
    """The prompt rows of ``batch``, image tokens in place (every row has one ``grid`` image)."""
    patches = batch["patches"]
    grids = (tuple(grid),) * patches.shape[0]
    return model.prompt(
        batch["tokens"],
        batch["mask"],
        batch["positions"].transpose(1, 0, 2),
        patches.reshape(-1, patches.shape[-1]),
        grids,
    )


def sampler_fn(
    graphdef: nnx.GraphDef,
    settings: SamplingSettings,
    group: int,
    grid: Grid,
    cache_dtype: DTypeLike | None = None,
) -> Callable[..., Completions]:
    """``sample(adapters, base, batch, rng, forced, noise=None) -> Completions`` ``[B*G, N]``,
    to call inside a jitted step; no dropout. ``forced`` ``[B*G, F]`` (``-1`` = sample) and
    ``noise`` are ``rl.sampler.generate``'s."""

    def sample(adapters, base, batch, rng, forced, noise: Noise | None = None):
        model = nnx.view(join_lora(graphdef, adapters, base), deterministic=True)
        prompt = vlm_prompt(model, batch, grid)
        lm = model.language_model
        return generate(lm, prompt, rng, settings, group, cache_dtype, forced, noise)

    return sample


def make_sampler(
    graphdef: nnx.GraphDef,
    settings: SamplingSettings,
    group: int,
    grid: Grid,
    cache_dtype: DTypeLike | None = None,
) -> Callable[..., Completions]:
    """``sampler_fn``'s program jitted on its own: ``sample(adapters, base, batch, rng,
    forced)``."""
    sample = sampler_fn(graphdef, settings, group, grid, cache_dtype)
    return jax.jit(
        lambda adapters, base, batch, rng, forced: sample(adapters, base, batch, rng, forced)
    )


def completion_log_probs_fn(
    grid: Grid, group: int, temperature: float, logit_chunk: int = 0
) -> Callable[[VisionLanguageModel, dict[str, Any]], jax.Array]:
    """``log_probs(model, batch) -> [B*G, N]`` of ``batch["completion"]`` (masked by
    ``batch["completion_mask"]``) after each prompt row repeated G times: what
    ``token_grpo.make_token_grpo_loss`` takes. The vision tower and the prompt run once per
    prompt (``completion_log_probs``'s shared prefix); ``logit_chunk`` > 0 computes the
    log-probs that many positions at a time (``lm_scoring.head_log_probs``)."""

    def log_probs(model, batch):
        logp, _ = completion_log_probs(
            model.language_model,
            vlm_prompt(model, batch, grid),
            batch["completion"],
            batch["completion_mask"],
            temperature,
            group=group,
            logit_chunk=logit_chunk,
        )
        return logp

    return log_probs
