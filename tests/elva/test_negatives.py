"""ELVA's negative mining against a numpy reference: the filtered hard negatives are exactly the
top-scoring non-positive candidates at or under the threshold; the random ones avoid the
positive and the hard ones, never repeat, and follow the generator's seed."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxrank.elva.negatives import NegativeMining, mine_negatives
from jaxrank.parallel import make_mesh
from jaxrank.search import Index, SearchError


def _data():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 16)).astype(np.float32)
    queries = base[:6] + 0.1 * rng.normal(size=(6, 16)).astype(np.float32)
    return base, queries, np.arange(6) + 1000  # positives = ids 1000..1005 = rows 0..5


def test_hard_negatives_equal_numpy_and_random_ones_are_disjoint():
    base, queries, positives = _data()
    mesh = make_mesh(data=4, devices=jax.devices()[:4])  # the sharded search
    index = Index.from_array(base, np.arange(200) + 1000, metric="cosine", mesh=mesh)
    mining = NegativeMining(n_hard=5, n_random=7, threshold=0.3, depth=100)
    out = mine_negatives(index, queries, positives, mining, np.random.default_rng(1))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    scores = unit(queries) @ unit(base).T
    for row in range(6):
        order = np.argsort(-scores[row], kind="stable")
        expected = [i + 1000 for i in order if i != row and scores[row, i] <= 0.3][:5]
        assert len(expected) == 5 and expected[0] != order[0] + 1000
        np.testing.assert_array_equal(out[row, :5], expected)
        random = out[row, 5:]
        assert len(set(random.tolist())) == 7 and (random >= 1000).all()
        assert not {*random.tolist()} & {positives[row], *out[row, :5].tolist()}
    again = mine_negatives(index, queries, positives, mining, np.random.default_rng(1))
    np.testing.assert_array_equal(out, again)


def test_too_few_candidates_pad_and_l2_is_refused():
    base, queries, positives = _data()
    index = Index.from_array(base[:8], np.arange(8) + 1000, metric="ip")
    mining = NegativeMining(n_hard=4, n_random=6, threshold=1e9)
    out = mine_negatives(index, queries[:1], positives[:1], mining, np.random.default_rng(0))
    assert (out[0, :4] >= 0).all() and (out[0, 4:7] >= 0).all() and (out[0, 7:] == -1).all()
    with pytest.raises(SearchError, match="similarity"):
        l2 = Index.from_array(base, metric="l2")
        mine_negatives(l2, queries, positives, mining, np.random.default_rng(0))
