"""RAR's published few-shot setting (configs/rar/fewshot.py) as sizes, and the analytic memory
model of its programs per device (``perf/memory.py``'s terms): the ranking fine-tuning's
update, and the evaluation's memory encoder, class search and the ranker's two readings.
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
from jaxrank.rar.ranking_text import PROMPTS
from jaxrank.rar.recipe import k_for
from jaxrank.search.index import QUERY_BUCKETS
from jaxrank.vlm.base import VLMBase
from jaxrank.vlm.programs import square_grid

# The largest memory of the paper's few-shot settings: ImageNet's 1000 classes at 16 shots
# (PAPERS.md §3: 11 datasets at 1/2/4/8/16 shots; ImageNet has the most classes).
MEMORY_ROWS = 1000 * 16
# Text tokens beside the image: the chat template's markers and default system prompt, the
# ranking prompt's wording at ~4 characters a token, and per shown class its name and quotes
# (the longest names of the paper's sets, Stanford Cars' "2012 Chevrolet Corvette Ron Fellows
# Edition Z06", are ~14 Qwen tokens).
TEMPLATE_TOKENS = 32
NAME_TOKENS = 16
PROMPT_BUCKETS = VLMBase.__dataclass_fields__["prompt_lengths"].default


@dataclasses.dataclass(frozen=True)
class Setting:
    """What the planner builds: the ranker and memory encoder and the programs' shapes."""

    ranker: VLMConfig
    encoder: DualEncoderConfig  # its image tower and projection are the memory encoder
    lora: LoRAConfig
    dtype: jnp.dtype  # the ranker's parameters and compute
    prompt_length: int  # the left-padding bucket of image tokens + text tokens
    new_tokens: int  # the fine-tuning's answers and the generated ones
    opening_length: int  # the score path's tokens per shown name
    k: int  # classes shown to the ranker
    grid: tuple[int, int, int]
    memory_rows: int
    index_dtype: str
    search_queries: int  # queries per ``Index.search`` chunk
    finetune_batch: int  # examples per fine-tuning step, all devices
    eval_batch: int  # queries per evaluation batch, all devices

    @property
    def patches(self) -> int:
        return math.prod(self.grid)


def text_tokens(k: int, styles: tuple[str, ...]) -> int:
    """Text tokens of a ranking prompt showing ``k`` names, in the wordier of ``styles``."""
    wording = max(len(PROMPTS[style].format(k=k, names="")) for style in styles)
    return TEMPLATE_TOKENS + math.ceil(wording / 4) + k * NAME_TOKENS


def read_setting(
    cfg: ml_collections.ConfigDict, depth: int | None = None, dtype: str | None = None
) -> Setting:
    """The setting of a RAR config with a released ranker (``ranker.checkpoint``); ``depth``
    builds every tower that many layers deep (real widths), ``dtype`` overrides the ranker's
    compute dtype (the memory encoder keeps ``memory.dtype``)."""
    dtype = jnp.dtype(dtype or cfg.ranker.dtype)
    ranker = with_stacking(vlm_preset(cfg.ranker.checkpoint), stacking_of(cfg.ranker))
    encoder = dual_encoder_preset(cfg.memory.encoder, cfg.memory.dtype, cfg.memory.dtype)
    if depth is not None:
        ranker, encoder = at_depth(ranker, depth), at_depth(encoder, depth)
    grid = square_grid(cfg.ranker.image_size, ranker.vision)
    k = max(k_for(cfg, shots) for shots in cfg.eval.shots)
    styles = (cfg.ranker.get("train_prompt", "generic"), cfg.ranker.get("eval_prompt", "generic"))
    needed = math.prod(grid) // ranker.vision.spatial_merge_size**2 + text_tokens(k, styles)
    lora = cfg.lora.to_dict()
    if not isinstance(lora["targets"], str):
        lora["targets"] = tuple(lora["targets"])
    return Setting(
        ranker=ranker,
        encoder=encoder,
        lora=LoRAConfig(**lora),
        dtype=dtype,
        prompt_length=next((b for b in PROMPT_BUCKETS if b >= needed), needed),
        new_tokens=cfg.ranker.max_new_tokens,
        opening_length=cfg.ranker.opening_length,
        k=k,
        grid=grid,
        memory_rows=MEMORY_ROWS,
        index_dtype="float32",  # ClassMemory's Index keeps its default
        search_queries=QUERY_BUCKETS[-1],
        finetune_batch=cfg.finetune.batch_size,
        eval_batch=cfg.eval.batch_size,
    )


