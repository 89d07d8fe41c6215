"""The analytic memory model: bytes per device that a program holds, from shapes alone, so that
a user can reason about a setting the planner has not compiled (docs/SCALING.md states it and
its agreement with XLA's figures).

XLA's peak for one program is its arguments, plus the outputs that do not reuse a donated
argument, plus its temporaries. Arguments are counted exactly (``tree_bytes``); temporaries are
estimated term by term:

- **Saved activations** (a training step): per layer and token, what the backward reads back.
  For a transformer layer with LoRA (dropout on) on every linear: the two norms' inputs (2 W),
  each adapted linear's dropped-out input (q, k, v and the MLP's first matrices: 3 W + 2 W
  gated, 1 W plain; o: the attention width A; the last MLP matrix: F), the queries (A) and the
  MLP's hidden activations (gate and up, or the pre-activation: 2 F gated, 1 F plain), so
  ``7 W + 2 A + 3 F`` elements gated and ``6 W + 2 A + 2 F`` plain; plus each (query, key, head)
  triple's softmax in float32, and its compute-dtype copy when that is narrower.
- **One live layer** (a forward-only program): the larger of its attention phase (the
  residual, q, k, v and the output: ``W + 4 A``, plus the (query, key, head) triples' float32
  softmax and its compute-dtype copy when narrower) and its MLP phase (the residual, its norm
  and the hidden activations: ``2 W + 2 F`` gated, ``2 W + F`` plain).
- **Rematerialised layers** (``models.layer_stack``'s ``remat``): a backward pass keeps each
  layer's input only (the residual stream, ``W`` elements a token) and recomputes one layer at
  a time. What one layer holds while it runs (``running_layer_bytes``: its saved activations,
  or its attention with two float32 (query, key, head) buffers, the scores and their masked
  copy) is live only during that layer, not beside the logits or another tower's layer: a
  program's phases that follow one another count by their maximum, not their sum.
  A decoder layer with LoRA holds more while its backward runs than it saved
  (``lora_decoder_backward_bytes``, measured from XLA's live ranges).
- **KV caches**, **logits** (float32) and the optimizer's two AdamW moments (in the
  parameters' dtype, as optax keeps them) as their shapes say.

What is left out: element-wise temporaries XLA fuses away, the scheduler's overlap of
consecutive layers, and the backend's own copies (XLA:CPU converts bfloat16 matmul operands to
float32, which a TPU or GPU does not).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

FLOAT32 = 4


@dataclasses.dataclass(frozen=True)
class Layer:
    """The shape of one transformer layer as the memory model needs it: widths of the residual
    stream ``width``, of all heads' queries ``attention`` and of the MLP ``mlp``; ``gated`` for
    a three-matrix MLP; ``heads`` attention heads."""

    width: int
    attention: int
    mlp: int
    heads: int
    gated: bool

    def saved_elements(self) -> int:
        """Elements per token a backward reads back (module docstring)."""
        if self.gated:
            return 7 * self.width + 2 * self.attention + 3 * self.mlp
        return 6 * self.width + 2 * self.attention + 2 * self.mlp

    def attention_phase_elements(self) -> int:
        """Elements per token live while a forward layer attends (module docstring)."""
        return self.width + 4 * self.attention

    def mlp_phase_elements(self) -> int:
        """Elements per token live while a forward layer runs its MLP (module docstring)."""
        return 2 * self.width + (2 if self.gated else 1) * self.mlp


def decoder_layer(lm: Any) -> Layer:
    """A Qwen2 decoder layer's shape (``models.qwen2.Qwen2Config``: gated MLP)."""
    return Layer(lm.width, lm.heads * lm.dim_per_head, lm.mlp_dim, lm.heads, gated=True)


def vision_layer(vision: Any) -> Layer:
    """A Qwen2-VL / Qwen2.5-VL vision block's shape (the latter's MLP is gated)."""
    gated = vision.variant == "qwen2_5_vl"
    return Layer(vision.width, vision.width, vision.mlp_dim, vision.heads, gated=gated)


def vision_triples(vision: Any, patches: int, images: int) -> list[float]:
    """(query, key, head) triples of each vision block over ``images`` images of ``patches``
    patches: a whole image in full-attention blocks, one window's patches in the others
    (Qwen2.5-VL's windowed blocks)."""
    n = patches
    if vision.window_size is None:
        window, full = n, set(range(vision.depth))
    else:
        window = (vision.window_units * vision.spatial_merge_size) ** 2
        full = set(vision.fullatt_block_indexes)
    return [
        images * n * (n if i in full else min(window, n)) * vision.heads
        for i in range(vision.depth)
    ]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A program's bytes per device, by named term: ``arguments`` (exact), ``temporaries``
    (estimated) and ``outputs`` that no donated argument absorbs."""

    arguments: dict[str, float]
    temporaries: dict[str, float]
    outputs: float = 0.0

    @property
    def peak(self) -> float:
        return sum(self.arguments.values()) + sum(self.temporaries.values()) + self.outputs

    def as_dict(self) -> dict[str, Any]:
        return {
            "arguments": dict(self.arguments),
            "temporaries": dict(self.temporaries),
            "outputs": self.outputs,
            "peak": self.peak,
        }


def shard_shape(leaf: Any) -> tuple[int, ...]:
    """The shape of ``leaf``'s largest shard on one device: each dimension split over the mesh
    axes its ``NamedSharding`` names, rounded up (XLA pads an uneven split); whole when the
    leaf has no named sharding."""
    sharding = getattr(leaf, "sharding", None)
    spec = getattr(sharding, "spec", ())
    shape = list(leaf.shape)
    for dim, axes in enumerate(spec):
        for axis in (axes,) if isinstance(axes, str) else axes or ():
            shape[dim] = -(-shape[dim] // sharding.mesh.shape[axis])
    return tuple(shape)


def tree_bytes(tree: Any) -> int:
    """Bytes per device of a tree of arrays or ``jax.ShapeDtypeStruct``s (``shard_shape``)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        total += math.prod(shard_shape(leaf)) * leaf.dtype.itemsize  # PRNG keys have one too
    return total


