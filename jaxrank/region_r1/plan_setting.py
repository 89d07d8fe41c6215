"""Region-R1's published setting (the MLLM recipe's config) as sizes, and the analytic memory
model of its three programs per device (``perf/memory.py``'s terms): the token-level r-GRPO
update, the sampler, and the scorer's judge.

The policy's vision tower runs on each device's own images (its images share one grid, so
their attention groups sit on a leading image axis the partitioner splits over ``data``;
docs/SCALING.md), so every term follows the per-chip batch; the knowledge base's bytes are the
arguments' (``kb_layout``: replicated, or split over the devices).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import ml_collections

from jaxrank.models.dual_encoder import DualEncoderConfig
from jaxrank.models.hf.published import at_depth, dual_encoder_preset, vlm_preset
from jaxrank.models.layer_stack import stacking_of, with_stacking
from jaxrank.models.lora import LoRAConfig
from jaxrank.models.vlm import VLMConfig
from jaxrank.perf import memory
from jaxrank.perf.memory import Estimate, Layer
from jaxrank.region_r1 import crop_tool
from jaxrank.vlm.base import VLMBase
from jaxrank.vlm.programs import square_grid

# Knowledge-base pages (DATA_FORMATS.md §1: E-VQA's about 2M, EchoSight's InfoSeek 100K).
KB_ROWS = {"evqa": 2_000_000, "infoseek": 100_000}
# Prompt text beside the image tokens: the paper's system prompt at ~4 characters a token, plus
# the question and the chat template's markers.
TEXT_TOKENS = math.ceil(len(crop_tool.SYSTEM_PROMPT) / 4) + 64
PROMPT_BUCKETS = VLMBase.__dataclass_fields__["prompt_lengths"].default


@dataclasses.dataclass(frozen=True)
class Setting:
    """What the planner builds: the policy and scorer architectures and the step's shapes."""

    policy: VLMConfig
    scorer: DualEncoderConfig
    lora: LoRAConfig
    dtype: jnp.dtype  # the policy's parameters and compute
    group: int
    prompt_length: int  # the left-padding bucket of image tokens + TEXT_TOKENS
    new_tokens: int
    grid: tuple[int, int, int]
    image_size: int  # the query images' square side
    pool: int
    kb_rows: int
    batch: int  # queries per step, all devices
    eval_batch: int  # queries per evaluation batch, all devices (the first-stage search's)
    temperature: float
    logit_chunk: int = 0  # completion positions per chunk of the update's log-probs (0: all)

    @property
    def slots(self) -> int:
        return self.prompt_length + self.new_tokens

    @property
    def patches(self) -> int:
        return math.prod(self.grid)


def read_setting(
    cfg: ml_collections.ConfigDict, depth: int | None = None, dtype: str | None = None
) -> Setting:
    """The setting of a Region-R1 MLLM config; ``depth`` builds every tower that many layers
    deep (real widths), ``dtype`` overrides the policy's and the scorer's compute dtype."""
    dtype = jnp.dtype(dtype or cfg.policy.dtype)
    policy = with_stacking(vlm_preset(cfg.policy.checkpoint), stacking_of(cfg.policy))
    scorer = dual_encoder_preset(
        cfg.scorer_checkpoint, dtype if cfg.get("scorer_dtype") else jnp.float32, jnp.float32
    )
    scorer = with_stacking(scorer, stacking_of(cfg, "scorer_"))
    if depth is not None:
        policy, scorer = at_depth(policy, depth), at_depth(scorer, depth)
    grid = square_grid(cfg.policy.image_size, policy.vision)
    image_tokens = math.prod(grid) // policy.vision.spatial_merge_size**2
    needed = image_tokens + TEXT_TOKENS
    lora = cfg.lora.to_dict()
    lora["targets"] = (
        lora["targets"] if isinstance(lora["targets"], str) else tuple(lora["targets"])
    )
    return Setting(
        policy=policy,
        scorer=scorer,
        lora=LoRAConfig(**lora),
        dtype=dtype,
        group=cfg.rl.num_generations,
        prompt_length=next((b for b in PROMPT_BUCKETS if b >= needed), needed),
        new_tokens=cfg.policy.max_new_tokens,
        grid=grid,
        image_size=cfg.data.image_size,
        pool=cfg.data.pool_size,
        kb_rows=KB_ROWS.get(cfg.data.get("benchmark", ""), 0),
        batch=cfg.train.batch_size,
        eval_batch=cfg.eval.batch_size,
        temperature=float(cfg.policy.get("temperature", 1.0)),
        logit_chunk=int(cfg.policy.get("logit_chunk", 0)),
    )


