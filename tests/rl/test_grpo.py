"""GRPO core: advantages against numpy, k3 KL, the clipped loss and its aggregations by hand,
the policy-gradient identity at rho = 1, and sharded == unsharded."""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrank.parallel import make_mesh
from jaxrank.rl import (
    ADVANTAGES,
    GRPOConfig,
    clipped_policy_loss,
    compute_advantages,
    kl_k3,
)

REWARDS = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)


def test_advantages_match_numpy():
    centred = REWARDS - REWARDS.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(compute_advantages(REWARDS, "dr_grpo"), centred, atol=1e-6)
    std = REWARDS.std(axis=1, ddof=1, keepdims=True)
    np.testing.assert_allclose(
        compute_advantages(REWARDS, "grpo"), centred / (std + 1e-4), rtol=1e-5, atol=1e-6
    )
    others = (REWARDS.sum(axis=1, keepdims=True) - REWARDS) / 7
    np.testing.assert_allclose(compute_advantages(REWARDS, "rloo"), REWARDS - others, atol=1e-6)


def test_rloo_by_hand():
    # r = [1, 2, 3, 6]: the others' means are 11/3, 10/3, 3, 2.
    np.testing.assert_allclose(
        compute_advantages(jnp.array([[1.0, 2.0, 3.0, 6.0]]), "rloo"),
        [[1 - 11 / 3, 2 - 10 / 3, 0.0, 6 - 2]],
        rtol=1e-6,
    )


@pytest.mark.parametrize("kind", sorted(ADVANTAGES))
def test_constant_groups_have_exactly_zero_advantage(kind):
    # 0.1 seven times: the float32 mean is not exactly 0.1, yet A must be exactly 0, not NaN.
    rewards = jnp.array([[0.1] * 7, [-1.0] * 7, [0.0] * 7, [0.1] * 6 + [0.2]], jnp.float32)
    advantages = np.asarray(compute_advantages(rewards, kind))
    assert (advantages[:3] == 0.0).all()
    assert np.isfinite(advantages).all() and (advantages[3] != 0.0).all()
    # A group of one has nothing to compare with.
    np.testing.assert_array_equal(compute_advantages(jnp.array([[3.0], [-1.0]]), kind), 0.0)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown advantage 'ppo'"):
        compute_advantages(REWARDS, "ppo")
    with pytest.raises(ValueError, match="unknown aggregation"):
        _loss_by_hand(np.ones((1, 1, 1)), np.ones((1, 1)), aggregation="mean")
    with pytest.raises(ValueError, match="advantage 'ppo'"):
        GRPOConfig(advantage="ppo")
    with pytest.raises(ValueError, match="aggregation"):
        GRPOConfig(aggregation="sum")
    with pytest.raises(ValueError, match="num_generations"):
        GRPOConfig(num_generations=0)
    with pytest.raises(ValueError, match="beta"):
        GRPOConfig(beta=-0.1)


def test_config_defaults_are_region_r1s():
    config = GRPOConfig()
    assert (config.num_generations, config.advantage, config.aggregation) == (
        8,
        "dr_grpo",
        "seq_mean",
    )
    assert (config.eps_low, config.eps_high, config.beta, config.updates_per_batch) == (
        0.2,
        0.2,
        0.1,
        1,
    )


def test_k3_kl():
    # pi = .5, pi_ref = .25: d = ln(.25/.5) = -ln 2; exp(d) - d - 1 = .5 + ln 2 - 1 = .19315.
    np.testing.assert_allclose(kl_k3(jnp.log(0.5), jnp.log(0.25)), 0.5 + math.log(2) - 1, rtol=1e-6)
    logp = jax.random.normal(jax.random.key(1), (1000,)) * 3
    ref = logp + jax.random.normal(jax.random.key(2), (1000,)) * jnp.logspace(-9, 1, 1000)
    assert (kl_k3(logp, ref) >= 0).all()
    np.testing.assert_array_equal(kl_k3(logp, logp), 0.0)


def _loss_by_hand(ratio, advantages, mask=None, ref_logp=None, **kwargs):
    """Loss with old_logp = 0, so that rho = exp(logp) is set directly."""
    logp = jnp.log(jnp.asarray(ratio, jnp.float32))
    mask = jnp.ones(logp.shape, bool) if mask is None else mask
    ref_logp = logp if ref_logp is None else ref_logp
    return clipped_policy_loss(logp, jnp.zeros_like(logp), ref_logp, advantages, mask, **kwargs)


