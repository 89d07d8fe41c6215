"""The generative recipe's RL step (a vision-language embedder writing summaries and [RET]) on a
4x2 mesh equals the single-device step: the same rollouts, loss and metrics, and the same
adapters after the update. The embedder is warm-started by supervised steps on the
reference summaries, so its rollouts write [RET] and the rewards are real."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax
import pytest
from elva_generative_tiny import tiny_config
from fast_xla import fast_compile
from flax import nnx

from jaxrank import parallel
from jaxrank.elva import generative_recipe
from jaxrank.elva.ret_embedder import build_embedder
from jaxrank.elva.ret_rows import IMAGE, TEXT
from jaxrank.train.step import TrainState, jit_train_step, make_train_step
from jaxrank.vlm.finetune import answer_nll_loss

QUERIES = 4  # one pool of 6 rows (query, positive, 2 hard + 2 random negatives) per data shard


def _embedder(cfg, source, folder, mesh) -> generative_recipe.Embedder:
    """The tiny embedder built on ``mesh`` (its weights laid out for it; the tokenizer kept in
    ``folder``)."""
    base = build_embedder(cfg.embedder, folder, source.corpus(), cfg.seed, mesh)
    return generative_recipe.Embedder(cfg, base, mesh)


def _warm_start(cfg, embedder, rows) -> Any:
    """The base's weights trained on every input's reference summary then [RET] (as the
    contrastive stage's ``contrastive.train="all"`` trains the tiny model), on the host."""
    graphdef, params = nnx.split(embedder.base.model, nnx.Param)
    base = embedder.base
    entities = np.arange(24) % 12
    pairs = rows.candidates(entities, np.where(np.arange(24) < 12, IMAGE, TEXT))
    host = base.prompts(pairs["instructions"], pairs["texts"], pairs["images"], pairs["has_image"])
    host.update(base.answers(pairs["summaries"], cfg.embedder.summary_tokens + 1))
    optimizer = optax.adam(1e-2)
    step = jax.jit(make_train_step(answer_nll_loss(graphdef, base.grid, adapters=False), optimizer))
    state = TrainState.create(params, optimizer, 0)
    batch = parallel.shard_batch(host, embedder.mesh)
    with jax.set_mesh(embedder.mesh):
        for _ in range(60):
            state, metrics = step(state, batch, None)
    assert float(metrics["nll"]) < 0.5, "the warm start did not learn the summaries"
    return jax.device_get(state.params)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    cfg = tiny_config("rl.num_generations=4", "sampling.temperature=0.3")
    source, folder = generative_recipe.make_source(cfg), tmp_path_factory.mktemp("embedder")
    single = parallel.make_mesh(1, 1, jax.devices()[:1])
    with fast_compile():
        params = _warm_start(cfg, _embedder(cfg, source, folder, single), source.rows)
    query = np.arange(QUERIES)
    pools = np.concatenate([query, query, *[(query + k) % 12 for k in range(1, 5)]])
    pools = pools.reshape(6, QUERIES).T.ravel()  # per query: itself, its positive, 4 others
    kinds = np.tile([IMAGE, TEXT, TEXT, TEXT, TEXT, TEXT], QUERIES)
    rows = source.rows.candidates(pools, kinds)
    return cfg, source, folder, params, rows


def _step(warm, mesh):
    """One RL step on ``mesh`` from the warm start: (adapters before, after, metrics), on the
    host."""
    cfg, source, folder, params, rows = warm
    embedder = _embedder(cfg, source, folder, mesh)
    graphdef, like = nnx.split(embedder.base.model, nnx.Param)
    placed = jax.device_put(params, parallel.state_shardings(like, mesh))
    graphdef, adapters, rest = generative_recipe.rl_model(cfg, (graphdef, placed))
    adapters = jax.device_put(adapters, parallel.state_shardings(adapters, mesh))
    optimizer = optax.sgd(0.5)  # compares gradients, not Adam's near-sign of them
    before = jax.device_get(adapters)
    # jitted, as the recipe's Stage makes it, so the state's scalars sit on the mesh too
    state = jax.jit(lambda p: TrainState.create(p, optimizer, cfg.seed))(adapters)
    step = generative_recipe.rl_step(cfg, graphdef, embedder, optimizer)
    batch = embedder.batch(rows, teacher_forced=False)
    with jax.set_mesh(mesh):
        state, metrics = jit_train_step(step, state)(state, batch, rest)
    return before, *jax.device_get((state.params, metrics))


@fast_compile()  # its time is almost all compilation
def test_sharded_rl_step_equals_single_device(warm):
    """Pools whole per data shard, the embedder's weights split over model."""
    initial, single, single_metrics = _step(warm, parallel.make_mesh(1, 1, jax.devices()[:1]))
    _, sharded, metrics = _step(warm, parallel.make_mesh(4, 2))
    assert single_metrics["complete"] > 0  # rollouts that wrote [RET]: real rewards
    for key in ("loss", "reward", "complete", "kl", "positive_first"):
        np.testing.assert_allclose(metrics[key], single_metrics[key], rtol=1e-5, atol=1e-6)
    leaves = zip(jax.tree.leaves(single), jax.tree.leaves(initial), strict=True)
    assert max(np.abs(a - b).max() for a, b in leaves) > 1e-4  # the update is real
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
