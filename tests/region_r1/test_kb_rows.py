"""The sharded knowledge base (``kb_rows``): a pool gathered on the mesh equals numpy's
``kb[pool_ids]``, and the MLLM step's judge reading it equals the judge on the replicated table,
on one device and on a 4x2 mesh of virtual CPU devices."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from mllm_tiny import POOL, ColourScorer, G, judged_batch, step_config

from jaxrank import parallel
from jaxrank.region_r1 import crop_tool
from jaxrank.region_r1.kb_rows import place_kb, pool_rows
from jaxrank.region_r1.mllm_step import make_judge
from jaxrank.region_r1.r_grpo import grpo_config

MESHES = {"one device": (1, 1), "4x2": (4, 2)}


def _mesh(shape):
    data, model = shape
    return parallel.make_mesh(data, model, jax.devices()[: data * model])


@pytest.mark.parametrize("shape", MESHES.values(), ids=MESHES.keys())
def test_sharded_pool_rows_equal_numpy_gather(shape):
    mesh = _mesh(shape)
    rng = np.random.default_rng(0)
    kb = rng.normal(size=(13, 5)).astype(np.float32)  # 13 rows: padded to 16 on 8 devices
    ids = rng.integers(0, 13, (8, 6)).astype(np.int32)
    table = place_kb(kb, mesh, "sharded")
    assert table.addressable_shards[0].data.shape[0] == -(-13 // mesh.size)
    with jax.set_mesh(mesh):
        pools = jax.jit(lambda t, i: pool_rows(t, i, "sharded"))(
            table, parallel.shard_batch(ids, mesh)
        )
    np.testing.assert_array_equal(np.asarray(pools), kb[ids])
    assert pools.sharding.shard_shape(pools.shape)[0] == len(ids) // mesh.shape[parallel.DATA]


def _judge(layout: str, mesh):
    cfg = step_config(crop_capacity=3)
    cfg.kb_layout = layout
    judge = make_judge(cfg, ColourScorer(), grpo_config(cfg))
    batch = judged_batch()
    batch.pop("rows")
    b = len(batch["images"])
    batch["pool_ids"] = np.stack([np.roll(np.arange(3), r) for r in range(b)]).astype(np.int32)
    rng = np.random.default_rng(1)
    decision = np.where(rng.random((b, G)) < 0.6, crop_tool.REGION, crop_tool.FULL)
    corner = rng.uniform(0, 60, (b, G, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(8, 36, (b, G, 2))], -1)
    frozen = {"kb": place_kb(POOL, mesh, layout), "scorer": None}
    place = lambda x: parallel.shard_batch(x, mesh)
    with jax.set_mesh(mesh):
        out = jax.jit(judge)(
            place(decision.astype(np.int32)), place(boxes.astype(np.float32)), place(batch), frozen
        )
    return jax.device_get(out)


def test_judge_on_sharded_kb_equals_replicated():
    (reference, metrics) = _judge("replicated", _mesh((1, 1)))
    assert 0 < metrics["region_rate"] < 1
    assert np.abs(reference).max() > 0  # the rewards differ within the groups
    for shape in MESHES.values():
        advantages, sharded_metrics = _judge("sharded", _mesh(shape))
        np.testing.assert_allclose(advantages, reference, rtol=1e-6, atol=1e-6)
        assert set(sharded_metrics) == set(metrics)
        for key, value in metrics.items():
            np.testing.assert_allclose(sharded_metrics[key], value, rtol=1e-6, err_msg=key)
