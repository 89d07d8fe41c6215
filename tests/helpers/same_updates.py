"""Comparing two runs of one RL step (sharded vs one device) by their updates."""

import jax
import numpy as np


def assert_same_updates(initial, a, b) -> None:
    """Updates ``a - initial`` and ``b - initial`` agree to 0.1% of the largest one. A
    score-function gradient is many times its inputs (~1/scale^2 for a Gaussian), so float32
    rounding shows in the weights, and leaves the loss hardly touches (updates ~1e-9) differ by
    rounding alone; relative to the largest update both are far below the tolerance."""
    leaves = list(zip(*map(jax.tree.leaves, (initial, a, b)), strict=True))
    largest = max(np.abs(y - start).max() for start, _, y in leaves)
    assert largest > 1e-3, "the step did not move the parameters"
    for start, x, y in leaves:
        np.testing.assert_allclose(x - start, y - start, rtol=1e-3, atol=1e-3 * largest)
