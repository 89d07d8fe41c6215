"""Tensor-parallel annotations for transformer weights.

Kernels of the projections that fan out (q/k/v, MLP fc1) are split on their output features, and
the ones that fan back in (attention out, MLP fc2) on their input features, so each device of the
``model`` axis holds whole heads and a slice of the MLP, and one reduction per sub-layer suffices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
from flax import nnx

from jaxrank.parallel import MODEL

COLUMN_PARALLEL = (None, MODEL)
ROW_PARALLEL = (MODEL, None)


def partitioned(spec: tuple[str | None, ...]) -> dict[str, Any]:
    """Variable metadata that records ``spec`` for ``jaxrank.parallel.state_shardings``."""
    return {"out_sharding": spec}


@contextlib.contextmanager
def place_on_mesh_if_set() -> Iterator[None]:
    """Build annotated parameters already laid out on the mesh when one is set (``jax.set_mesh``).

    Without a mesh, flax would refuse to create an annotated parameter; here it is created on the
    default device instead, and keeps its annotation so that it can be placed later.
    """
    mesh_is_set = not jax.sharding.get_abstract_mesh().empty
    with nnx.use_eager_sharding(nnx.using_eager_sharding() and mesh_is_set):
        yield
