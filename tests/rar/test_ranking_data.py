"""RAR's ranking fine-tuning data against numpy: disjoint halves; every example holds the true
class and k - 1 others from the query's nearest rows (padded when they name too few), shown
shuffled, with a target that puts the truth first and the others by their best row's score."""

import numpy as np
import pytest

from jaxrank.rar.class_memory import ClassMemory
from jaxrank.rar.ranking_data import ranking_examples, split_halves

CLASSES = 6


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(40, 8)).astype(np.float32)
    labels = rng.integers(0, CLASSES, 40)
    a, b = split_halves(40, rng)
    memory = ClassMemory.from_embeddings(embeddings[a], labels[a])
    return embeddings, labels, a, b, memory


def _neighbour_scores(embeddings, labels, a, query, depth):
    """Each class's best score among the query's ``depth`` nearest rows of D_a (numpy)."""
    unit = embeddings[a] / np.linalg.norm(embeddings[a], axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    best = {}
    for i in np.argsort(-scores)[:depth]:
        best.setdefault(int(labels[a][i]), float(scores[i]))
    return best


def test_halves_are_disjoint_and_cover():
    a, b = split_halves(41, np.random.default_rng(0))
    assert len(a) == 20 and len(b) == 21
    assert not set(a) & set(b) and set(a) | set(b) == set(range(41))


@pytest.mark.parametrize("depth", [8, 1])  # 1: the neighbours name one class, sets are padded
def test_examples_hold_the_truth_and_rank_the_rest_by_score(depth):
    embeddings, labels, a, b, memory = _setup()
    examples = ranking_examples(
        memory,
        embeddings[b],
        labels[b],
        CLASSES,
        np.random.default_rng(1),
        k=4,
        neighbours=depth,
        sets_per_image=3,
    )
    assert len(examples) == 3 * len(b)
    shuffled = 0
    for ex in examples:
        truth = int(labels[b][ex.query])
        assert ex.target[0] == truth and sorted(ex.shown) == sorted(ex.target)
        assert len(set(ex.shown)) == 4
        shuffled += ex.shown != ex.target
        best = _neighbour_scores(embeddings, labels, a, embeddings[b][ex.query], depth)
        others = [c for c in best if c != truth]
        named = [c for c in ex.target[1:] if c in best]
        padded = [c for c in ex.target[1:] if c not in best]
        assert named == sorted(named, key=lambda c: -best[c])  # by score
        assert ex.target[1:] == (*named, *padded)  # padding last
        assert len(named) == min(3, len(others))  # neighbours' classes are used first
    assert shuffled > len(examples) // 2
    again = ranking_examples(
        memory, embeddings[b], labels[b], CLASSES, np.random.default_rng(1), k=4,
        neighbours=depth, sets_per_image=3,
    )  # fmt: skip
    assert again == examples
    with pytest.raises(ValueError, match="k must be"):
        ranking_examples(memory, embeddings[b], labels[b], CLASSES, np.random.default_rng(1), k=9)
