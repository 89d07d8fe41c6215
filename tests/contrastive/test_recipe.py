"""The contrastive recipe end to end: sharding equivalence, CLI errors, kill-and-resume."""

import functools
import json
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from contrastive_tiny import CONFIG, TINY, tiny_config
from fast_xla import fast_compile, subprocess_env
from flax import nnx
from kill_and_resume import sigkill_after

from jaxrank import parallel
from jaxrank.cli import main as cli
from jaxrank.contrastive.embedders import knowledge_base
from jaxrank.contrastive.encoder import build_model, build_world
from jaxrank.contrastive.recipe import make_loss, training_data
from jaxrank.train.step import TrainState, jit_train_step, make_train_step


@fast_compile()  # its time is almost all compilation (init, step)
def one_step(cfg, mesh):
    world = build_world(cfg)
    model = build_model(cfg, mesh)
    graphdef, params = nnx.split(model, nnx.Param)
    # Plain SGD: Adam's first steps move every weight by about +-lr whatever the gradient's
    # size, so rounding noise in a near-zero gradient would flip whole updates.
    optimizer = optax.sgd(0.5)
    batch = next(iter(training_data(world, cfg)))
    kb = parallel.put_replicated(knowledge_base(world, cfg), mesh)
    with jax.set_mesh(mesh):  # as the recipe does: one compilation, state kept on the mesh
        state = jax.jit(lambda p: TrainState.create(p, optimizer, cfg.seed))(params)
        loss = make_loss(graphdef, cfg)
        step = jit_train_step(make_train_step(loss, optimizer), state)
        for _ in range(2):
            state, metrics = step(state, parallel.shard_batch(batch, mesh), kb)
    return jax.device_get((state.params, metrics["loss"]))


@functools.cache
def single_device_steps():
    return one_step(tiny_config(), parallel.make_mesh(1, 1, jax.devices()[:1]))


@pytest.mark.parametrize("shape", [(8, 1), (4, 2)])
def test_sharded_steps_equal_single_device(shape):
    single_params, single_loss = single_device_steps()
    params, loss = one_step(tiny_config(), parallel.make_mesh(*shape))
    np.testing.assert_allclose(loss, single_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single_params), strict=True):
        # float32 rounding of sharded vs whole reductions, relative to the array's scale (an
        # entry near zero in a leaf whose largest entries are ~10 may differ by ~1e-5).
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, np.abs(b).max()))


def run_cli(capsys, *args):
    code = cli.main(["train", "--config", str(CONFIG), *args])
    return code, capsys.readouterr().err


def test_cli_unknown_key_and_missing_parent(capsys, tmp_path):
    code, err = run_cli(capsys, "--workdir", str(tmp_path / "r"), "--config.train.stepz=3")
    assert code == 2 and "unknown config key 'train.stepz'" in err and "train.steps" in err
    code, err = run_cli(capsys, "--workdir", str(tmp_path / "missing" / "r"))
    assert code == 2 and "parent folder of workdir" in err


def test_cli_nan_loss_stops_with_message(capsys, tmp_path):
    overrides = [f"--config.{o}" for o in TINY]
    with fast_compile():  # its time is almost all compilation
        code, err = run_cli(
            capsys,
            "--workdir",
            str(tmp_path / "r"),
            *overrides,
            "--config.train.steps=20",
            "--config.train.log_every=5",
            "--config.train.checkpoint_every=5",
            "--config.train.learning_rate=1e38",
            "--config.train.grad_clip=1e38",
        )
    assert code == 2 and "became NaN/inf" in err and "Last good checkpoint" in err


def _train_cmd(workdir, steps):
    overrides = [f"--config.{o}" for o in TINY]
    return [
        sys.executable, "-m", "jaxrank.cli.main", "train", "--config", str(CONFIG),
        "--workdir", str(workdir), *overrides, f"--config.train.steps={steps}",
        "--config.train.log_every=5", "--config.train.checkpoint_every=10",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_same_results(tmp_path):
    env = subprocess_env(tmp_path / "xla_cache")  # shared by the three runs
    steps = 30
    straight = [*_train_cmd(tmp_path / "straight", steps), "--config.train.profile_steps=(4, 6)"]
    subprocess.run(straight, env=env, check=True, timeout=600)
    trace = list((tmp_path / "straight" / "profile").rglob("*.xplane.pb"))
    assert len(trace) == 1 and trace[0].stat().st_size > 0  # the profiler flag's trace

    killed = tmp_path / "killed"
    sigkill_after(_train_cmd(killed, steps), killed / "checkpoints" / "10", env)
    assert not (killed / "report.json").exists()
    subprocess.run(_train_cmd(killed, steps), env=env, check=True, timeout=600)

    reports = [json.loads((d / "report.json").read_text()) for d in (tmp_path / "straight", killed)]
    assert reports[0]["retrieval"] == reports[1]["retrieval"]
    losses = [
        [(r["step"], r["train/loss"]) for r in map(json.loads, (d / "metrics.jsonl").open())]
        for d in (tmp_path / "straight", killed)
    ]
    assert losses[0] == losses[1]
    # Throughput on every training row; compilation reported apart, in the first.
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").open()]
    train = [r for r in rows if "train/loss" in r]
    assert all(r["train/tflops_per_device"] > 0 and r["train/mfu_measured"] > 0 for r in train)
    assert train[0]["train/compile_s"] > 0