def _scorer_layer(s: Setting) -> tuple[Layer, int]:
    v = s.scorer.vision
    tokens = (v.image_size // v.patch_size) ** 2 + int(v.class_token)
    return Layer(v.width, v.width, v.mlp_dim, v.heads, gated=False), tokens


def _kv(s: Setting, rows: int) -> float:
    lm = s.policy.lm
    itemsize = s.dtype.itemsize
    return memory.kv_cache_bytes(lm.depth, rows, s.slots, lm.kv_heads, lm.dim_per_head, itemsize)


def _update_logits(s: Setting, rows: int) -> tuple[float, float]:
    """The update's logits for ``rows`` completions. All positions at once: three float32
    ``[rows N, V]`` buffers live together (the policy's logits kept for the backward, their
    gradient, the log-softmax's exponentials; the reference's are freed before). Chunked
    (``logit_chunk``): three ``[rows chunk, V]`` ones, and the head's ``[V, W]`` embedding
    transposed, carried into the chunk loop for the whole step (measured on XLA:CPU; counted
    for every backend, which overstates one that reads it in place). Plus the compute-dtype
    matmul outputs when that dtype is narrower. Returns (logits, transposed head) bytes."""
    e, lm = s.dtype.itemsize, s.policy.lm
    positions = s.logit_chunk if 0 < s.logit_chunk < s.new_tokens else s.new_tokens
    live = rows * positions
    logits = memory.logits_bytes(live, lm.vocab_size, copies=3)
    if e < memory.FLOAT32:
        logits += 2 * live * lm.vocab_size * e
    transposed = lm.vocab_size * lm.width * e if positions < s.new_tokens else 0
    return logits, transposed


def _stack_terms(
    name: str, saved: list[float], running: float, layer_input: float, remat: bool
) -> tuple[dict[str, float], dict[str, float]]:
    """A tower's (kept, phase) terms: unrematerialised, every layer's saved activations are
    kept through the backward; rematerialised, each layer's input is, and one layer's
    ``running`` bytes are a phase of their own."""
    if not remat:
        return {f"{name}_activations": sum(saved)}, {}
    return {f"{name}_layer_inputs": layer_input * len(saved)}, {f"{name}_layer": running}


def update_temporaries(s: Setting, b: int, model: int = 1) -> dict[str, float]:
    """The r-GRPO update's temporaries for ``b`` queries per device, weights split over
    ``model``. Kept through the step: the policy's saved activations (prompt once, the G
    completions over its repeated cache; only each layer's input when rematerialised), the
    vision tower's (the device's b images), the KV caches it reads back and, in a scanned
    decoder, what XLA hoists out of the layer loop (the attention mask broadcast to every head,
    float32 and boolean; the counters of the LoRA dropout's threefry bits, two 32-bit words per
    element of the widest inputs, the same in every layer). On top, the largest of the phases
    that follow one another: the logits (``_update_logits``) and, per rematerialised tower, one
    layer running: a decoder layer's backward over the prompts or over the completions, two
    passes (``memory.lora_decoder_backward_bytes``), a vision block's saved activations or
    attention (``memory.running_layer_bytes``).
    ``model`` > 1 divides the head- and MLP-split terms, not the replicated vocabulary."""
    e, lm, v = s.dtype.itemsize, s.policy.lm, s.policy.vision
    rows = b * s.group
    tokens = b * s.prompt_length + rows * s.new_tokens
    triples = tokens * s.slots * lm.heads
    decoder = memory.decoder_layer(s.policy.lm)
    saved = [memory.saved_activation_bytes(decoder, tokens, triples, e)] * lm.depth
    running = max(
        memory.lora_decoder_backward_bytes(lm, t, s.slots, e, s.lora.dropout > 0, model)
        for t in (b * s.prompt_length, rows * s.new_tokens)
    )
    kept, phases = _stack_terms("decoder", saved, running, tokens * lm.width * e, lm.stacking.remat)
    vision = memory.vision_layer(s.policy.vision)
    images_tokens = b * s.patches
    triples_by_layer = memory.vision_triples(s.policy.vision, s.patches, b)
    vision_saved = [
        memory.saved_activation_bytes(vision, images_tokens, t, e) for t in triples_by_layer
    ]
    vision_running = max(
        memory.running_layer_bytes(vision, images_tokens, t, e) for t in triples_by_layer
    )
    vision_kept, vision_phases = _stack_terms(
        "vision", vision_saved, vision_running, images_tokens * v.width * e, v.stacking.remat
    )
    kept = {**kept, **vision_kept, "kv_caches": _kv(s, rows + b)}
    if lm.stacking.scan:
        kept["attention_masks"] = triples * (memory.FLOAT32 + 1)
        if s.lora.dropout > 0:
            kept["dropout_bits"] = 2 * 4 * tokens * (lm.mlp_dim + lm.width)
    kept = {k: value / model for k, value in kept.items()}
    logits, transposed = _update_logits(s, rows)
    if transposed:
        kept["head_transposed"] = transposed
    phases = {
        **phases,
        **{k: value / model for k, value in vision_phases.items()},
    }
    phases["logits"] = logits
    widest = max(phases, key=phases.get)
    return {**kept, widest: phases[widest]}


def sampler_temporaries(s: Setting, b: int, model: int = 1) -> dict[str, float]:
    """The sampler's temporaries: the prompt's KV cache and its G-fold repeat (both live while
    it is copied), the widest live layer (a prefill layer over the prompts, or a vision block
    over the device's images) and one decode step's float32 logits."""
    e, lm = s.dtype.itemsize, s.policy.lm
    rows = b * s.group
    prompt_tokens = b * s.prompt_length
    prefill = memory.live_layer_bytes(
        memory.decoder_layer(s.policy.lm),
        prompt_tokens,
        prompt_tokens * s.slots * lm.heads,
        e,
        lm.stacking.scan,
    )
    images, scanned = b, s.policy.vision.stacking.scan
    vision = max(
        memory.live_layer_bytes(
            memory.vision_layer(s.policy.vision), images * s.patches, t, e, scanned
        )
        for t in memory.vision_triples(s.policy.vision, s.patches, images)
    )
    return {
        "kv_cache": _kv(s, rows + b) / model,
        "widest_layer": max(prefill, vision) / model,
        "decode_logits": memory.logits_bytes(rows, lm.vocab_size, copies=3),
    }


def judge_temporaries(s: Setting, b: int, model: int = 1) -> dict[str, float]:
    """The judge's temporaries: the G crops and the full image resized to the scorer's input
    in float32 (and the query images tiled G times), and the scorer's widest layer over the
    crops."""
    layer, tokens = _scorer_layer(s)
    side = s.scorer.vision.image_size
    crops = b * (s.group + 1) * side * side * 3 * memory.FLOAT32
    tiled = b * s.group * s.image_size**2 * 3 * memory.FLOAT32
    images = b * s.group
    widest = memory.live_layer_bytes(
        layer, images * tokens, images * tokens * tokens * layer.heads, s.scorer.dtype.itemsize
    )
    return {"crops": crops + tiled, "widest_layer": widest / model}


def estimate(
    s: Setting, program: str, b: int, arguments: dict[str, float], model: int = 1
) -> Estimate:
    """The analytic ``Estimate`` of ``program`` ("update", "sampler" or "judge") with its
    ``arguments`` bytes per device (exact, from the abstract arrays)."""
    if program == "update":
        temporaries = update_temporaries(s, b, model)
    elif program == "sampler":
        temporaries = sampler_temporaries(s, b, model)
    else:
        temporaries = judge_temporaries(s, b, model)
    return Estimate(arguments, temporaries)
