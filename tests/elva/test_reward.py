"""ELVA's rewards (PAPERS.md §2) on hand-worked pools and against a plain-Python reference."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrank.elva.reward import ELVARewardConfig, elva_reward, margin_reward, ranking_reward


def _reference(pos: float, negs: list[float], gamma: float, ranking: str) -> float:
    """Sort the pool (the positive first among ties), then apply the printed formula."""
    pool = sorted(
        [(pos, 0)] + [(s, i + 1) for i, s in enumerate(negs)], key=lambda t: (-t[0], t[1])
    )
    total = 0.0
    for k, (s, who) in enumerate(pool, start=1):
        if who == 0:
            total += s / (1 + math.log(k))
        elif ranking == "printed":
            total -= gamma * s * (math.log(k) - 1)
        else:
            total -= gamma * s / (1 + math.log(k))
    return total


def test_margin_hand_worked():
    negs = jnp.asarray([[0.2, 0.5, 0.1], [0.9, 0.3, 0.1]])
    got = margin_reward(jnp.asarray([0.8, 0.8]), negs, delta=0.1)
    np.testing.assert_allclose(got, [0.8 - 0.5 - 0.1, 0.0], atol=1e-6)  # second: a negative wins


def test_ranking_hand_worked_positive_first():
    # Ranks: positive 1 (0.9), negatives 0.5 -> 2, 0.2 -> 3.
    got = ranking_reward(jnp.asarray(0.9), jnp.asarray([0.2, 0.5]), gamma=0.1)
    want = 0.9 / 1.0 - 0.1 * (0.5 * (math.log(2) - 1) + 0.2 * (math.log(3) - 1))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # As printed, the rank-2 negative (ln 2 - 1 < 0) adds to the reward; discounted, it costs.
    discounted = ranking_reward(jnp.asarray(0.9), jnp.asarray([0.2, 0.5]), 0.1, "discounted")
    want = 0.9 - 0.1 * (0.5 / (1 + math.log(2)) + 0.2 / (1 + math.log(3)))
    np.testing.assert_allclose(discounted, want, rtol=1e-6)
    assert float(got) > 0.9 > float(discounted)


def test_ranking_positive_not_first_and_ties():
    # The positive ties the best negative: it ranks first (it is placed first in the pool).
    tie = ranking_reward(jnp.asarray(0.5), jnp.asarray([0.5, 0.1]), gamma=0.0)
    np.testing.assert_allclose(tie, 0.5, rtol=1e-6)
    below = ranking_reward(jnp.asarray(0.4), jnp.asarray([0.5, 0.9, 0.1]), gamma=0.0)
    np.testing.assert_allclose(below, 0.4 / (1 + math.log(3)), rtol=1e-6)


@pytest.mark.parametrize("ranking", ["printed", "discounted"])
def test_batch_under_jit_matches_the_reference(ranking):
    rng = np.random.default_rng(0)
    pos = rng.uniform(-1, 1, (4, 8)).astype(np.float32)  # [B, G] rollouts
    negs = rng.uniform(-1, 1, (4, 8, 100)).astype(np.float32)  # 50 hard + 50 random
    negs[0, 0, :3] = pos[0, 0]  # ties with the positive
    config = ELVARewardConfig(delta=0.05, gamma=0.01, ranking=ranking)
    got = jax.jit(elva_reward, static_argnums=2)(pos, negs, config)
    for b, g in np.ndindex(4, 8):
        margin = max(0.0, pos[b, g] - negs[b, g].max() - 0.05)
        rank = _reference(float(pos[b, g]), negs[b, g].tolist(), 0.01, ranking)
        np.testing.assert_allclose(got[b, g], 0.4 * margin + 0.6 * rank, rtol=1e-4, atol=1e-5)


def test_unknown_ranking_form_is_refused():
    with pytest.raises(ValueError, match="ranking='inverted'"):
        ELVARewardConfig(ranking="inverted")
