"""Labelled images for RAR's recognition protocols, and the offline set the demonstration
runs on: scikit-learn's handwritten digits (1,797 real 8 x 8 scans of 10 classes, shipped with
the package), upsampled to the square the models take.

A dataset is split once, by a fixed seed, into three disjoint parts: the ranker's fine-tuning
pool (the paper fine-tunes on a separate dataset; here it is a separate part of the same one),
the pool the few-shot memories are drawn from, and the test queries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import PIL.Image

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclasses.dataclass(frozen=True)
class LabelledImages:
    images: np.ndarray  # uint8 [N, S, S, 3]
    labels: np.ndarray  # int64 [N]
    names: tuple[str, ...]  # class names by label

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> LabelledImages:
        return LabelledImages(self.images[rows], self.labels[rows], self.names)

    def names_of(self, classes: Sequence[int]) -> list[str]:
        return [self.names[c] for c in classes]


def digits(size: int) -> LabelledImages:
    """scikit-learn's digits as uint8 RGB squares of ``size`` (bicubic from 8 x 8; ink is
    dark on light, as in the scans' 0-16 grey levels inverted)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    grey = np.round(255 - data.images * (255 / 16)).astype(np.uint8)
    images = np.stack(
        [np.asarray(PIL.Image.fromarray(g).resize((size, size), PIL.Image.BICUBIC)) for g in grey]
    )
    return LabelledImages(
        np.repeat(images[..., None], 3, axis=-1), data.target.astype(np.int64), DIGIT_NAMES
    )


def partition(
    data: LabelledImages, fractions: tuple[float, float], seed: int
) -> tuple[LabelledImages, LabelledImages, LabelledImages]:
    """(ranker pool, shot pool, test) of ``data``: the first two take ``fractions`` of the rows
    of every class, the test the rest, drawn per class by ``seed``."""
    if min(fractions) <= 0 or sum(fractions) >= 1:
        raise ValueError(f"fractions must be positive and sum below 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(data.labels):
        rows = rng.permutation(np.flatnonzero(data.labels == c))
        first = round(fractions[0] * len(rows))
        second = first + round(fractions[1] * len(rows))
        for part, chunk in zip(parts, np.split(rows, [first, second]), strict=True):
            part.append(chunk)
    return tuple(data.take(np.sort(np.concatenate(p))) for p in parts)
