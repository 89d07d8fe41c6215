"""ELVA's published setting (configs/elva/mbeir.py) as sizes, and the analytic memory model of
its programs per device (``perf/memory.py``'s terms): the contrastive step, the RL step and the
evaluation's embedding and first-stage search.

Both training steps are one compiled program each (``train.step``: the rollout, then the
update), so a step's temporaries are the larger of its rollout phase and its update phase. The
vision tower is frozen, so the update keeps none of its activations.

XLA:CPU holds more of a scanned layer than ``perf/memory.py``'s generic terms count (its live
set at the peak, ``XLA_FLAGS=--xla_dump_to``'s live-range dump, float32, two layers): the
backward of a decoder layer with LoRA on every linear is ``memory.lora_decoder_backward_bytes``
(measured here without dropout, and in RAR's update with it); a forward layer holds 5
``[tokens, F]`` (gate, up, the SiLU's two parts, the product; 3 for a plain MLP).

A ``model`` axis splits the weights, the MLP's hidden buffers, the heads' scores and the KV
caches; the residual stream (each layer's kept input, a layer's ``[tokens, W]`` buffers) is
whole on every device of it (XLA:CPU at real depth on 2 x 4 devices, float32: peak 0.95 of
XLA's for the contrastive step, 0.93 for the RL step; dividing those by ``model`` too read
0.51 and 0.71). The vocabulary is not split: the logits are whole on every device.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import ml_collections

from jaxrank.elva.ret_embedder import SUMMARY_REQUEST
from jaxrank.models.hf.published import at_depth, vlm_preset
from jaxrank.models.layer_stack import stacking_of, with_stacking
from jaxrank.models.vlm import VLMConfig
from jaxrank.perf import memory
from jaxrank.perf.memory import FLOAT32, Layer
from jaxrank.vlm.base import VLMBase
from jaxrank.vlm.programs import square_grid

# M-BEIR's global candidate pool (the union of the 16 tasks' pools, UniIR's
# ``mbeir_union_test_cand_pool.jsonl``): 5.6M candidates (DATA_FORMATS.md §3). The paper
# evaluates on the local pools (PAPERS.md §2), each a part of it: the global pool bounds them.
POOL_ROWS = 5_600_000
SEARCH_DEPTH = 50  # mbeir_rows.recall_report's depth: UniIR's largest cut-off (R@50)
# Prompt text beside the image tokens: the summary request at ~4 characters a token, the
# task's instruction and the chat template's markers (64), and the longest inputs, an
# OVEN / InfoSeek candidate: a title and a 100-word Wikipedia chunk (DATA_FORMATS.md §3, ~150).
TEXT_TOKENS = math.ceil(len(SUMMARY_REQUEST) / 4) + 64 + 150
PROMPT_BUCKETS = VLMBase.__dataclass_fields__["prompt_lengths"].default


@dataclasses.dataclass(frozen=True)
class Setting:
    """The embedder's architecture and the three stages' shapes."""

    embedder: VLMConfig
    dtype: jnp.dtype  # the embedder's parameters and compute
    grid: tuple[int, int, int]
    prompt_length: int  # the left-padding bucket of image tokens + TEXT_TOKENS
    summary_tokens: int  # the summary's cap; [RET] follows
    contrastive_batch: int  # query-positive pairs per step, all devices
    group: int  # G rollouts per RL query
    pool: int  # prompt rows per RL query: the query, its positive and its negatives
    rl_batch: int  # RL queries per step, all devices
    eval_batch: int  # rows per evaluation batch, all devices
    pool_rows: int  # candidates the evaluation searches
    lora_dropout: float
    logit_chunk: int = 0  # summary positions per chunk of the RL update's log-probs (0: all)

    @property
    def patches(self) -> int:
        return math.prod(self.grid)

    @property
    def dim(self) -> int:
        """The embedding's width: the language model's hidden state at ``[RET]``."""
        return self.embedder.lm.width


def read_setting(
    cfg: ml_collections.ConfigDict, depth: int | None = None, dtype: str | None = None
) -> Setting:
    """The setting of an ELVA generative config with a released checkpoint; ``depth`` builds
    both towers that many layers deep (real widths), ``dtype`` overrides the compute dtype."""
    section = cfg.embedder
    embedder = with_stacking(vlm_preset(section.checkpoint), stacking_of(section))
    if depth is not None:
        embedder = at_depth(embedder, depth)
    grid = square_grid(section.image_size, embedder.vision)
    needed = math.prod(grid) // embedder.vision.spatial_merge_size**2 + TEXT_TOKENS
    return Setting(
        embedder=embedder,
        dtype=jnp.dtype(dtype or section.dtype),
        grid=grid,
        prompt_length=next((b for b in PROMPT_BUCKETS if b >= needed), needed),
        summary_tokens=section.summary_tokens,
        contrastive_batch=cfg.contrastive.batch_size,
        group=cfg.rl.num_generations,
        pool=2 + cfg.mining.n_hard + cfg.mining.n_random,
        rl_batch=cfg.train.batch_size,
        eval_batch=cfg.eval.batch_size,
        pool_rows=POOL_ROWS,
        lora_dropout=float(cfg.lora.dropout),
        logit_chunk=int(section.get("logit_chunk", 0)),
    )


MLP_FORWARD = {True: 5, False: 3}  # [tokens, F] buffers of a forward layer, gated or plain


def forward_layer_bytes(layer: Layer, tokens: float, triples: float, itemsize: int) -> float:
    """One scanned forward layer's temporaries on XLA:CPU: its attention (the scores and their
    masked copy) or its MLP (``MLP_FORWARD`` hidden buffers), whichever is larger."""
    mlp = tokens * (2 * layer.width + MLP_FORWARD[layer.gated] * layer.mlp) * itemsize
    return max(memory.live_layer_bytes(layer, tokens, triples, itemsize, scanned=True), mlp)


def backward_layer_bytes(s: Setting, tokens: float, slots: int, model: int = 1) -> float:
    """One rematerialised decoder layer's backward over ``tokens`` tokens attending to
    ``slots`` slots (``memory.lora_decoder_backward_bytes``, the config's LoRA dropout)."""
    lm, dropout = s.embedder.lm, s.lora_dropout > 0
    return memory.lora_decoder_backward_bytes(lm, tokens, slots, s.dtype.itemsize, dropout, model)


def _kv(s: Setting, rows: int, slots: int) -> float:
    lm = s.embedder.lm
    return memory.kv_cache_bytes(
        lm.depth, rows, slots, lm.kv_heads, lm.dim_per_head, s.dtype.itemsize
    )


def _vision_phase(s: Setting, images: int) -> float:
    """The frozen vision tower's widest layer over ``images`` images (every block attends over
    a whole image in Qwen2-VL)."""
    v, n = s.embedder.vision, s.patches
    return forward_layer_bytes(
        memory.vision_layer(s.embedder.vision),
        images * n,
        images * n * n * v.heads,
        s.dtype.itemsize,
    )


def _summaries(s: Setting, prompts: int, group: int, new: int) -> float:
    """Sampling ``new`` tokens, ``group`` per prompt row: the prompts' KV cache and its
    repeat (both live while it is copied), the widest prefill layer and one decode step's
    float32 logits (``memory.logits_bytes``, three copies)."""
    lm, e = s.embedder.lm, s.dtype.itemsize
    slots = s.prompt_length + new
    tokens = prompts * s.prompt_length
    prefill = forward_layer_bytes(
        memory.decoder_layer(s.embedder.lm), tokens, tokens * slots * lm.heads, e
    )
    rows = prompts * group
    kv = _kv(s, prompts + (rows if group > 1 else 0), slots)
    return kv + prefill + memory.logits_bytes(rows, lm.vocab_size, copies=3)


def _larger(phases: dict[str, dict[str, float]]) -> dict[str, float]:
    """The terms of the phase with the most bytes (phases follow one another)."""
    return max(phases.values(), key=lambda terms: sum(terms.values()))


def contrastive_temporaries(s: Setting, b: int, model: int = 1) -> dict[str, float]:
    """The contrastive step at ``b`` pairs per device (2b prompt rows): greedy summaries, then
    two teacher-forced passes over prompt + summary + ``[RET]`` (the own summary for the
    embedding, the reference one for its NLL), each keeping its layers' inputs; on top the
    widest of a layer's backward, the NLL's float32 logits (three copies) and the frozen
    vision tower's widest layer."""
    lm, e = s.embedder.lm, s.dtype.itemsize
    rows, length = 2 * b, s.summary_tokens + 1
    slots = s.prompt_length + length
    tokens = rows * slots
    kept = {"decoder_layer_inputs": 2 * lm.depth * tokens * lm.width * e}
    update = {
        "decoder_layer_backward": backward_layer_bytes(s, tokens, slots, model),
        "logits": memory.logits_bytes(rows * length, lm.vocab_size, copies=3),
    }
    widest = max(update, key=update.get)
    return _larger(
        {
            "update": {**kept, widest: update[widest]},
            "summaries": {"summaries": _summaries(s, rows, 1, s.summary_tokens) / model},
            "vision": {"vision_layer": _vision_phase(s, rows) / model},
        }
    )


def update_logits(s: Setting, rows: int) -> dict[str, float]:
    """The GRPO update's logits over ``rows`` completions of ``summary_tokens + 1``: three
    float32 ``[rows positions, V]`` buffers (the policy's logits kept for the backward, their
    gradient, the log-softmax's exponentials), plus the compute-dtype matmul outputs when that
    dtype is narrower; positions are all of them, or ``logit_chunk`` (then the head's ``[V, W]``
    matrix transposed is carried into the chunk loop, as Region-R1's update measured on
    XLA:CPU; counted for every backend, which overstates one that reads it in place)."""
    e, lm, new = s.dtype.itemsize, s.embedder.lm, s.summary_tokens + 1
    chunked = 0 < s.logit_chunk < new
    live = rows * (s.logit_chunk if chunked else new)
    logits = memory.logits_bytes(live, lm.vocab_size, copies=3)
    if e < FLOAT32:
        logits += 2 * live * lm.vocab_size * e
    return {"logits": logits, "head_transposed": lm.vocab_size * lm.width * e if chunked else 0}


def rl_step_temporaries(s: Setting, b: int, model: int = 1) -> dict[str, float]:
    """The RL step at ``b`` queries per device (``pool`` prompt rows each, G summaries of
    ``summary_tokens + 1`` per row). The rollout: the summaries, then their ``[RET]`` states
    (a forward over the repeated prompt cache). The GRPO update keeps each layer's input and
    the final states of the prompts and the completions, and the repeated KV caches of the
    policy's and the reference's passes (and, chunked, the head transposed); on top the widest
    of the completions' logits (``update_logits``), a layer's backward over the prompts or the
    completions, and four more copies of the repeated cache (each pass's cache with the
    completions' keys written in, and the backward's cotangents of the policy's two; XLA:CPU's
    live set at full depth holds six caches, at two layers the unchunked logits lead)."""
    lm, e = s.embedder.lm, s.dtype.itemsize
    prompts, new = b * s.pool, s.summary_tokens + 1
    rows, slots = prompts * s.group, s.prompt_length + new
    prompt_tokens, completion_tokens = prompts * s.prompt_length, rows * new
    layer = memory.decoder_layer(s.embedder.lm)
    kept = {
        "decoder_layer_inputs": (lm.depth + 1) * (prompt_tokens + completion_tokens) * lm.width * e,
        "kv_caches": 2 * _kv(s, rows, slots) / model,
    }
    backward = max(
        backward_layer_bytes(s, t, slots, model) for t in (prompt_tokens, completion_tokens)
    )
    logits = update_logits(s, rows)
    if logits["head_transposed"]:
        kept["head_transposed"] = logits["head_transposed"]
    update = {
        "decoder_layer_backward": backward,
        "logits": logits["logits"],
        "kv_cache_copies": 4 * _kv(s, rows, slots) / model,
    }
    widest = max(update, key=update.get)
    tail = forward_layer_bytes(layer, completion_tokens, completion_tokens * slots * lm.heads, e)
    return _larger(
        {
            "update": {**kept, widest: update[widest]},
            "rollout": {
                "summaries": _summaries(s, prompts, s.group, new) / model,
                "ret_states": (_kv(s, prompts + rows, slots) + tail) / model,
            },
            "vision": {"vision_layer": _vision_phase(s, prompts) / model},
        }
    )


def embed_temporaries(s: Setting, b: int, model: int = 1) -> dict[str, float]:
    """Embedding ``b`` rows per device: the greedy summaries, then a forward over prompt +
    summary + ``[RET]``, or the vision tower's widest layer, whichever is larger."""
    lm, e = s.embedder.lm, s.dtype.itemsize
    slots = s.prompt_length + s.summary_tokens + 1
    tokens = b * slots
    full = forward_layer_bytes(
        memory.decoder_layer(s.embedder.lm), tokens, tokens * slots * lm.heads, e
    )
    return _larger(
        {
            "summaries": {"summaries": _summaries(s, b, 1, s.summary_tokens) / model},
            "ret_states": {"ret_states": full / model},
            "vision": {"vision_layer": _vision_phase(s, b) / model},
        }
    )


TEMPORARIES = {
    "contrastive": contrastive_temporaries,
    "rl_step": rl_step_temporaries,
    "embed": embed_temporaries,
}
