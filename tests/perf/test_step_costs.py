"""The cost models of docs/SCALING.md against the programs they describe: the r-GRPO step's
matmul count over batch, group and pool, and the collectives of its data-parallel compile;
the sharded search's per-device FLOPs and gathers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fast_xla import fast_compile
from flax import nnx
from region_r1_batch import toy_batch
from region_r1_tiny import tiny_config

from jaxrank import parallel
from jaxrank.perf import step_costs
from jaxrank.perf.collectives import collective_payloads
from jaxrank.perf.flop_count import matmul_flops
from jaxrank.region_r1 import recipe as region_r1
from jaxrank.region_r1.scorer import untrained_scorer
from jaxrank.search import Index
from jaxrank.search.topk import sharded_search
from jaxrank.train.step import TrainState


def _step(group: int, devices: int):
    cfg = tiny_config(f"rl.num_generations={group}")
    mesh = parallel.make_mesh(devices, 1, jax.devices()[:devices])
    scorer, scorer_params = untrained_scorer(cfg, mesh)
    graphdef, params = nnx.split(region_r1.build_policy(cfg, mesh), nnx.Param)
    optimizer = optax.sgd(0.1)
    step = region_r1.make_step(cfg, graphdef, scorer, optimizer)
    batch, kb = toy_batch(cfg)
    frozen = {"kb": parallel.put_replicated(kb, mesh), "scorer": scorer_params, "ref": params}
    per_example = region_r1.per_example_flops(
        cfg,
        graphdef,
        params,
        scorer,
        scorer_params,
        jnp.asarray(batch["images"][:1]),
        jnp.asarray(batch["tokens"][:1]),
    )
    state = TrainState.create(params, optimizer, 0)
    return step, state, batch, frozen, per_example, mesh, cfg


@pytest.mark.parametrize(("group", "pool"), [(4, 20), (2, 10)])
def test_region_grpo_flops_formula(group, pool):
    step, state, batch, frozen, per_example, _, cfg = _step(group, 1)
    batch = {
        k: v[:, :pool] if k in ("pool_ids", "labels", "pool_valid") else v for k, v in batch.items()
    }
    counted = matmul_flops(step, state, batch, frozen)
    formula = step_costs.region_grpo_step_flops(
        per_example, len(batch["images"]), group, pool, cfg.rl.updates_per_batch
    )
    # f_upd differentiates all of the policy's outputs; the loss reads only the sampled bins.
    assert formula == pytest.approx(counted, rel=0.01)


@fast_compile()  # the partitioner's collectives do not depend on LLVM's optimisation
def test_region_grpo_collectives_are_one_gradient_all_reduce():
    step, state, batch, frozen, _, mesh, cfg = _step(4, 4)
    with jax.set_mesh(mesh):
        compiled = jax.jit(step).lower(state, parallel.shard_batch(batch, mesh), frozen).compile()
    payloads = collective_payloads(compiled.as_text())
    params = sum(x.size for x in jax.tree.leaves(state.params))
    expected = step_costs.gradient_all_reduce_bytes(params, 4, cfg.rl.updates_per_batch)
    # Besides the gradient, only the logged metrics' scalars are reduced.
    assert set(payloads) == {"all-reduce"}
    assert expected <= payloads["all-reduce"] <= expected + 4096


def test_search_costs():
    devices, queries, k, dim = 4, 64, 5, 64
    mesh = parallel.make_mesh(devices, 1, jax.devices()[:devices])
    rng = np.random.default_rng(0)
    index = Index.from_array(rng.standard_normal((1000, dim), dtype=np.float32), mesh=mesh)
    placed = jax.device_put(
        rng.standard_normal((queries, dim), dtype=np.float32), parallel.replicated(mesh)
    )

    def search(q, database):
        return sharded_search(q, *database, mesh=mesh, k=k, metric="ip", block=index._layout.block)

    stored = index.database.vectors.shape[0]
    compiled = jax.jit(search).lower(placed, index.database).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    per_device = step_costs.search_flops_per_device(queries, stored, devices, dim)
    assert per_device <= analysis["flops"] <= 1.2 * per_device  # XLA adds the selection work
    assert matmul_flops(search, placed, index.database) == devices * per_device
    gathered = collective_payloads(compiled.as_text())["all-gather"]
    assert gathered == step_costs.search_gather_bytes(queries, k, devices)

    # Several blocks per device: the block loop is a while loop (it stops at the valid rows),
    # so the count needs its trip count; XLA's cost analysis counts its body once.
    blocked = Index.from_array(
        rng.standard_normal((1000, dim), dtype=np.float32), mesh=mesh, block_rows=64
    )
    stored, block = blocked.database.vectors.shape[0], blocked._layout.block
    trips = -(-(stored // devices) // block)
    assert trips > 1

    def blocked_search(q, database):
        return sharded_search(q, *database, mesh=mesh, k=k, metric="ip", block=block)

    counted = matmul_flops(blocked_search, placed, blocked.database, while_trips=trips)
    assert counted == devices * step_costs.search_flops_per_device(queries, stored, devices, dim)
