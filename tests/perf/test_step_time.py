"""The planner's time model (``perf.step_time``) on a hand-worked program: a decode-like loop
of ``T`` matmuls of a ``[B, D]`` batch with a ``[D, D]`` weight, on 8 devices; its FLOPs and
seconds worked out by hand from the chips' published peaks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrank.perf import step_time
from jaxrank.perf.memory import Estimate, tree_bytes

B, D, T = 64, 256, 5


class LoopSetting:
    """One program, ``decode``: ``T`` trips of ``x @ w`` (a while loop: its trip count is not
    static, as a sampler's is not)."""

    decoders = ("decode",)

    def __init__(self):
        self.mesh = Mesh(np.array(jax.devices()[:8]).reshape(8, 1), ("data", "model"))
        self.w = jax.ShapeDtypeStruct(
            (D, D), jnp.bfloat16, sharding=NamedSharding(self.mesh, PartitionSpec())
        )

    def while_trips(self, name):
        return T

    def program(self, name, b):
        def decode(w, x, trips):
            return lax.fori_loop(0, trips, lambda _, x: x @ w, x)

        x = jax.ShapeDtypeStruct(
            (8 * b, D), jnp.bfloat16, sharding=NamedSharding(self.mesh, PartitionSpec("data"))
        )
        return jax.jit(decode), (self.w, x, jax.ShapeDtypeStruct((), jnp.int32))

    def estimate(self, name, b, model):
        return Estimate({"weights": tree_bytes(self.w), "batch": 8 * b * D * 2}, {})


def test_flops_and_seconds_by_hand():
    setting = LoopSetting()
    flops = step_time.program_flops(setting, "decode", B // 8)
    assert flops == T * 2 * B * D * D / 8  # the loop's trips, split over 8 devices
    seconds = step_time.program_seconds(setting, "decode", B // 8, flops, "v5e")
    assert seconds["compute_s"] == pytest.approx(flops / (197e12 * 0.4))  # v5e: 197 TFLOP/s
    # every trip reads the D x D bfloat16 weight from HBM (v5e: 819 GB/s)
    assert seconds["weights_stream_s"] == pytest.approx(T * D * D * 2 / (819e9 * 0.8))
    assert seconds["seconds"] == seconds["compute_s"] + seconds["weights_stream_s"]


def test_a_program_that_does_not_decode_streams_nothing():
    setting = LoopSetting()
    setting.decoders = ()
    seconds = step_time.program_seconds(setting, "decode", 1, 1e12, "h100")
    assert seconds == {
        "compute_s": 1e12 / (989e12 * 0.4),
        "weights_stream_s": 0.0,
        "seconds": 1e12 / (989e12 * 0.4),
    }
