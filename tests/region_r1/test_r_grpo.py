"""r-GRPO on the crop action: sampling and masks, the loss gradient by hand, and learning a toy
crop task end to end through ``make_train_step``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrank.region_r1 import r_grpo, rerank
from jaxrank.region_r1.action import FULL, REGION, PolicyOutput, action_log_prob, mode
from jaxrank.rl.grpo import GRPOConfig
from jaxrank.train.step import TrainState, make_train_step

SIZE, BINS = 24, 7  # bins 0..6 map to 0, 4, ..., 24 px


def shared_policy(params, images, tokens):
    """A policy whose logits are its parameters, the same for every query."""
    del tokens
    b = images.shape[0]
    return PolicyOutput(
        jnp.broadcast_to(params["decision"], (b, 2)),
        jnp.broadcast_to(params["box"], (b, 4, BINS)),
    )


def initial_params():
    return {"decision": jnp.zeros(2), "box": jnp.zeros((4, BINS))}


def config(**rl):
    return r_grpo.RegionGRPOConfig(GRPOConfig(**{"num_generations": 8, **rl}))


def test_act_balances_groups_and_masks_box_factors():
    out = PolicyOutput(jnp.asarray([[6.0, -6.0]] * 64), jnp.zeros((64, 4, BINS)))
    actions = r_grpo.act(out, out, jax.random.key(0), config())
    decision = np.asarray(actions.decision)
    assert ((decision == FULL).any(axis=1) & (decision == REGION).any(axis=1)).all()
    assert np.asarray(actions.forced).sum(axis=1).max() == 1
    mask = np.asarray(actions.mask)
    np.testing.assert_array_equal(mask[..., 0], True)
    np.testing.assert_array_equal(mask[..., 1:], (decision == REGION)[..., None].repeat(4, -1))
    summed = np.where(mask, actions.old_logp, 0).sum(-1)
    np.testing.assert_allclose(
        summed, action_log_prob(out, actions.decision, actions.bins), rtol=1e-6
    )
    np.testing.assert_array_equal(actions.ref_logp, actions.old_logp)

    unbalanced = r_grpo.act(out, out, jax.random.key(0), r_grpo.RegionGRPOConfig(balanced=False))
    assert (np.asarray(unbalanced.decision) == FULL).all()  # P(FULL) ~ 1 - 6e-6
    assert not np.asarray(unbalanced.forced).any()
    off_policy_dropped = r_grpo.act(
        out, out, jax.random.key(0), r_grpo.RegionGRPOConfig(forced_in_loss=False)
    )
    forced = np.asarray(actions.forced)  # same key and G: the same flipped slots
    assert forced.any()
    assert not np.asarray(off_policy_dropped.mask)[forced].any()


def test_loss_gradient_is_the_policy_gradient():
    """With one update per batch, rho = 1 and KL'(ref = old) = 0, so the gradient of the
    seq_mean loss is -sum_i A_i / (N |T_i|) * grad log pi(factor) over each action's factors."""
    rng = np.random.default_rng(0)
    params = {
        "decision": jnp.asarray(rng.normal(size=2), jnp.float32),
        "box": jnp.asarray(rng.normal(size=(4, BINS)), jnp.float32),
    }
    images = jnp.zeros((3, SIZE, SIZE, 3), jnp.uint8)
    out = shared_policy(params, images, None)
    actions = r_grpo.act(out, out, jax.random.key(1), config(num_generations=4))
    advantages = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    batch = {"images": images, "tokens": None, "actions": actions, "advantages": advantages}
    loss_fn = r_grpo.make_loss(shared_policy, config(num_generations=4))
    grads = jax.grad(lambda p: loss_fn(p, batch, None, None)[0])(params)

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    expected = {"decision": np.zeros(2), "box": np.zeros((4, BINS))}
    decision, bins = np.asarray(actions.decision), np.asarray(actions.bins)
    n = decision.size
    for i in range(3):
        for g in range(4):
            factors = 1 + 4 * (decision[i, g] == REGION)
            weight = -float(advantages[i, g]) / (n * factors)
            p = softmax(np.asarray(params["decision"]))
            expected["decision"] += weight * (np.eye(2)[decision[i, g]] - p)
            if decision[i, g] == REGION:
                for c in range(4):
                    q = softmax(np.asarray(params["box"][c]))
                    expected["box"][c] += weight * (np.eye(BINS)[bins[i, g, c]] - q)
    np.testing.assert_allclose(grads["decision"], expected["decision"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["box"], expected["box"], rtol=1e-4, atol=1e-6)


def colour_embed(params, pixels):
    """Mean colour, shifted so that grey and red point different ways; normalised."""
    del params
    mean = pixels.mean(axis=(1, 2)) / 255.0 - 0.4
    return mean / jnp.linalg.norm(mean, axis=-1, keepdims=True)


def toy_task(batch_size):
    """A red square in the top-left of a grey scene; the pool is (grey, red, blue) with red the
    positive. The full image looks grey (rank 2); a crop to the square ranks red first."""
    images = np.full((batch_size, SIZE, SIZE, 3), 128, np.uint8)
    images[:, :8, :8] = (255, 0, 0)
    pool = np.array([[1.0, 1.0, 1.0], [0.6, -0.4, -0.4], [-0.4, -0.4, 0.6]], np.float32)
    kb = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    batch = {
        "images": jnp.asarray(images),
        "tokens": jnp.zeros((batch_size, 1), jnp.int32),
        "boxes": jnp.tile(jnp.asarray([0.0, 0.0, 8.0, 8.0]), (batch_size, 1)),
        "pool_ids": jnp.tile(jnp.arange(3, dtype=jnp.int32), (batch_size, 1)),
        "labels": jnp.tile(jnp.asarray([0.0, 1.0, 0.0]), (batch_size, 1)),
        "pool_valid": jnp.ones((batch_size, 3), bool),
    }
    return batch, {"kb": jnp.asarray(kb), "scorer": None, "ref": initial_params()}


def test_r_grpo_learns_the_toy_crop():
    cfg = config(beta=0.01)
    rollout = r_grpo.make_rollout(shared_policy, colour_embed, cfg, BINS, 8)
    loss = r_grpo.make_loss(shared_policy, cfg)
    optimizer = optax.adam(0.1)
    step = jax.jit(make_train_step(loss, optimizer, rollout=rollout))
    batch, frozen = toy_task(8)
    state = TrainState.create(initial_params(), optimizer, seed=0)
    rewards = []
    for _ in range(150):
        state, metrics = step(state, batch, frozen)
        rewards.append(float(metrics["reward"]))
    assert np.mean(rewards[:10]) < 0.3
    assert np.mean(rewards[-10:]) > 1.0
    out = shared_policy(state.params, batch["images"], None)
    assert float(jax.nn.softmax(out.decision_logits[0])[REGION]) > 0.9
    decision, bins = mode(out)
    boxes = bins[:, None] * (SIZE / (BINS - 1))
    scored = rerank.score_actions(
        lambda p: colour_embed(None, p),
        batch["images"],
        decision[:, None],
        boxes.astype(jnp.float32),
        frozen["kb"][batch["pool_ids"]],
        8,
    )
    assert (np.argmax(np.asarray(scored.scores[:, 0]), axis=-1) == 1).all()
    assert float(metrics["full_cond_r1"]) == 0.0


@pytest.mark.parametrize("advantage", ["dr_grpo", "grpo", "rloo"])
def test_judge_centres_groups(advantage):
    batch, frozen = toy_task(4)
    out = shared_policy(initial_params(), batch["images"], None)
    cfg = config(advantage=advantage)
    actions = r_grpo.act(out, out, jax.random.key(3), cfg)
    scored = r_grpo.score(
        lambda p: colour_embed(None, p),
        batch["images"],
        actions,
        frozen["kb"][batch["pool_ids"]],
        BINS,
        8,
    )
    rewards, advantages, _ = r_grpo.judge(
        scored, actions.decision, batch["labels"], batch["pool_valid"], cfg
    )
    np.testing.assert_allclose(np.asarray(advantages).sum(axis=1), 0, atol=1e-5)
    full = np.asarray(actions.decision) == FULL
    np.testing.assert_array_equal(np.asarray(rewards)[full], 0.0)  # the full image ranks red 2nd
    invalid = ~full & ~np.asarray(scored.box_valid)
    np.testing.assert_array_equal(np.asarray(rewards)[invalid], -1.0)
