"""Decision sampling: balanced groups, the forced mask, and frequencies on fixed keys."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrank.rl import sample_balanced_decisions, sample_decisions, slots_to_flip

# Queries from "always FULL" to "always REGION", and one even.
LOGITS = jnp.array([[12.0, -12.0], [2.0, 0.0], [0.0, 0.0], [-1.0, 1.0], [-12.0, 12.0]])
balanced = jax.jit(sample_balanced_decisions, static_argnames="num_generations")


def _over_keys(num_keys, logits, num_generations):
    keys = jax.random.split(jax.random.key(0), num_keys)
    sample = jax.vmap(partial(balanced, logits=logits, num_generations=num_generations))
    return sample(keys)


@pytest.mark.parametrize("num_generations", [2, 4, 8])
def test_every_group_holds_both_decisions(num_generations):
    decisions, forced = _over_keys(200, LOGITS, num_generations)
    assert decisions.shape == forced.shape == (200, len(LOGITS), num_generations)
    assert decisions.dtype == jnp.int32 and forced.dtype == jnp.bool_
    assert ((decisions == 0).any(-1) & (decisions == 1).any(-1)).all()
    # Near-deterministic policies are forced in (almost) every group, exactly one slot each.
    np.testing.assert_array_equal(forced[:, [0, -1]].sum(-1), 1)


def test_forced_mask_marks_exactly_the_flipped_slots():
    key = jax.random.key(1)
    decisions, forced = balanced(key, LOGITS, num_generations=4)
    draws = sample_decisions(jax.random.split(key)[0], LOGITS, 4)
    one_sided = (draws == draws[:, :1]).all(-1)
    np.testing.assert_array_equal(forced, (decisions != draws))
    np.testing.assert_array_equal(forced.sum(-1), one_sided.astype(int))


def test_forced_slot_is_uniform_over_the_group():
    _, forced = _over_keys(2000, LOGITS[:1], 4)  # always forced
    counts = np.asarray(forced[:, 0].sum(0))
    # Binomial(2000, 1/4) per slot: mean 500, sd 19.4; +-100 is over 5 sd.
    assert counts.sum() == 2000 and (np.abs(counts - 500) < 100).all()


@pytest.mark.parametrize("g", [2, 4])
def test_frequencies_match_the_policy_on_fixed_keys(g):
    # Fixed keys make the test deterministic; the bounds are 6 binomial sd, so it is also not a
    # lucky seed. Queries: P(REGION) = .119, .5, .881.
    decisions, forced = (np.asarray(x) for x in _over_keys(20000, LOGITS[1:4], g))
    p = np.asarray(jax.nn.softmax(LOGITS[1:4])[:, 1], np.float64)

    def within_6_sd(frequency, expected, n):
        sd = np.sqrt(expected * (1 - expected) / n)
        assert (np.abs(frequency - expected) < 6 * sd).all(), (frequency, expected, sd)

    draws = np.where(forced, 1 - decisions, decisions)  # undo the forcing: i.i.d. from pi
    within_6_sd(draws.mean(axis=(0, 2)), p, draws[:, 0].size)
    # The unforced slots lean towards the minority decision: a slot is forced with probability
    # (p^G + (1 - p)^G) / G and it then held the majority value, so
    # P(REGION | unforced) = (p - p^G / G) / (1 - (p^G + (1 - p)^G) / G).
    unforced = (p - p**g / g) / (1 - (p**g + (1 - p) ** g) / g)
    kept = ~forced
    n_kept = kept.sum(axis=(0, 2))
    within_6_sd((decisions * kept).sum(axis=(0, 2)) / n_kept, unforced, n_kept)
    if g == 2:  # there the lean is large: .185 instead of .119, about 25 sd
        assert np.abs(unforced - p)[0] > 0.06


def test_unbalanced_sampling_frequencies_and_determinism():
    keys = jax.random.split(jax.random.key(2), 4000)
    sample = jax.jit(jax.vmap(partial(sample_decisions, logits=LOGITS, num_generations=4)))
    decisions = sample(keys)
    p = np.asarray(jax.nn.softmax(LOGITS)[:, 1])
    np.testing.assert_allclose(decisions.mean(axis=(0, 2)), p, atol=0.024)
    np.testing.assert_array_equal(sample(keys), decisions)
    # The extreme queries never produce their minority decision without balancing.
    assert (decisions[:, 0] == 0).all() and (decisions[:, -1] == 1).all()


def test_single_generation_cannot_be_balanced():
    decisions, forced = balanced(jax.random.key(3), LOGITS, num_generations=1)
    assert decisions.shape == (len(LOGITS), 1) and not forced.any()


def test_extra_leading_dims_and_bad_logits():
    decisions, forced = balanced(jax.random.key(4), LOGITS.reshape(1, 5, 2), num_generations=3)
    assert decisions.shape == forced.shape == (1, 5, 3)
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        sample_decisions(jax.random.key(0), jnp.zeros((4, 3)), 2)


def test_slots_to_flip_one_per_one_sided_group():
    decisions = jnp.asarray([[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0], [1, 0, 1, 1]])
    flip = np.asarray(slots_to_flip(jax.random.key(0), decisions))
    np.testing.assert_array_equal(flip.sum(axis=1), [1, 1, 0, 0])
    assert not slots_to_flip(jax.random.key(0), decisions[:, :1]).any()  # G = 1
