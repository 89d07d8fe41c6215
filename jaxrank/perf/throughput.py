"""Throughput in the units TPU users read: FLOPs counted from the model's shape, TFLOP/s per
device and MFU (model FLOPs utilisation) against the chip's peak.

**Counting.** A matmul of ``[m, k] @ [k, n]`` is ``2 m k n`` FLOPs; everything else
(softmax, norms, activations, residual adds) is left out, as MFU conventionally does. One
transformer layer over ``T`` tokens of width ``d`` with MLP width ``f``:

- projections: ``2 T d (d + 2 d_kv)`` (q, k, v) + ``2 T d d`` (output);
- attention: ``2 T^2 d`` (scores) + ``2 T^2 d`` (weights x values), with ``T`` keys per query;
- MLP: ``2 T d f`` per matrix, 2 matrices (3 when gated, as SwiGLU).

A ViT adds its patch embedding, ``2 P (p^2 c) d`` over ``P`` patches. A training step is
forward + backward = 3x the forward (the backward computes gradients of both the inputs and
the weights).

**Peaks.** Dense bf16 matmul peaks per chip from the vendors' spec sheets (table below), and
for any machine the measured rate of one large matmul (``measured_peak_tflops``): on CPUs,
where no table applies, MFU is against that.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

# device_kind prefix -> dense bf16 TFLOP/s per chip. Sources: Google Cloud TPU system
# architecture pages (v4 275, v5e 197, v5p 459, v6e Trillium 918); NVIDIA datasheets, SXM
# parts (H100 and H200 989, A100 312, dense bf16). "TPU v5 lite" is v5e's device_kind,
# "TPU v6 lite" v6e's.
PEAK_BF16_TFLOPS = (
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5", 459.0),  # v5p (after "TPU v5 lite", so v5e never matches it)
    ("TPU v6 lite", 918.0),
    ("NVIDIA H100", 989.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA A100", 312.0),
)


# device_kind prefix -> high-bandwidth memory per chip, GiB. Same sources: v4 32, v5e 16, v5p
# 95, v6e 32; H100 SXM 80, H200 141, A100 80 (its 40 GB part reports the same device_kind).
MEMORY_GIB = (
    ("TPU v4", 32.0),
    ("TPU v5 lite", 16.0),
    ("TPU v5", 95.0),
    ("TPU v6 lite", 32.0),
    ("NVIDIA H100", 80.0),
    ("NVIDIA H200", 141.0),
    ("NVIDIA A100", 80.0),
)


# device_kind prefix -> HBM bandwidth per chip, GB/s. Same sources: v4 1200, v5e 819, v5p
# 2765, v6e 1640; H100 SXM 3350, H200 4800, A100 80 GB 2039.
HBM_GBPS = (
    ("TPU v4", 1200.0),
    ("TPU v5 lite", 819.0),
    ("TPU v5", 2765.0),
    ("TPU v6 lite", 1640.0),
    ("NVIDIA H100", 3350.0),
    ("NVIDIA H200", 4800.0),
    ("NVIDIA A100", 2039.0),
)


def _lookup(table: tuple[tuple[str, float], ...], device_kind: str) -> float | None:
    for prefix, value in table:
        if device_kind.startswith(prefix):
            return value
    return None


def peak_tflops(device_kind: str) -> float | None:
    """The table's peak for ``device_kind`` (as ``jax.devices()[0].device_kind`` names it)."""
    return _lookup(PEAK_BF16_TFLOPS, device_kind)


def memory_gib(device_kind: str) -> float | None:
    """The chip's memory in GiB for ``device_kind``, from ``MEMORY_GIB``."""
    return _lookup(MEMORY_GIB, device_kind)


def hbm_gbps(device_kind: str) -> float | None:
    """The chip's memory bandwidth in GB/s for ``device_kind``, from ``HBM_GBPS``."""
    return _lookup(HBM_GBPS, device_kind)


def measured_peak_tflops(size: int = 2048, dtype: DTypeLike = jnp.float32, repeats: int = 5):
    """TFLOP/s of one ``size x size`` matmul on the default device, best of ``repeats``
    after compilation: the machine's practical peak, measured once."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(matmul(a, a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, a))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


@functools.cache
def machine_peak_tflops() -> float:
    """``measured_peak_tflops`` once per process, in the dtype training runs in there: float32
    on CPUs (sized for a quick measurement), bfloat16 on accelerators."""
    if jax.default_backend() == "cpu":
        return measured_peak_tflops(1024, jnp.float32)
    return measured_peak_tflops(8192, jnp.bfloat16)


def transformer_layer_flops(
    tokens: int,
    width: int,
    mlp_dim: int,
    *,
    kv_width: int | None = None,
    gated: bool = False,
    context: float | None = None,
) -> float:
    """Forward matmul FLOPs of one self-attention layer over ``tokens`` tokens (one example),
    each attending to ``context`` keys (all ``tokens`` by default; the mean cache length for
    tokens decoded or teacher-forced after a prompt)."""
    kv = width if kv_width is None else kv_width
    keys = tokens if context is None else context
    projections = 2 * tokens * width * (width + 2 * kv) + 2 * tokens * width * width
    attention = 2 * 2 * tokens * keys * width
    mlp = (3 if gated else 2) * 2 * tokens * width * mlp_dim
    return projections + attention + mlp


def vit_forward_flops(
    image_size: int,
    patch_size: int,
    width: int,
    depth: int,
    mlp_dim: int,
    *,
    channels: int = 3,
    class_token: bool = True,
    embed_dim: int = 0,
) -> int:
    """Forward matmul FLOPs of a ViT on one image (patch embedding, ``depth`` layers, and a
    projection of the pooled token to ``embed_dim`` when given)."""
    patches = (image_size // patch_size) ** 2
    tokens = patches + int(class_token)
    embedding = 2 * patches * patch_size**2 * channels * width
    layers = depth * transformer_layer_flops(tokens, width, mlp_dim)
    return embedding + layers + 2 * width * embed_dim


def train_step_flops(forward_flops: int) -> int:
    """Forward + backward: 3x the forward."""
    return 3 * forward_flops


def utilisation(flops_per_step: float, step_seconds: float, devices: int, peak: float | None):
    """``(TFLOP/s per device, MFU or None)`` of a step of ``flops_per_step`` over ``devices``."""
    per_device = flops_per_step / step_seconds / devices / 1e12
    return per_device, (per_device / peak if peak else None)
