"""The Region-R1 recipe: one fused r-GRPO step on 8 devices equals one device, and the whole
pipeline from the command line on a tiny config (files, baselines' invariants, resume)."""

import json
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from fast_xla import fast_compile, subprocess_env
from flax import nnx
from region_r1_batch import toy_batch
from region_r1_tiny import CONFIG, TINY_MODELS, tiny_config

from jaxrank import parallel
from jaxrank.region_r1 import recipe as region_r1
from jaxrank.region_r1.scorer import INDEX_FILE, untrained_scorer
from jaxrank.search import Index
from jaxrank.train.step import TrainState


@fast_compile()  # its time is almost all compilation (init, step)
def one_step(cfg, mesh):
    scorer, scorer_params = untrained_scorer(cfg, mesh)
    graphdef, params = nnx.split(region_r1.build_policy(cfg, mesh), nnx.Param)
    reference = jax.tree.map(lambda x: x.copy(), params)
    optimizer = optax.sgd(0.5)  # compares gradients, not Adam's near-sign of them
    state = TrainState.create(params, optimizer, cfg.seed)

    batch, kb = toy_batch(cfg)
    frozen = {
        "kb": parallel.put_replicated(kb, mesh),
        "scorer": scorer_params,
        "ref": reference,
    }
    step = jax.jit(region_r1.make_step(cfg, graphdef, scorer, optimizer))
    with jax.set_mesh(mesh):
        state, metrics = step(state, parallel.shard_batch(batch, mesh), frozen)
    return jax.device_get((state.params, metrics))


@pytest.fixture
def single_device_step():
    return one_step(tiny_config(), parallel.make_mesh(1, 1, jax.devices()[:1]))


def test_sharded_step_equals_single_device(single_device_step):
    """On a 4x2 mesh: groups split over data (two queries per device), weights over model."""
    single_params, single = single_device_step
    params, sharded = one_step(tiny_config(), parallel.make_mesh(4, 2))
    # The same RNG stream: the same actions, so the same rewards and decisions.
    for key in ("reward", "region_rate", "invalid_box_rate", "cond_r1", "forced_rate"):
        np.testing.assert_allclose(sharded[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(sharded["loss"], single["loss"], rtol=1e-4, atol=1e-7)
    assert float(single["grad_norm"]) > 0
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


TINY_RUN = [
    "scorer.train.steps=10",
    "scorer.train.checkpoint_every=10",
    "scorer.eval.num_queries=16",
    "scorer.eval.batch_size=16",
    "scorer.eval.presets=('moderate',)",
    "data.train_queries_per_preset=16",
    "grounding.steps=2",
    "grounding.batch_size=8",
    "grounding.log_every=1",
    "train.steps=4",
    "train.log_every=2",
    "train.checkpoint_every=2",
    "train.profile_repeats=1",
    "eval.num_queries=24",
    "eval.batch_size=16",
    "eval.gallery_queries=4",
]


def run_cli(cache, *args):
    """The command in a fresh process with one CPU device and XLA's cheapest optimisation
    level: this test is about wiring (the 8-device step is tested above), and its time is
    almost all compilation. Runs sharing ``cache`` compile each program once."""
    done = subprocess.run(
        [sys.executable, "-m", "jaxrank.cli.main", *args],
        env=subprocess_env(cache),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_pipeline_from_the_command_line(tmp_path):
    workdir, cache = tmp_path / "run", tmp_path / "xla_cache"
    args = ["train", "--config", str(CONFIG), "--workdir", str(workdir)]
    overrides = [f"--config.{o}" for o in [*TINY_MODELS, *TINY_RUN, "train.batch_size=8"]]
    assert "CondR@1 on held-out queries" in run_cli(cache, *args, *overrides)

    report = json.loads((workdir / "report.json").read_text())
    for preset in ("moderate", "easy"):
        m = report["evaluation"][preset]
        assert m["full"]["crop_rate"] == 0.0 and m["oracle_crop"]["crop_rate"] == 1.0
        assert m["full"]["num_queries"] == 24 and m["full"]["invalid_boxes"] == 0
        with_positive = m["full"]["num_with_positive"]
        # Every strategy re-ranks the same pool: the same queries have a positive.
        assert {s["num_with_positive"] for s in m.values()} == {with_positive}
        # CondR@k is R@k over the queries whose pool holds the positive.
        for s in m.values():
            np.testing.assert_allclose(s["cond_recall@1"] * with_positive, s["recall@1"] * 24)
    assert set(report["evaluation"]["moderate"]) == {
        "full",
        "centre_crop",
        "random_crop",
        "oracle_crop",
        "grounded_policy",
        "untrained_policy",
        "policy",
    }
    for name in ("report.md", "training.png", "cond_recall_at_1.png", "gallery_moderate.png"):
        assert (workdir / name).is_file(), name
    index = Index.load(workdir / INDEX_FILE)
    assert len(index) == 256

    # Re-running the finished run only re-evaluates, with the same numbers.
    run_cli(cache, *args, *overrides)
    again = json.loads((workdir / "report.json").read_text())
    assert again["evaluation"] == report["evaluation"]
    assert again["train"]["step_profile"] == report["train"]["step_profile"]