def test_clipped_loss_by_hand():
    # Four one-token actions, beta = 0, eps = .2:
    #   rho 1.5, A +1: min(1.5, 1.2) = 1.2 (clipped)     -> loss -1.2
    #   rho 1.5, A -1: min(-1.5, -1.2) = -1.5             -> loss +1.5
    #   rho 0.5, A +1: min(.5, .8) = .5                   -> loss -0.5
    #   rho 0.5, A -1: min(-.5, -.8) = -.8 (clipped)      -> loss +0.8
    ratio = np.array([[[1.5], [1.5], [0.5], [0.5]]])
    advantages = np.array([[1.0, -1.0, 1.0, -1.0]])
    for aggregation in ("seq_mean", "token_mean", "dr_grpo"):
        loss_sum, count, metrics = _loss_by_hand(
            ratio, advantages, beta=0.0, aggregation=aggregation
        )
        np.testing.assert_allclose(loss_sum, -1.2 + 1.5 - 0.5 + 0.8, rtol=1e-6)
        assert float(count) == 4.0
    np.testing.assert_allclose(metrics["clip_fraction"], 0.5)
    np.testing.assert_allclose(metrics["ratio"], 1.0)
    # DAPO's clip-higher, eps_high = .28: the first action is clipped at 1.28 instead.
    loss_sum, _, _ = _loss_by_hand(ratio[:, :1], advantages[:, :1], beta=0.0, eps_high=0.28)
    np.testing.assert_allclose(loss_sum, -1.28, rtol=1e-6)


def test_kl_penalty_adds_beta_times_k3():
    # rho = 1, A = 2, pi = .5, pi_ref = .25: loss = -(2 - .1 * (.5 + ln 2 - 1)) = -1.98069.
    loss_sum, count, metrics = _loss_by_hand(
        np.ones((1, 1, 1)),
        np.array([[2.0]]),
        ref_logp=jnp.full((1, 1, 1), math.log(0.5)),
        beta=0.1,
    )
    kl = 0.5 + math.log(2) - 1
    np.testing.assert_allclose(loss_sum / count, -(2 - 0.1 * kl), rtol=1e-6)
    np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-6)


def _ragged_case():
    # B = 1, G = 3, T = 3, A = [1, -1, 5], every rho inside the clip range, beta = 0:
    #   sequence 0: rho [1.0, 1.1, 0.9], all present -> token losses [-1.0, -1.1, -0.9]
    #   sequence 1: rho [1.2, ., .], one token       -> token loss  [1.2]
    #   sequence 2: no tokens (NaN where masked)     -> nothing
    nan = math.nan
    ratio = np.array([[[1.0, 1.1, 0.9], [1.2, nan, nan], [nan, nan, nan]]])
    mask = np.array([[[1, 1, 1], [1, 0, 0], [0, 0, 0]]], bool)
    return ratio, np.array([[1.0, -1.0, 5.0]]), mask


