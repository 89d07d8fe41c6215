"""Compiling for a TPU slice on a machine without one: libtpu (the package ``jax[tpu]`` pins)
describes a slice's topology, and ``jax.jit(...).lower(...).compile()`` on a mesh of its
devices runs XLA's TPU compiler ahead of time, as MaxText's ``train_compile`` does. Its memory
figures are the chip's own (bfloat16 stays bfloat16, the TPU's fusions and layouts), which
XLA:CPU's only approximate.

libtpu is optional: ``pip install 'jaxrank[tpu-compile]'``, or any ``libtpu.so`` named by
``TPU_LIBRARY_PATH`` (JAX's own variable). Where the ``libtpu`` package is importable, JAX tries
to start a TPU backend at import; on a machine without one run with ``JAX_PLATFORMS=cpu``. The
test environment keeps it outside ``sys.path`` (scripts/setup_env.sh) and points
``TPU_LIBRARY_PATH`` at it, so no other process tries.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh

from jaxrank import parallel

# Slice shapes by chip count: v5e and v6e are 2D tori, v4 and v5p 3D (Cloud TPU's names).
SHAPES_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"}
# The planner's chip names -> libtpu's topology prefix and shapes. v4 runs as one device
# per chip (megacore), as JAX presents a v4 VM.
TPU_CHIPS = {
    "v4": ("v4", SHAPES_3D, {"chip_config_name": "megacore"}),
    "v5e": ("v5e", SHAPES_2D, {}),
    "v5p": ("v5p", SHAPES_3D, {}),
    "v6e": ("v6e", SHAPES_2D, {}),
}


class TPUCompilerMissing(RuntimeError):
    """libtpu is not installed."""


def has_libtpu() -> bool:
    """Whether JAX can load libtpu (``TPU_LIBRARY_PATH``, else the ``libtpu`` package)."""
    path = os.environ.get("TPU_LIBRARY_PATH", "")
    return os.path.isfile(path) or importlib.util.find_spec("libtpu") is not None


def topology_name(chip: str, chips: int) -> str:
    """libtpu's name of a ``chips``-chip slice of ``chip`` ("v5e:2x4")."""
    if chip not in TPU_CHIPS:
        raise ValueError(f"no TPU topology for chip {chip!r}; expected one of {sorted(TPU_CHIPS)}")
    prefix, shapes, _ = TPU_CHIPS[chip]
    if chips not in shapes:
        raise ValueError(f"a {chip} slice of {chips} chips: expected one of {sorted(shapes)}")
    return f"{prefix}:{shapes[chips]}"


def tpu_mesh(chip: str, data: int, model: int) -> Mesh:
    """A ``data`` x ``model`` mesh over the devices of a ``data * model``-chip slice of
    ``chip``, for ahead-of-time compilation (the devices cannot run anything)."""
    if not has_libtpu():
        raise TPUCompilerMissing(
            "compiling for a TPU needs libtpu: pip install 'jaxrank[tpu-compile]', or "
            "TPU_LIBRARY_PATH=/path/to/libtpu.so"
        )
    _, _, options = TPU_CHIPS[chip]
    # libtpu locks /tmp/libtpu_lockfile against a second process driving the chips; these
    # processes drive none, so several may compile at once (pytest's workers, a plan beside)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    topology = topologies.get_topology_desc(
        topology_name=topology_name(chip, data * model), platform="tpu", **options
    )
    devices = np.array(topology.devices).reshape(data, model)
    return Mesh(devices, (parallel.DATA, parallel.MODEL))
