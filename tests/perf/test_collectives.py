"""Collectives read from compiled programs whose communication is known by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from jaxrank.perf.collectives import collective_payloads, wire_bytes

DEVICES = 4


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh(
        (DEVICES,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:DEVICES]
    )


def test_data_parallel_gradient_is_one_all_reduce(mesh):
    w = jax.device_put(jnp.ones((64, 32)), NamedSharding(mesh, PartitionSpec()))
    x = jax.device_put(jnp.ones((16, 64)), NamedSharding(mesh, PartitionSpec("data")))
    grad = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w))))
    payloads = collective_payloads(grad.lower(w, x).compile().as_text())
    assert payloads == {"all-reduce": 64 * 32 * 4}  # the weight gradient, float32


def test_gather_and_sum_by_hand(mesh):
    rows = PartitionSpec("data")
    both = jax.shard_map(
        lambda a: (
            jax.lax.all_gather(a, "data", tiled=True),
            jax.lax.psum(a.astype(jnp.float32), "data"),
        ),
        mesh=mesh,
        in_specs=rows,
        out_specs=(PartitionSpec(), PartitionSpec()),
        check_vma=False,
    )
    payloads = collective_payloads(
        jax.jit(both).lower(jnp.ones((8, 3), jnp.int32)).compile().as_text()
    )
    # The gather's result is the whole [8, 3] int32; the sum's is one device's [2, 3] float32.
    assert payloads == {"all-gather": 8 * 3 * 4, "all-reduce": 2 * 3 * 4}


def test_async_and_narrow_types_from_tpu_style_text():
    text = """
  %ag = (bf16[4,8]{1,0}, bf16[16,8]{1,0}) all-gather-start(bf16[4,8]{1,0} %p), dimensions={0}
  %agd = bf16[16,8]{1,0} all-gather-done((bf16[4,8]{1,0}, bf16[16,8]{1,0}) %ag)
  %ar = (f32[10]{0}, s8[3]{0}, f32[], f32[], f32[], /*index=5*/f32[2]{0}) all-reduce(%x, %y,\
 %a, %b, %c, %d), to_apply=%add
  %cp = pred[5]{0} collective-permute(pred[5]{0} %z), source_target_pairs={{0,1}}
"""
    assert collective_payloads(text) == {
        "all-gather": 16 * 8 * 2,  # the -start tuple's result, not its operand
        "all-reduce": 10 * 4 + 3 + 3 * 4 + 2 * 4,  # a tuple all-reduce sums its parts
        "collective-permute": 5,
    }


def test_ring_wire_bytes():
    assert wire_bytes("all-reduce", 1000, 4) == pytest.approx(1500)
    assert wire_bytes("all-gather", 1000, 4) == pytest.approx(750)
    assert wire_bytes("reduce-scatter", 250, 4) == pytest.approx(750)
    assert wire_bytes("all-reduce", 1000, 1) == 0
