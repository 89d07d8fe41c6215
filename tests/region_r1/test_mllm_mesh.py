"""The compiled MLLM step (``mllm_step.make_step``) on a 4x2 mesh equals the single-device step
for the same keys and batch: the same balanced rollouts, crops, rewards, loss and metrics, and
the same adapters after the update. The random tiny policy writes no tool call, so the step
reads its completions with a stand-in reader that turns tokens into decisions and boxes: the
groups hold both decisions, REGION crops of many sizes go through the scorer's buffer, and the
rewards and advantages are real."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from fast_xla import fast_compile
from mllm_tiny import POOL, QUESTIONS, ColourScorer, judged_batch, step_config, update_inputs

from jaxrank import parallel
from jaxrank.region_r1 import tool_reader
from jaxrank.region_r1.mllm_recipe import place_step_batch
from jaxrank.region_r1.mllm_step import make_step
from jaxrank.train.step import TrainState, jit_train_step


class TokenReader:
    """A completion's decision from its second token's parity; its box, in the 48-pixel model
    frame, from the next four tokens (a corner in [0, 24) and sides in [4, 28))."""

    def read(self, tokens: jax.Array, mask: jax.Array) -> tool_reader.Reading:
        del mask
        decision = (tokens[:, 1] % 2).astype(jnp.int32)
        draws = (tokens[:, 2:6] % 24).astype(jnp.float32)
        box = jnp.concatenate([draws[:, :2], draws[:, :2] + 4 + draws[:, 2:]], axis=1)
        return tool_reader.Reading(decision, box, jnp.zeros_like(decision))


@fast_compile()  # its time is almost all compilation; both meshes compile alike
def _step(base, mesh):
    """One compiled step on ``mesh``: (adapters before, after, metrics), on the host. The
    weights are laid out as their annotations say (split over ``model``)."""
    cfg = step_config(crop_capacity=3)  # several trips of the crop buffer
    graphdef, adapters, rest, _ = update_inputs(base, cfg)
    place = lambda tree: jax.device_put(tree, parallel.state_shardings(tree, mesh))
    adapters, rest = place(adapters), place(rest)
    optimizer = optax.sgd(1.0)  # compares gradients, not Adam's near-sign of them
    before = jax.device_get(adapters)
    # jitted, as the recipe's Stage makes it, so the state's scalars sit on the mesh too
    state = jax.jit(lambda p: TrainState.create(p, optimizer, 0))(adapters)
    frozen = {"kb": parallel.put_replicated(jnp.asarray(POOL), mesh), "scorer": None, "base": rest}
    batch = place_step_batch(base, QUESTIONS, mesh, judged_batch())
    step = make_step(cfg, base, graphdef, ColourScorer(), reader=TokenReader())(optimizer)
    with jax.set_mesh(mesh):
        state, metrics = jit_train_step(step, state)(state, batch, frozen)
    return before, *jax.device_get((state.params, metrics))


def test_sharded_compiled_step_equals_single_device(base):
    initial, single, single_metrics = _step(base, parallel.make_mesh(1, 1, jax.devices()[:1]))
    mesh = parallel.make_mesh(4, 2)
    _, sharded, metrics = _step(base, mesh)
    layout = parallel.state_shardings(update_inputs(base)[2], mesh)
    assert any("model" in str(s.spec) for s in jax.tree.leaves(layout))  # weights split
    # Real work: both decisions, crops over several trips of the buffer.
    assert 0 < single_metrics["region_rate"] < 1 and single_metrics["crop_trips"] > 1
    assert set(metrics) == set(single_metrics)
    for key, value in single_metrics.items():
        np.testing.assert_allclose(metrics[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    leaves = zip(jax.tree.leaves(single), jax.tree.leaves(initial), strict=True)
    assert min(np.abs(a - b).max() for a, b in leaves) > 1e-6  # every adapter moved
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