@pytest.mark.parametrize(
    "aggregation, expected_sum, expected_count",
    [
        # per-sequence means -1.0 and 1.2 over the 2 sequences that have tokens
        ("seq_mean", -1.0 + 1.2, 2),
        # -3.0 + 1.2 over the 4 tokens
        ("token_mean", -3.0 + 1.2, 4),
        # -3.0 + 1.2 over B * G * T_max = 1 * 3 * 3
        ("dr_grpo", -3.0 + 1.2, 9),
    ],
)
def test_aggregations_by_hand_on_a_ragged_mask(aggregation, expected_sum, expected_count):
    ratio, advantages, mask = _ragged_case()
    loss_sum, count, metrics = _loss_by_hand(
        ratio, advantages, mask, beta=0.0, aggregation=aggregation
    )
    np.testing.assert_allclose(loss_sum, expected_sum, rtol=1e-6)
    assert float(count) == expected_count
    assert all(np.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("aggregation", ["seq_mean", "token_mean", "dr_grpo"])
def test_micro_batch_sums_and_counts_accumulate_to_the_full_batch(aggregation):
    keys = jax.random.split(jax.random.key(3), 4)
    logp = jax.random.normal(keys[0], (6, 4, 5)) * 0.3 - 1.0
    old = logp + jax.random.normal(keys[1], logp.shape) * 0.3
    advantages = jax.random.normal(keys[2], (6, 4))
    mask = jnp.arange(5) < jax.random.randint(keys[3], (6, 4, 1), 0, 6)
    loss = partial(clipped_policy_loss, aggregation=aggregation)

    def grad_sum_count(rows):
        def total(lp):
            loss_sum, count, _ = loss(lp, old[rows], old[rows] - 0.2, advantages[rows], mask[rows])
            return loss_sum, count

        (loss_sum, count), vjp = jax.vjp(total, logp[rows])
        return loss_sum, count, vjp((jnp.float32(1), jnp.float32(0)))[0]

    full_sum, full_count, full_grad = grad_sum_count(slice(0, 6))
    parts = [grad_sum_count(slice(0, 2)), grad_sum_count(slice(2, 6))]
    np.testing.assert_allclose(
        sum(p[0] for p in parts) / sum(p[1] for p in parts), full_sum / full_count, rtol=1e-5
    )
    np.testing.assert_allclose(
        jnp.concatenate([p[2] for p in parts]) / sum(p[1] for p in parts),
        full_grad / full_count,
        rtol=1e-5,
        atol=1e-7,
    )


def test_gradient_at_rho_1_is_the_policy_gradient():
    # Toy policy: logits theta [B, G, T, V]; action a_t; logp = log_softmax(theta)[a_t].
    # With old = stop_gradient(logp) (one update per batch) rho = 1 and, for token_mean over n
    # tokens, d loss / d theta = sum_t (-A + beta * (1 - exp(ref - logp))) * (onehot(a) - p) / n:
    # the surrogate gives -A * grad(logp) and d k3 / d logp = 1 - exp(ref - logp).
    b, g, t, v, beta = 2, 3, 4, 5, 0.1
    keys = jax.random.split(jax.random.key(4), 5)
    theta = jax.random.normal(keys[0], (b, g, t, v))
    actions = jax.random.randint(keys[1], (b, g, t), 0, v)
    advantages = jax.random.normal(keys[2], (b, g))
    ref_logp = jax.random.normal(keys[3], (b, g, t)) * 0.2 - 1.6
    mask = jax.random.uniform(keys[4], (b, g, t)) < 0.7

    def logp_of(params):
        logp = jax.nn.log_softmax(params, axis=-1)
        return jnp.take_along_axis(logp, actions[..., None], axis=-1)[..., 0]

    def loss(params):
        logp = logp_of(params)
        loss_sum, count, metrics = clipped_policy_loss(
            logp,
            jax.lax.stop_gradient(logp),
            ref_logp,
            advantages,
            mask,
            beta=beta,
            aggregation="token_mean",
        )
        return loss_sum / count, metrics

    grad, metrics = jax.grad(loss, has_aux=True)(theta)
    np.testing.assert_allclose(metrics["ratio"], 1.0)
    assert float(metrics["clip_fraction"]) == 0.0

    logp = np.asarray(logp_of(theta), np.float64)
    probs = np.asarray(jax.nn.softmax(theta, axis=-1), np.float64)
    grad_logp = np.eye(v)[np.asarray(actions)] - probs  # d logp_t / d theta_t
    coefficient = -np.asarray(advantages)[..., None] + beta * (1 - np.exp(ref_logp - logp))
    n = np.asarray(mask).sum()
    expected = (coefficient * np.asarray(mask))[..., None] * grad_logp / n
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


def test_masked_nan_entries_do_not_reach_the_gradient():
    ratio, advantages, mask = _ragged_case()
    logp = jnp.log(jnp.asarray(ratio, jnp.float32))

    def loss(lp):
        loss_sum, count, _ = clipped_policy_loss(lp, jnp.zeros_like(lp), lp, advantages, mask)
        return loss_sum / count

    grad = jax.grad(loss)(logp)
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)


def test_sharded_equals_unsharded():
    mesh = make_mesh()
    b, g, t = 16, 4, 5
    keys = jax.random.split(jax.random.key(5), 5)
    rewards = jax.random.normal(keys[0], (b, g))
    logp = jax.random.normal(keys[1], (b, g, t)) * 0.3 - 1.0
    old = logp + jax.random.normal(keys[2], logp.shape) * 0.3
    ref = logp + jax.random.normal(keys[3], logp.shape) * 0.3
    mask = jnp.arange(t) < jax.random.randint(keys[4], (b, g, 1), 0, t + 1)

    def step(rewards, logp, old, ref, mask):
        out = {}
        for kind in ADVANTAGES:
            advantages = compute_advantages(rewards, kind)
            for aggregation in ("seq_mean", "token_mean", "dr_grpo"):
                loss_sum, count, metrics = clipped_policy_loss(
                    logp, old, ref, advantages, mask, aggregation=aggregation
                )
                out[kind, aggregation] = (advantages, loss_sum / count, metrics)
        return out

    inputs = (rewards, logp, old, ref, mask)
    expected = jax.jit(step)(*inputs)
    sharded = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in inputs]
    result = jax.jit(step)(*sharded)
    assert len(result[("grpo", "seq_mean")][0].sharding.device_set) == 8
    jax.tree.map(partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), result, expected)
