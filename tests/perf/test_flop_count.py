"""The jaxpr FLOP counter against hand-worked programs, the hand formula of a ViT, and XLA's
own count of a compiled gradient step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AxisType, PartitionSpec

from jaxrank.models.vit import VisionConfig, VisionTransformer
from jaxrank.perf import throughput
from jaxrank.perf.flop_count import matmul_flops

A, B = jnp.ones((8, 16)), jnp.ones((16, 4))
MATMUL = 2 * 8 * 16 * 4  # [8, 16] @ [16, 4]


def test_control_flow_by_hand():
    assert matmul_flops(lambda a, b: a @ b, A, B) == MATMUL
    # A batched matmul: 3 x [8, 16] @ [16, 4].
    assert matmul_flops(jnp.matmul, jnp.ones((3, 8, 16)), jnp.ones((3, 16, 4))) == 3 * MATMUL
    # A scan body counts once per iteration (fori_loop with static bounds is a scan).
    loop = lambda a, b: jax.lax.fori_loop(0, 5, lambda i, c: c + a @ b, jnp.zeros((8, 4)))
    assert matmul_flops(loop, A, B) == 5 * MATMUL

    # A while loop's body counts while_trips times.
    def until(a, b):
        body = lambda c: (c[0] + 1, c[1] + a @ b)
        return jax.lax.while_loop(lambda c: c[0] < 7, body, (0, jnp.zeros((8, 4))))

    assert matmul_flops(until, A, B) == MATMUL
    assert matmul_flops(until, A, B, while_trips=7) == 7 * MATMUL
    # A cond counts its dearer branch; a jitted callee counts as inlined.
    pick = lambda p, a, b: jax.lax.cond(p, lambda: (a @ b) @ b.T, lambda: a)
    assert matmul_flops(pick, True, A, B) == MATMUL + 2 * 8 * 4 * 16
    assert matmul_flops(jax.jit(lambda a, b: a @ b), A, B) == MATMUL


def test_shard_map_counts_every_device():
    mesh = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])
    rows = PartitionSpec("x")
    sharded = jax.shard_map(
        lambda a, b: a @ b, mesh=mesh, in_specs=(rows, PartitionSpec()), out_specs=rows
    )
    assert matmul_flops(sharded, A, B) == MATMUL  # 4 devices x a quarter of the rows


def test_convolution_is_its_matmul():
    image, kernel = jnp.ones((2, 12, 12, 3)), jnp.ones((4, 4, 3, 5))
    conv = lambda x, k: jax.lax.conv_general_dilated(
        x, k, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    # 2 images x 9 patches, each a [48] . [48, 5] product.
    assert matmul_flops(conv, image, kernel) == 2 * (2 * 9) * 48 * 5


def test_vit_matches_the_hand_formula_and_xla():
    config = VisionConfig(image_size=32, patch_size=8, width=64, depth=2, heads=4, mlp_dim=256)
    graphdef, params = nnx.split(VisionTransformer(config, rngs=nnx.Rngs(0)))
    pixels = jnp.zeros((2, 32, 32, 3), jnp.float32)
    forward = lambda p, x: nnx.merge(graphdef, p)(x)[0]
    assert matmul_flops(forward, params, pixels) == 2 * throughput.vit_forward_flops(
        32, 8, 64, 2, 256
    )
    grad = jax.grad(lambda p, x: forward(p, x).sum())
    analysis = jax.jit(grad).lower(params, pixels).compile().cost_analysis()
    xla = float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])
    # XLA adds the element-wise work (softmax, norms, GELU) that the matmul count leaves out.
    assert 0.8 * xla <= matmul_flops(grad, params, pixels) <= xla