def attention_bytes(triples: float, itemsize: int) -> float:
    """(query, key, head) triples' softmax in float32, and its compute-dtype copy when that is
    narrower (the weights the second product reads)."""
    return triples * (FLOAT32 + (itemsize if itemsize < FLOAT32 else 0))


def saved_activation_bytes(layer: Layer, tokens: float, triples: float, itemsize: int) -> float:
    """One layer's activations kept for the backward over ``tokens`` tokens whose queries
    meet ``triples`` (query, key, head) triples."""
    return tokens * layer.saved_elements() * itemsize + attention_bytes(triples, itemsize)


def live_layer_bytes(
    layer: Layer, tokens: float, triples: float, itemsize: int, scanned: bool = False
) -> float:
    """One forward layer's temporaries live at once: its attention or its MLP phase, whichever
    is larger (a forward-only program's widest layer). A layer of a scanned stack holds a
    second float32 (query, key, head) buffer while it attends (the scores and their masked
    copy, as XLA's live ranges show)."""
    attending = tokens * layer.attention_phase_elements() * itemsize
    attending += attention_bytes(triples, itemsize) + (triples * FLOAT32 if scanned else 0)
    return max(attending, tokens * layer.mlp_phase_elements() * itemsize)


def running_layer_bytes(layer: Layer, tokens: float, triples: float, itemsize: int) -> float:
    """What one layer holds while it runs in a rematerialised (scanned) stack, its forward or
    its recomputation in the backward: its saved activations, or its scanned
    ``live_layer_bytes``, whichever is larger."""
    saved = saved_activation_bytes(layer, tokens, triples, itemsize)
    return max(saved, live_layer_bytes(layer, tokens, triples, itemsize, scanned=True))


# What a rematerialised LoRA decoder layer holds while its backward runs, counted from
# ``XLA_FLAGS=--xla_dump_to``'s live-range dumps (XLA:CPU, float32, two scanned layers, adapters
# on every linear): [tokens, MLP] buffers (the recomputed gate, up, their adapters' products,
# the SiLU's parts and the product; their gradients; the adapters' transposed inputs), one more
# with LoRA dropout (the product's dropped-out copy the down matrix's adapter reads): ELVA's RL
# step (no dropout) held 12, RAR's fine-tuning (dropout 0.05) 13. [tokens, width] buffers: ELVA
# held 9, RAR 7; dropout does not explain the difference, so the larger is counted. The frozen
# weights: ELVA found the whole layer's sliced out of the stack, RAR the gate and up transposed;
# the whole layer is counted. Region-R1's update with it: 1.02 of XLA's peak at two layers,
# 0.93 at the real depth (float32, 8 devices; 0.76 and 0.84 with ``running_layer_bytes``).
LORA_BACKWARD_MLP = 12
LORA_BACKWARD_WIDTH = 9


def lora_decoder_backward_bytes(
    lm: Any, tokens: float, slots: int, itemsize: int, dropout: bool, model: int = 1
) -> float:
    """One rematerialised Qwen2 decoder layer (``models.qwen2.Qwen2Config`` ``lm``) with LoRA on
    every linear running its backward over ``tokens`` tokens that attend to ``slots`` slots:
    ``LORA_BACKWARD_MLP`` (+1 with ``dropout``) ``[tokens, MLP]`` and ``LORA_BACKWARD_WIDTH``
    ``[tokens, width]`` buffers, the float32 scores and their gradient (plus the compute-dtype
    weights when narrower, ``attention_bytes``), and the layer's frozen weights sliced out of
    the stack (q, k, v, o and the MLP's three). ``model`` splits the MLP's buffers, the heads'
    scores and the weights; the ``[tokens, width]`` ones are the residual stream's, whole on
    every device of the axis (ELVA's real depth on 2 x 4 devices: 0.93 of XLA's peak; 0.71
    dividing them too)."""
    mlp = (LORA_BACKWARD_MLP + int(dropout)) * lm.mlp_dim
    elements = mlp / model + LORA_BACKWARD_WIDTH * lm.width
    triples = tokens * slots * lm.heads
    scores = attention_bytes(triples, itemsize) + triples * FLOAT32
    attention = 2 * lm.width * lm.dim_per_head * (lm.heads + lm.kv_heads)
    weights = (attention + 3 * lm.width * lm.mlp_dim) * itemsize
    return tokens * elements * itemsize + (scores + weights) / model


def kv_cache_bytes(
    depth: int, rows: int, slots: int, kv_heads: int, head_dim: int, itemsize: int
) -> float:
    """Keys and values of ``depth`` layers for ``rows`` rows of ``slots`` slots."""
    return 2 * depth * rows * kv_heads * head_dim * slots * itemsize


def logits_bytes(tokens: float, vocab: int, copies: int = 1) -> float:
    """``copies`` float32 [tokens, vocab] buffers."""
    return copies * tokens * vocab * FLOAT32
