"""RAR's ranking fine-tuning data (PAPERS.md §3): examples that teach an MLLM to put the true
class first among k retrieved ones.

The training set is split into disjoint halves D_a (the memory) and D_b (the queries). For each
image of D_b, its ``neighbours`` nearest rows in D_a give the candidate classes. Each of
``sets_per_image`` sets holds the true class plus k - 1 other classes, drawn from the
neighbours' classes (padded with random classes when the neighbours name too few). The prompt
lists the set shuffled. The target lists the true class first, then the others by their score
(each class's best neighbour; classes that only padded the set come last, in the drawn order).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrank.rar.class_memory import ClassMemory


def split_halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint index sets D_a, D_b (sorted) covering ``range(n)``, sizes n // 2 and the rest."""
    order = rng.permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


@dataclasses.dataclass(frozen=True)
class RankingExample:
    query: int  # row of the query set (D_b)
    shown: tuple[int, ...]  # class ids in prompt order (shuffled)
    target: tuple[int, ...]  # the same ids, true class first, then by score


def ranking_examples(
    memory: ClassMemory,
    queries: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
    *,
    k: int = 5,
    neighbours: int = 20,
    sets_per_image: int = 16,
) -> list[RankingExample]:
    """``sets_per_image`` examples per query row of ``queries [Q, D]`` (true classes
    ``labels [Q]``), candidates from ``memory`` (built on D_a)."""
    if not 2 <= k <= num_classes:
        raise ValueError(f"k must be in [2, num_classes={num_classes}], got {k}")
    classes, scores = memory.top_classes(queries, k=num_classes, depth=neighbours)
    examples = []
    for row, truth in enumerate(np.asarray(labels).tolist()):
        pairs = zip(classes[row].tolist(), scores[row].tolist(), strict=True)
        score = {c: s for c, s in pairs if c >= 0}
        others = [c for c in score if c != truth]
        for _ in range(sets_per_image):
            chosen = list(rng.permutation(others)[: k - 1])
            if len(chosen) < k - 1:  # the neighbours name too few classes
                pool = np.setdiff1d(np.arange(num_classes), [truth, *chosen])
                chosen += list(rng.choice(pool, k - 1 - len(chosen), replace=False))
            chosen = [int(c) for c in chosen]
            ranked = sorted(chosen, key=lambda c: -score.get(c, -np.inf))  # stable: drawn order
            shown = tuple(int(c) for c in rng.permutation([truth, *chosen]))
            examples.append(RankingExample(row, shown, (truth, *ranked)))
    return examples
