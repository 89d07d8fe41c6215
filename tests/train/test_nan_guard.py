"""The NaN guard on runs that really diverge: the checkpoint it calls good is one training can
continue from (finite state, finite loss and gradients on the step taken from it), checked here
by recomputing that next loss in numpy, independently of the trainer."""

import re

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxrank.train.checkpoint import Checkpointer, CheckpointError
from jaxrank.train.optim import adamw_warmup_cosine
from jaxrank.train.step import TrainState, make_train_step
from jaxrank.train.trainer import GOOD_CHECKPOINT_RULE, NonFiniteLossError, fit

TARGET = np.array([1.0, -2.0, 0.5], np.float32)


def loss_fn(params, batch, rng, frozen):
    del rng, frozen
    err = batch["x"] @ params["w"] - batch["y"]
    return jnp.mean(err**2), {}


def batch_of(step: int) -> dict[str, np.ndarray]:
    """The batch of 1-based ``step`` (what the trainer feeds, recomputed for the reference)."""
    x = np.random.default_rng(step).normal(size=(4, 3)).astype(np.float32)
    return {"x": x, "y": x @ TARGET}


def data():
    return grain.MapDataset.range(1, 1000).map(batch_of).to_iter_dataset()


def numpy_loss(w: np.ndarray, step: int) -> np.float32:
    batch = batch_of(step)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.mean((batch["x"] @ w.astype(np.float32) - batch["y"]) ** 2, dtype=np.float32)


def run(workdir, optimizer, total=10):
    state = TrainState.create({"w": jnp.zeros(3)}, optimizer, seed=0)
    step = jax.jit(make_train_step(loss_fn, optimizer), donate_argnums=0)
    return fit(
        workdir=workdir,
        state=state,
        step_fn=step,
        data=data(),
        place_batch=lambda b: jax.tree.map(jnp.asarray, b),
        total_steps=total,
        log_every=1,
        checkpoint_every=1,
    )


def restore_w(directory, like, step):
    with Checkpointer(directory) as checkpointer:
        return np.asarray(checkpointer.restore(like, step)[1].params["w"])


def test_learning_rate_1e30_names_a_checkpoint_training_can_continue_from(tmp_path):
    """The issue's run: warm-up from 0 to 1e30, a checkpoint every step. Step 1 moves nothing
    (lr 0), step 2 throws the weights to ~1e29 (finite), step 3's loss overflows."""
    section = ml_collections.ConfigDict(
        dict(learning_rate=1e30, warmup_steps=2, steps=10, grad_clip=1.0, weight_decay=0.0)
    )
    optimizer = adamw_warmup_cosine(section)
    workdir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        run(workdir, optimizer)
    message = str(info.value)
    assert "NaN/inf at step 3" in message
    assert f"Last good checkpoint: step 1 in {workdir / 'checkpoints'}" in message
    assert GOOD_CHECKPOINT_RULE in message
    assert f"step 2 fails that test and was moved to {workdir / 'diverged' / '2'}" in message

    like = TrainState.create({"w": jnp.zeros(3)}, optimizer, seed=0)
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        assert checkpointer.all_steps() == [1]
    good = restore_w(workdir / "checkpoints", like, 1)
    set_aside = restore_w(workdir / "diverged", like, 2)
    # The rule, recomputed: from the good one the next step's loss is finite; from the one set
    # aside (finite but huge weights, the "last good checkpoint") it is not.
    assert np.isfinite(good).all() and np.isfinite(numpy_loss(good, 2))
    assert np.isfinite(set_aside).all() and np.abs(set_aside).max() > 1e20
    assert not np.isfinite(numpy_loss(set_aside, 3))

    # A re-run resumes from the good checkpoint, diverges at the same step and says so again.
    with pytest.raises(NonFiniteLossError, match=re.escape("Last good checkpoint: step 1 in")):
        run(workdir, optimizer)
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        assert checkpointer.all_steps() == [1]
    np.testing.assert_array_equal(restore_w(workdir / "diverged", like, 2), set_aside)


def test_an_update_that_overflows_with_finite_losses_is_never_saved(tmp_path):
    """Step 2's loss and gradient are finite but its update (lr 1e38) overflows the weights:
    that state is not saved, and step 1 (whose next step had a finite loss) stays the good one."""
    optimizer = optax.sgd(lambda count: jnp.where(count < 1, 0.01, 1e38))
    workdir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        run(workdir, optimizer)
    message = str(info.value)
    assert "after step 2, with every loss and gradient finite, the update left NaN/inf" in message
    assert "params.w" in message and "that state was not saved" in message
    assert f"Last good checkpoint: step 1 in {workdir / 'checkpoints'}" in message
    assert not (workdir / "diverged").exists()
    like = TrainState.create({"w": jnp.zeros(3)}, optimizer, seed=0)
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        assert checkpointer.all_steps() == [1]
    assert np.isfinite(numpy_loss(restore_w(workdir / "checkpoints", like, 1), 2))


def test_a_checkpoint_holding_nan_is_refused_by_name(tmp_path):
    optimizer = optax.adam(0.1)
    state = TrainState.create({"w": jnp.asarray([1.0, np.nan, 0.0])}, optimizer, seed=0)
    with Checkpointer(tmp_path / "checkpoints") as checkpointer:
        checkpointer.save(4, state, {"iterator": {}})
    like = TrainState.create({"w": jnp.zeros(3)}, optimizer, seed=0)
    with (
        Checkpointer(tmp_path / "checkpoints") as checkpointer,
        pytest.raises(CheckpointError, match=r"checkpoints/4 holds NaN/inf values in params\.w;"),
    ):
        checkpointer.restore(like)
