"""The train state and the one jitted update every recipe shares.

A recipe supplies ``loss_fn(params, batch, rng, frozen) -> (loss, metrics)``; this module turns
it into ``step(state, batch, frozen) -> (state, metrics)``: gradient, optax update and a guard
that freezes the state at the first non-finite loss or gradient, so the host (which only looks
every few steps) can stop the run with the last good parameters intact.

RL recipes also supply a ``rollout(params, batch, rng, frozen) -> (batch, metrics)`` that runs
once per step with the pre-update parameters (sampling, rewards, advantages, old log-probs);
``updates_per_batch`` optimizer updates (GRPO's mu) then follow on the batch it returns, all in
the same compiled step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[Any, Any, jax.Array, Any], tuple[jax.Array, dict[str, jax.Array]]]
RolloutFn = Callable[[Any, Any, jax.Array, Any], tuple[Any, dict[str, jax.Array]]]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: steps taken (the host loop's counter)
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data, so orbax stores it like any array
    first_bad_step: jax.Array  # int32 scalar, -1 while every loss so far was finite

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            rng=jax.random.key_data(jax.random.key(seed)),
            first_bad_step=jnp.full((), -1, jnp.int32),
        )


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    rollout: RolloutFn | None = None,
    updates_per_batch: int = 1,
) -> Callable[[TrainState, Any, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted step; the caller jits it with its shardings and donates the state.

    Metrics are the rollout's and the first update's (``loss``, ``grad_norm``, the loss's aux).
    """
    if updates_per_batch < 1:
        raise ValueError(f"updates_per_batch must be >= 1, got {updates_per_batch}")

    def update(carry, rng_batch):
        params, opt_state, ok = carry
        rng, batch, frozen = rng_batch
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch, rng, frozen
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        ok = ok & jnp.isfinite(loss) & _all_finite(grads)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        return (optax.apply_updates(params, updates), opt_state, ok), metrics

    def step(state: TrainState, batch: Any, frozen: Any = None):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        rollout_metrics = {}
        if rollout is not None:
            rollout_rng, rng = jax.random.split(rng)
            batch, rollout_metrics = jax.lax.stop_gradient(
                rollout(state.params, batch, rollout_rng, frozen)
            )
        carry = (state.params, state.opt_state, state.first_bad_step < 0)
        carry, metrics = update(carry, (rng, batch, frozen))
        if updates_per_batch > 1:
            more = jax.random.split(jax.random.fold_in(rng, 1), updates_per_batch - 1)
            carry, _ = jax.lax.scan(lambda c, k: update(c, (k, batch, frozen)), carry, more)
        params, opt_state, ok = carry
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            first_bad_step=jnp.where(
                ok | (state.first_bad_step >= 0), state.first_bad_step, state.step
            ),
        )
        return new_state, {**rollout_metrics, **metrics}

    return step


def jit_train_step(step: Callable, state: TrainState) -> Callable:
    """``step`` jitted as every recipe runs it: the state donated (updated in place) and
    returned on the shardings it came with."""
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(step, donate_argnums=0, out_shardings=(state_sharding, None))


def abstract_train_state(
    params: Any, optimizer: optax.GradientTransformation, mesh: Any
) -> TrainState:
    """The train state of abstract ``params`` as ``jax.ShapeDtypeStruct``s on the shardings
    ``TrainState.create`` gives its optimizer moments under ``mesh`` (read from its compiled
    program: nothing is allocated), for a planner to compile steps against."""
    create = jax.jit(lambda p: TrainState.create(p, optimizer, 0))
    with jax.set_mesh(mesh):
        shardings = create.lower(params).compile().output_shardings
    return jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        jax.eval_shape(create, params),
        shardings,
    )