# ---- the analytic model ----------------------------------------------------------------------
# Counted from XLA's live ranges of the compiled update (2 layers, float32): a rematerialised
# LoRA decoder layer's backward is ``memory.lora_decoder_backward_bytes`` (its 13 [tokens, MLP]
# buffers with dropout were counted here); the vision merger, which is not rematerialised, keeps
# 7 [merged tokens, 4 x width] buffers (its input, hidden activation, their dropped-out copies
# and dropout words) for the backward; a scanned vision layer's attention backward holds 3
# float32 (query, key, head) buffers and a boolean one.
MERGER_BUFFERS = 7
VISION_ATTENTION_BACKWARD = 3 * memory.FLOAT32 + 1
# XLA:CPU packs the update's buffers into a heap 1.23x its largest live set (measured: 1.23 at
# 8 examples a device and 1.24 at 32 with 2 layers, 1.23 at 8 with 28; the other programs'
# heaps are within 3% of their live sets). Counted for every backend: a conservative verdict.
HEAP_PACKING = 1.23


def _widest_forward_layer(s: Setting, b: int, prompt_tokens: int, slots: int) -> float:
    """The widest layer of a forward pass over ``b`` queries: a prefill layer over the prompts
    or a vision block over the device's images (``memory.live_layer_bytes``)."""
    e, lm = s.dtype.itemsize, s.ranker.lm
    scanned = lm.stacking.scan
    prefill = memory.live_layer_bytes(
        memory.decoder_layer(s.ranker.lm),
        prompt_tokens,
        prompt_tokens * slots * lm.heads,
        e,
        scanned,
    )
    vision_scanned = s.ranker.vision.stacking.scan
    vision = max(
        memory.live_layer_bytes(
            memory.vision_layer(s.ranker.vision), b * s.patches, t, e, vision_scanned
        )
        for t in memory.vision_triples(s.ranker.vision, s.patches, b)
    )
    return max(prefill, vision)


def update_temporaries(s: Setting, b: int, model: int = 1) -> dict[str, float]:
    """The fine-tuning step's temporaries for ``b`` examples per device, weights split over
    ``model``. One sequence per example (the prompt and its answer, ``completion_log_probs``
    with one completion per prompt), so ``tokens = b (P + N)`` and every token meets all
    ``P + N`` slots. Kept through the step: each rematerialised layer's input (decoder and
    vision), the merger's activations and, in scanned towers with LoRA dropout, the dropout's
    threefry words XLA hoists out of the layer loop (two 32-bit words per element of the widest
    inputs, the same in every layer). On top, the largest phase: the decoder layer's backward
    (``memory.lora_decoder_backward_bytes``), a vision layer's attention backward, or the
    logits (two float32
    ``[b N, V]`` buffers: the log-softmax and its gradient). Plus XLA:CPU's heap packing
    (``HEAP_PACKING``)."""
    e, lm, v = s.dtype.itemsize, s.ranker.lm, s.ranker.vision
    slots = s.prompt_length + s.new_tokens
    tokens = b * slots
    image_tokens = b * s.patches
    kept = {
        "decoder_layer_inputs": lm.depth * tokens * lm.width * e,
        "vision_layer_inputs": v.depth * image_tokens * v.width * e,
        "merger": MERGER_BUFFERS * image_tokens * v.width * e,
    }
    if s.lora.dropout > 0:
        if lm.stacking.scan:
            kept["decoder_dropout_bits"] = 2 * 4 * tokens * (lm.mlp_dim + lm.width)
        if v.stacking.scan:
            kept["vision_dropout_bits"] = 2 * 4 * image_tokens * (v.mlp_dim + v.width)
    phases = {
        "decoder_layer_backward": memory.lora_decoder_backward_bytes(
            lm, tokens, slots, e, s.lora.dropout > 0, model
        ),
        "vision_layer_backward": max(memory.vision_triples(s.ranker.vision, s.patches, b))
        * VISION_ATTENTION_BACKWARD
        / model,
        "logits": memory.logits_bytes(b * s.new_tokens, lm.vocab_size, copies=2),
    }
    widest = max(phases, key=phases.get)
    live = {**{k: value / model for k, value in kept.items()}, widest: phases[widest]}
    return {**live, "heap_packing": (HEAP_PACKING - 1) * sum(live.values())}


