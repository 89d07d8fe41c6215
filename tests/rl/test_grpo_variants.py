"""GSPO's sequence ratio, DAPO's dynamic sampling with static shapes, and per-term reward logs,
each against numbers worked by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrank.elva.reward import ELVARewardConfig, elva_reward, elva_reward_terms
from jaxrank.rl.grpo import GRPOConfig, clipped_policy_loss, reward_term_means

# One group of two sequences, two tokens each; old log-probs are 0, so logp is the log-ratio.
LOG_RATIO = jnp.array([[[0.1, 0.3], [0.0, -0.1]]])
ADVANTAGES = jnp.array([[1.0, -1.0]])
MASK = jnp.ones((1, 2, 2), bool)


def _loss(logp, importance, mask=MASK, advantages=ADVANTAGES, **options):
    zeros = jnp.zeros_like(logp)
    options = {"beta": 0.0, **options}
    return clipped_policy_loss(
        logp, zeros, zeros, advantages, mask, importance=importance, **options
    )


def test_sequence_ratio_clips_whole_sequences():
    # Sequence 0: s = exp(mean(0.1, 0.3)) = exp(0.2) = 1.2214 > 1.2, so with A = 1 the clipped
    # term 1.2 binds on both tokens; sequence 1: s = exp(-0.05) = 0.9512, A = -1, unclipped.
    loss_sum, count, logged = _loss(LOG_RATIO, "sequence")
    assert float(count) == 2.0
    np.testing.assert_allclose(float(loss_sum), -1.2 + math.exp(-0.05), rtol=1e-6)
    np.testing.assert_allclose(float(logged["clip_fraction"]), 0.5, rtol=1e-6)


def test_token_ratio_clips_single_tokens():
    # Sequence 0's tokens: min(e^0.1, 1.2) = 1.10517 and min(e^0.3, 1.2) = 1.2; sequence 1's:
    # -(-1) and -(-e^-0.1); per-sequence token means, summed.
    loss_sum, _, _ = _loss(LOG_RATIO, "token")
    expected = -(math.exp(0.1) + 1.2) / 2 + (1 + math.exp(-0.1)) / 2
    np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-6)


def test_sequence_ratio_gradient_is_spread_over_the_tokens():
    # Unclipped sequence 1: its loss is -A * s = s with s = exp(mean_t logp_t), so each of its
    # two tokens gets ds/dlogp_t = s / 2; clipped sequence 0 gets no gradient.
    grad = jax.grad(lambda lp: _loss(lp, "sequence")[0])(LOG_RATIO)
    s = math.exp(-0.05)
    np.testing.assert_allclose(np.asarray(grad[0]), [[0.0, 0.0], [s / 2, s / 2]], atol=1e-6)


def test_sequence_ratio_ignores_masked_tokens():
    # Sequence 1's second token masked (and set to NaN): s = exp(0.0) = 1.
    logp = LOG_RATIO.at[0, 1, 1].set(jnp.nan)
    mask = MASK.at[0, 1, 1].set(False)
    loss_sum, _, _ = _loss(logp, "sequence", mask=mask)
    np.testing.assert_allclose(float(loss_sum), -1.2 + 1.0, rtol=1e-6)


def test_constant_groups_leave_the_loss_and_are_counted():
    # Group 0 varies, group 1 (all advantages 0) does not; with a KL term group 1 would still
    # add its KL and its two sequences to the denominator.
    logp = jnp.array([[[0.1, 0.2], [-0.3, 0.0]], [[0.5, -0.5], [0.2, 0.1]]])
    ref = jnp.array([[[0.0, 0.1], [0.0, 0.2]], [[0.1, 0.0], [0.3, -0.2]]])
    advantages = jnp.array([[0.5, -0.5], [0.0, 0.0]])
    mask = jnp.ones(logp.shape, bool)

    def run(lp, rf, adv, m, skip):
        return clipped_policy_loss(
            lp, lp, rf, adv, m, beta=0.1, aggregation="token_mean", skip_constant_groups=skip
        )

    skipped = run(logp, ref, advantages, mask, True)
    alone = run(logp[:1], ref[:1], advantages[:1], mask[:1], False)  # group 0 on its own
    np.testing.assert_allclose(float(skipped[0]), float(alone[0]), rtol=1e-6)
    assert float(skipped[1]) == float(alone[1]) == 4.0
    assert float(skipped[2]["constant_groups"]) == 1.0
    kept = run(logp, ref, advantages, mask, False)
    assert float(kept[1]) == 8.0 and float(kept[0]) != pytest.approx(float(alone[0]))


def test_config_passes_its_loss_options_and_refuses_unknown_ratios():
    options = GRPOConfig(importance="sequence", skip_constant_groups=True).loss_options()
    assert options["importance"] == "sequence" and options["skip_constant_groups"] is True
    with pytest.raises(ValueError, match="importance"):
        GRPOConfig(importance="segment")


def test_reward_term_means_respect_where():
    terms = {"a": jnp.array([[1.0, 3.0], [5.0, 7.0]])}
    assert float(reward_term_means(terms)["reward/a"]) == 4.0
    where = jnp.array([[True, False], [True, False]])
    assert float(reward_term_means(terms, where)["reward/a"]) == 3.0
    assert float(reward_term_means(terms, jnp.zeros((2, 2), bool))["reward/a"]) == 0.0


def test_elva_terms_weigh_into_the_reward():
    # s_pos 0.8 against negatives 0.5 and 0.9: margin max(0, 0.8 - 0.9) = 0; the positive ranks
    # 2nd, so the printed ranking is
    # 0.8 / (1 + ln 2) - 0.01 * (0.9 * (ln 1 - 1) + 0.5 * (ln 3 - 1)).
    config = ELVARewardConfig(alpha=0.4, eps=0.6, delta=0.0, gamma=0.01)
    positive, negatives = jnp.array(0.8), jnp.array([0.5, 0.9])
    terms = elva_reward_terms(positive, negatives, config)
    ranking = 0.8 / (1 + math.log(2)) - 0.01 * (0.9 * -1.0 + 0.5 * (math.log(3) - 1))
    np.testing.assert_allclose(float(terms["margin"]), 0.0)
    np.testing.assert_allclose(float(terms["ranking"]), ranking, rtol=1e-6)
    np.testing.assert_allclose(
        float(elva_reward(positive, negatives, config)), 0.6 * ranking, rtol=1e-6
    )
