"""RAR's class memory against numpy: each class scores its best row, classes ranked by that
score, search depth respected; the memory streamed through an encoder equals the one built
from an array; template ensembling equals the formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrank.rar.class_memory import ClassMemory, class_text_embeddings
from jaxrank.search import Index
from jaxrank.search.errors import SearchError


def _data(seed=0, rows=60, classes=7, dim=16, queries=5):
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(rows, dim)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    return embeddings, labels, rng.normal(size=(queries, dim)).astype(np.float32)


def _numpy_top_classes(embeddings, labels, queries, k, depth):
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    scores = queries / np.linalg.norm(queries, axis=1, keepdims=True) @ unit.T
    classes, best = [], []
    for row in scores:
        nearest = np.argsort(-row)[:depth]
        per_class = {}
        for i in nearest:
            per_class.setdefault(int(labels[i]), float(row[i]))
        ranked = sorted(per_class.items(), key=lambda item: -item[1])[:k]
        classes.append([c for c, _ in ranked] + [-1] * (k - len(ranked)))
        best.append([s for _, s in ranked] + [-np.inf] * (k - len(ranked)))
    return np.array(classes), np.array(best)


@pytest.mark.parametrize("depth", [None, 4])
def test_top_classes_equal_numpy(depth):
    embeddings, labels, queries = _data()
    memory = ClassMemory.from_embeddings(embeddings, labels)
    classes, scores = memory.top_classes(queries, k=5, depth=depth)
    want_classes, want_scores = _numpy_top_classes(
        embeddings, labels, queries, 5, depth or len(labels)
    )
    np.testing.assert_array_equal(classes, want_classes)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    if depth == 4:
        assert (classes == -1).any()  # four rows cannot name five classes


def test_streamed_memory_equals_the_array_one():
    embeddings, labels, queries = _data(seed=1)
    weights = jnp.asarray(np.random.default_rng(2).normal(size=(16, 12)), jnp.float32)
    encode = jax.jit(lambda batch: batch["x"] @ weights)
    batches = ({"x": embeddings[i : i + 16], "label": labels[i : i + 16]} for i in range(0, 60, 16))
    streamed = ClassMemory.from_encoder(encode, batches)
    whole = ClassMemory.from_embeddings(np.asarray(embeddings @ weights), labels)
    got, want = (m.top_classes(np.asarray(queries @ weights), k=3) for m in (streamed, whole))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)
    with pytest.raises(SearchError, match="cosine"):
        ClassMemory(Index.from_array(embeddings, metric="ip"))


def test_template_ensemble_is_the_renormalised_mean_of_unit_embeddings():
    rng = np.random.default_rng(3)
    names, templates = ["cat", "dog"], ["a photo of a {}.", "a drawing of a {}."]
    table = {
        t.format(n): rng.normal(size=8) * (1 + i)
        for i, (t, n) in enumerate((t, n) for t in templates for n in names)
    }
    encode = lambda texts: np.stack([table[t] for t in texts])
    got = class_text_embeddings(encode, names, templates)
    for c, name in enumerate(names):
        units = [table[t.format(name)] / np.linalg.norm(table[t.format(name)]) for t in templates]
        mean = np.mean(units, axis=0)
        np.testing.assert_allclose(got[c], mean / np.linalg.norm(mean), atol=1e-12)
    with pytest.raises(ValueError, match="one '\\{\\}'"):
        class_text_embeddings(encode, names, ["no slot"])
