"""A transformer's identical layers, either as a Python list (unrolled under jit: depth copies
of the layer in the compiled program) or stacked under one module whose every parameter has a
leading ``[depth]`` axis and run by ``jax.lax.scan`` (one copy, compiled once, as MaxText
stacks its decoder layers). ``remat`` recomputes each layer's activations in the backward pass
instead of keeping them (``jax.checkpoint`` around one layer), so a training step keeps only
the residual stream between layers.

The stacked layers are built by ``nnx.vmap`` over split RNG keys (each layer its own
initialisation), their sharding annotations gain a leading ``None`` for the layer axis, and a
checkpoint's per-layer tensors are stacked on load (``models.hf.tensors.stacked_rules``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

Body = Callable[[nnx.Module, Any, Any], tuple[Any, Any]]


@dataclasses.dataclass(frozen=True)
class Stacking:
    """How a stack of layers is compiled: ``scan`` (stacked parameters, one traced layer) and
    ``remat`` (activations recomputed in the backward pass)."""

    scan: bool = False
    remat: bool = False


UNROLLED = Stacking()


def stacking_of(section: Any, prefix: str = "") -> Stacking:
    """The ``Stacking`` a config section names with its ``{prefix}scan_layers`` and
    ``{prefix}remat`` keys (both False when absent)."""
    get = lambda key: bool(section.get(f"{prefix}{key}", False))
    return Stacking(scan=get("scan_layers"), remat=get("remat"))


def is_static(x: Any) -> bool:
    """Whether a per-layer input is a Python value (unrolled layers) rather than a traced one."""
    return not isinstance(x, jax.Array)


def with_stacking(config: Any, stacking: Stacking) -> Any:
    """``config`` (a frozen dataclass) with ``stacking`` in it and in every config nested in it
    that has a ``stacking`` field (a VLM's decoder and vision tower, a dual encoder's towers)."""
    changes = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name == "stacking":
            changes[field.name] = stacking
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[field.name] = with_stacking(value, stacking)
    return dataclasses.replace(config, **changes)


def build(make: Callable[[nnx.Rngs], nnx.Module], depth: int, scan: bool, rngs: nnx.Rngs):
    """``depth`` layers from ``make(rngs)``: an ``nnx.List`` (unrolled) or, with ``scan``, one
    module whose parameters are stacked on a leading axis."""
    if not scan:
        return nnx.List([make(rngs) for _ in range(depth)])

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
    def stacked(rngs: nnx.Rngs) -> nnx.Module:
        return make(rngs)

    return stacked(rngs)


def depth_of(layers: nnx.Module) -> int:
    """The number of layers of a stack ``build`` made."""
    if isinstance(layers, nnx.List):
        return len(layers)
    return jax.tree.leaves(nnx.state(layers, nnx.Param))[0].shape[0]


def run(
    layers: nnx.Module,
    body: Body,
    carry: Any,
    xs: Any = None,
    *,
    remat: bool = False,
) -> tuple[Any, Any]:
    """``carry, y_i = body(layer_i, carry, x_i)`` over the layers in order; returns the last
    carry and the ``y_i``: unrolled, ``xs`` is None or a sequence of per-layer values and the
    ``y_i`` a list; scanned, ``xs`` and the ``y_i`` are trees with a leading layer axis. RNG
    streams inside the layers (LoRA's dropout) advance as they would unrolled; parameters are
    read, never written."""
    if isinstance(layers, nnx.List):
        call = nnx.remat(body) if remat else body
        ys = []
        for i, layer in enumerate(layers):
            carry, y = call(layer, carry, None if xs is None else xs[i])
            ys.append(y)
        return carry, ys

    graphdef, params, rest = nnx.split(layers, nnx.Param, ...)
    mutated = []  # set while tracing: the body advanced an RNG stream (dropout in train mode)

    def step(carry, inputs):
        layer_params, layer_rest, x = inputs
        layer = nnx.merge(graphdef, layer_params, layer_rest)
        carry, y = body(layer, carry, x)
        after = nnx.state(layer, nnx.Not(nnx.Param))
        before = jax.tree.leaves(layer_rest)
        mutated.append(any(a is not b for a, b in zip(jax.tree.leaves(after), before, strict=True)))
        return carry, (y, after)

    if remat:
        step = jax.checkpoint(step, prevent_cse=False)
    carry, (ys, rest_out) = jax.lax.scan(step, carry, (params, rest, xs))
    if any(mutated):  # else the layers may belong to an outer trace (a sampler's while_loop)
        nnx.update(layers, rest_out)
    return carry, ys
