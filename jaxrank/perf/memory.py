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


def kv_cache_bytes(
    depth: int, rows: int, slots: int, kv_heads: int, head_dim: int, itemsize: int
) -> float:
    """Keys and values of ``depth`` layers for ``rows`` rows of ``slots`` slots."""
    return 2 * depth * rows * kv_heads * head_dim * slots * itemsize


def logits_bytes(tokens: float, vocab: int, copies: int = 1) -> float:
    """``copies`` float32 [tokens, vocab] buffers."""
    return copies * tokens * vocab * FLOAT32
