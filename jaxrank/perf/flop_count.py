"""Matmul FLOPs of a whole program, counted from its jaxpr.

The count follows the MFU convention of ``jaxrank.perf.throughput`` (``2 m k n`` per matmul,
convolutions as the matmuls they are, element-wise work left out), but reads the shapes off the
traced program instead of a hand formula, so it covers every recipe's step as it really runs:
the backward pass, a rollout, a frozen scorer, GRPO's ``mu`` updates. Scans count their body
``length`` times, a ``shard_map`` body counts once per device of its manual axes, a ``cond``
its dearest branch. A ``while_loop`` has no static trip count: its body counts
``while_trips`` times (an upper bound for a decode loop that may stop early).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core


def _dot_general(eqn: Any) -> int:
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
    return 2 * math.prod(lhs) * math.prod(rhs_free)


def _conv(eqn: Any) -> int:
    rhs = eqn.invars[1].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // out_features


def _sub_jaxprs(params: dict[str, Any]) -> list[core.Jaxpr]:
    found = []
    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, core.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, core.Jaxpr):
                found.append(item)
    return found


def jaxpr_matmul_flops(jaxpr: core.Jaxpr | core.ClosedJaxpr, while_trips: int = 1) -> int:
    """Matmul FLOPs of one evaluation of ``jaxpr``."""
    jaxpr = jaxpr.jaxpr if isinstance(jaxpr, core.ClosedJaxpr) else jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        name, params = eqn.primitive.name, eqn.params
        if name == "dot_general":
            total += _dot_general(eqn)
        elif name == "conv_general_dilated":
            total += _conv(eqn)
        elif name == "while":
            total += while_trips * jaxpr_matmul_flops(params["body_jaxpr"], while_trips)
        elif name == "cond":
            total += max(jaxpr_matmul_flops(b, while_trips) for b in params["branches"])
        else:
            inner = sum(jaxpr_matmul_flops(j, while_trips) for j in _sub_jaxprs(params))
            if name == "scan":
                inner *= params["length"]
            elif name == "shard_map":
                inner *= math.prod(params["mesh"].shape[a] for a in params["newly_manual_axes"])
            total += inner
    return total


def matmul_flops(fn: Callable[..., Any], *args: Any, while_trips: int = 1) -> int:
    """Matmul FLOPs of ``fn(*args)`` over the whole (global) arrays; tracing only, nothing
    runs and donated arguments stay valid."""
    return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args), while_trips)
