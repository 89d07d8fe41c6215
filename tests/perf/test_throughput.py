"""FLOPs counted from the model's shape against XLA's own count of the compiled program, the
peak table's lookups, and utilisation by hand."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrank.models.vit import VisionConfig, VisionTransformer
from jaxrank.perf import profiling, throughput

# Wide enough that matmuls dominate, as in real models: XLA also counts element-wise work
# (softmax, norms, GELU), which the analytic count leaves out.
CONFIG = VisionConfig(image_size=64, patch_size=8, width=256, depth=2, heads=4, mlp_dim=1024)


def _xla_flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis["flops"])


def test_vit_flops_match_xlas_count():
    model = VisionTransformer(CONFIG, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    pixels = jnp.zeros((2, 64, 64, 3), jnp.float32)
    forward = lambda p, x: nnx.merge(graphdef, p)(x)[0]
    analytic = 2 * throughput.vit_forward_flops(64, 8, 256, 2, 1024)
    xla = _xla_flops(forward, params, pixels)
    assert 0.9 * xla <= analytic <= xla  # XLA's count adds the element-wise work

    loss = lambda p, x: forward(p, x).sum()
    xla_step = _xla_flops(jax.grad(loss), params, pixels)
    # The pixels need no gradient, so the backward skips one patch-embedding matmul.
    assert 0.85 * xla_step <= throughput.train_step_flops(analytic) <= 1.1 * xla_step


def test_layer_flops_by_hand():
    # T = 4 tokens, d = 2, f = 3: q,k,v 2*4*2*(2+4) = 96, output 2*4*2*2 = 32,
    # attention 4*4*4*2 = 128, MLP 2 matrices x 2*4*2*3 = 96.
    assert throughput.transformer_layer_flops(4, 2, 3) == 96 + 32 + 128 + 96
    # Grouped-query attention (k, v of width 1) and a gated MLP (3 matrices).
    assert throughput.transformer_layer_flops(4, 2, 3, kv_width=1, gated=True) == (
        2 * 4 * 2 * (2 + 2) + 32 + 128 + 144
    )
    # Decoding after a prompt: 4 new tokens attending to 10 keys each, 4*4*10*2 = 320.
    assert throughput.transformer_layer_flops(4, 2, 3, context=10) == 96 + 32 + 320 + 96


def test_peak_table_and_utilisation():
    assert throughput.peak_tflops("TPU v4") == 275.0
    assert throughput.peak_tflops("TPU v5 lite") == 197.0  # v5e
    assert throughput.peak_tflops("TPU v5p") == 459.0
    assert throughput.peak_tflops("TPU v6 lite") == 918.0  # v6e
    assert throughput.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert throughput.peak_tflops("NVIDIA H200") == 989.0
    assert throughput.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert throughput.peak_tflops("cpu") is None
    # 8e12 FLOPs in 0.5 s over 4 devices: 4 TFLOP/s each, 4/197 of a v5e.
    per_device, mfu = throughput.utilisation(8e12, 0.5, 4, 197.0)
    assert per_device == pytest.approx(4.0) and mfu == pytest.approx(4.0 / 197.0)
    assert throughput.utilisation(8e12, 0.5, 4, None)[1] is None


def test_measured_peak_bounds_a_smaller_matmul():
    peak = throughput.measured_peak_tflops(size=512, repeats=3)
    assert math.isfinite(peak) and peak > 0
    a = jnp.asarray(np.ones((256, 256), np.float32))
    seconds = profiling.milliseconds(jax.jit(lambda x: x @ x), a, repeats=3) / 1000
    assert 2 * 256**3 / seconds / 1e12 < 3 * peak  # a smaller matmul is not much faster
