"""The shared step and host loop on a toy regression, where every number can be worked out."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrank.perf.throughput import machine_peak_tflops
from jaxrank.train.checkpoint import Checkpointer, CheckpointError
from jaxrank.train.runlog import read_jsonl
from jaxrank.train.step import TrainState, make_train_step
from jaxrank.train.trainer import NonFiniteLossError, fit


def quadratic_loss(params, batch, rng, frozen):
    del rng, frozen
    err = batch["x"] @ params["w"] - batch["y"]
    return jnp.mean(err**2), {"abs_err": jnp.mean(jnp.abs(err))}


def toy_data(nan_at: int | None = None):
    def example(i):
        rng = np.random.default_rng(i)
        x = rng.normal(size=3).astype(np.float32)
        y = np.float32(x @ np.array([1.0, -2.0, 0.5]))
        if i == nan_at:
            y = np.float32("nan")
        return {"x": x, "y": y}

    return grain.MapDataset.range(10_000).map(example).batch(4).to_iter_dataset()


def new_state(optimizer):
    return TrainState.create({"w": jnp.zeros(3)}, optimizer, seed=0)


def test_step_is_plain_sgd_and_guard_freezes_on_nan():
    optimizer = optax.sgd(0.1)
    step = jax.jit(make_train_step(quadratic_loss, optimizer))
    batch = {"x": jnp.eye(3), "y": jnp.asarray([1.0, 2.0, 3.0])}
    state, metrics = step(new_state(optimizer), batch)
    # d/dw mean((w - y)^2) at w=0 is -2y/3; SGD moves w by +0.1 * 2y/3.
    np.testing.assert_allclose(state.params["w"], 0.2 * np.array([1.0, 2.0, 3.0]) / 3, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], 14 / 3, rtol=1e-6)
    assert int(state.step) == 1 and int(state.first_bad_step) == -1

    bad = {"x": jnp.eye(3), "y": jnp.asarray([1.0, jnp.nan, 3.0])}
    frozen_state, _ = step(state, bad)
    assert int(frozen_state.first_bad_step) == 1
    np.testing.assert_array_equal(frozen_state.params["w"], state.params["w"])
    # Once frozen, even a good batch changes nothing.
    later, _ = step(frozen_state, batch)
    np.testing.assert_array_equal(later.params["w"], state.params["w"])
    assert int(later.first_bad_step) == 1


def _fit(workdir, total, data=None, every=5, profile_steps=None):
    optimizer = optax.adam(0.05)
    step = jax.jit(make_train_step(quadratic_loss, optimizer), donate_argnums=0)
    return fit(
        workdir=workdir,
        state=new_state(optimizer),
        step_fn=step,
        data=data or toy_data(),
        place_batch=lambda b: jax.tree.map(jnp.asarray, b),
        total_steps=total,
        log_every=every,
        checkpoint_every=every,
        profile_steps=profile_steps,
    )


def test_profile_steps_write_a_trace(tmp_path):
    state = _fit(tmp_path / "run", 8, profile_steps=(3, 5))
    traces = list((tmp_path / "run" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    # Profiling changes nothing the run computes.
    np.testing.assert_array_equal(state.params["w"], _fit(tmp_path / "plain", 8).params["w"])


def test_resume_continues_exactly(tmp_path):
    straight = _fit(tmp_path / "a", 30)
    _fit(tmp_path / "b", 15)
    resumed = _fit(tmp_path / "b", 30)
    np.testing.assert_array_equal(straight.params["w"], resumed.params["w"])
    np.testing.assert_array_equal(straight.opt_state[0].mu["w"], resumed.opt_state[0].mu["w"])
    losses = {
        run: [(r["step"], r["train/loss"]) for r in read_jsonl(tmp_path / run / "metrics.jsonl")]
        for run in ("a", "b")
    }
    assert [s for s, _ in losses["b"]] == [5, 10, 15, 20, 25, 30]  # no duplicates after resume
    assert losses["a"] == losses["b"]


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    # Example 4*12+1 is in the 13th batch: steps 1..12 are fine, step 13 is not.
    with pytest.raises(NonFiniteLossError) as info:
        _fit(tmp_path / "run", 30, data=toy_data(nan_at=49), every=5)
    message = str(info.value)
    assert "NaN/inf at step 13" in message and "Last good checkpoint: step 10" in message
    with Checkpointer(tmp_path / "run" / "checkpoints") as checkpointer:
        assert checkpointer.latest_step() == 10


def test_corrupt_and_mismatched_checkpoints_are_refused(tmp_path):
    _fit(tmp_path / "run", 5)
    directory = tmp_path / "run" / "checkpoints"
    like = new_state(optax.adam(0.05))
    wrong = like.replace(params={"w": jnp.zeros(4)})
    wrong = wrong.replace(opt_state=optax.adam(0.05).init(wrong.params))
    with (
        Checkpointer(directory) as checkpointer,
        pytest.raises(
            CheckpointError,
            match=r"params\.w: checkpoint has float32\[3\], run expects float32\[4\]",
        ),
    ):
        checkpointer.restore(wrong)
    (directory / "5" / "state" / "_METADATA").write_text("{ truncated")
    with (
        Checkpointer(directory) as checkpointer,
        pytest.raises(CheckpointError, match=r"checkpoints/5 is (corrupt|unreadable)"),
    ):
        checkpointer.restore(like)


def test_rollout_runs_once_then_mu_updates_on_its_batch():
    """GRPO's shape: the rollout sees the pre-update parameters; mu SGD updates follow on it."""
    optimizer = optax.sgd(0.1)

    def rollout(params, batch, rng, frozen):
        del rng, frozen
        # A target made from the pre-update weights: later updates must not recompute it.
        return dict(batch, y=batch["y"] + params["w"].sum()), {"w_sum": params["w"].sum()}

    step = jax.jit(make_train_step(quadratic_loss, optimizer, rollout=rollout, updates_per_batch=3))
    state = TrainState.create({"w": jnp.ones(3)}, optimizer, seed=0)
    batch = {"x": jnp.eye(3), "y": jnp.asarray([1.0, 2.0, 3.0])}
    new, metrics = step(state, batch)

    y = np.array([1.0, 2.0, 3.0]) + 3.0
    w = np.ones(3)
    for _ in range(3):  # d/dw mean((w - y)^2) = 2 (w - y) / 3
        w = w - 0.1 * 2 * (w - y) / 3
    np.testing.assert_allclose(new.params["w"], w, rtol=1e-6)
    np.testing.assert_allclose(metrics["w_sum"], 3.0)
    np.testing.assert_allclose(metrics["loss"], np.mean((1.0 - y) ** 2), rtol=1e-6)
    assert int(new.step) == 1
    with pytest.raises(ValueError, match="updates_per_batch"):
        make_train_step(quadratic_loss, optimizer, updates_per_batch=0)


def test_log_rows_carry_throughput(tmp_path):
    _fit(tmp_path / "run", 10)
    first, second = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    # The step's matmuls: forward x[4, 3] @ w[3] and the weight gradient err[4] @ x[4, 3],
    # 2 * 4 * 3 FLOPs each.
    flops = 2 * (2 * 4 * 3)
    devices = jax.device_count()
    for row in (first, second):
        tflops = flops / row["train/step_s"] / devices / 1e12
        assert row["train/tflops_per_device"] == pytest.approx(tflops)
        assert row["train/mfu_measured"] == pytest.approx(tflops / machine_peak_tflops())
        assert "train/mfu" not in row  # a CPU has no table peak
    # The first stretch compiled the step; its step time is net of that. Nothing compiles
    # later (the peak measurement ran before the clocks started).
    assert first["train/compile_s"] > 0 and "train/compile_s" not in second
    assert first["train/step_s"] < first["train/compile_s"]