def generate_temporaries(s: Setting, b: int, model: int = 1) -> dict[str, float]:
    """Greedy generation's temporaries: the KV cache of prompt and answer slots, the widest
    forward layer, the prompt's embeddings waiting for the image tokens, and one decode step's
    float32 logits."""
    e, lm = s.dtype.itemsize, s.ranker.lm
    slots = s.prompt_length + s.new_tokens
    kv = memory.kv_cache_bytes(lm.depth, b, slots, lm.kv_heads, lm.dim_per_head, e)
    return {
        "kv_cache": kv / model,
        "widest_layer": _widest_forward_layer(s, b, b * s.prompt_length, slots) / model,
        "prompt_embeddings": b * s.prompt_length * lm.width * e,
        "decode_logits": memory.logits_bytes(b, lm.vocab_size),
    }


def score_temporaries(s: Setting, b: int, model: int = 1) -> dict[str, float]:
    """The score path's temporaries: the prompt's KV cache (with the openings' slots), the
    largest of the widest forward layer and the openings' float32 logits (one ``[b k L, V]``
    buffer: XLA fuses the log-softmax into the gather), and the prompt's embeddings."""
    e, lm = s.dtype.itemsize, s.ranker.lm
    slots = s.prompt_length + s.opening_length
    kv = memory.kv_cache_bytes(lm.depth, b, slots, lm.kv_heads, lm.dim_per_head, e)
    layer = _widest_forward_layer(s, b, b * s.prompt_length, slots) / model
    logits = memory.logits_bytes(b * s.k * s.opening_length, lm.vocab_size)
    phase = ("widest_layer", layer) if layer >= logits else ("logits", logits)
    return {
        "kv_cache": kv / model,
        phase[0]: phase[1],
        "prompt_embeddings": b * s.prompt_length * lm.width * e,
    }


def embed_temporaries(s: Setting, images: int, model: int = 1) -> dict[str, float]:
    """The memory encoder's temporaries over ``images`` images (unrolled layers): its widest
    layer, and what XLA:CPU materialises once for the whole program: two ``[tokens, MLP]``
    broadcasts of the quick-GELU's constants and one ``[images, heads, T, T]`` of the
    attention's (a TPU fuses them; counted for every backend, which overstates one)."""
    v, e = s.encoder.vision, jnp.dtype(s.encoder.dtype).itemsize
    tokens_per_image = (v.image_size // v.patch_size) ** 2 + int(v.class_token)
    tokens = images * tokens_per_image
    triples = tokens * tokens_per_image * v.heads
    layer = Layer(v.width, v.width, v.mlp_dim, v.heads, gated=False)
    return {
        "widest_layer": memory.live_layer_bytes(layer, tokens, triples, e) / model,
        "cpu_broadcasts": (2 * tokens * v.mlp_dim + triples) * e,
    }


def estimate(
    s: Setting, program: str, b: int, arguments: dict[str, float], model: int = 1
) -> Estimate:
    """The analytic ``Estimate`` of ``program`` ("update", "embed", "generate" or "score";
    the search's is ``search.planned``'s) at ``b`` rows per device (for "embed", the images
    of the whole batch, which runs on one device), with its ``arguments`` bytes per device."""
    temporaries = {
        "update": update_temporaries,
        "embed": embed_temporaries,
        "generate": generate_temporaries,
        "score": score_temporaries,
    }[program](s, b, model)
    return Estimate(arguments, temporaries)
