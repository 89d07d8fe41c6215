"""Resumable shuffled batches: over rows of in-memory arrays (pre-rendered queries, pools), or
over any random-access source of examples with a per-example transform (decoding image files).

Either way each epoch is reshuffled from the seed, each JAX process reads its own slice of
every global batch, and the iterator's ``get_state``/``set_state`` (saved in the trainer's
checkpoints) resume it exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np


class _Rows:
    """Row ``i`` of every array, as a dict: a random-access source for grain."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        lengths = {name: len(a) for name, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays must have one length, got {lengths}")
        self._arrays = dict(arrays)
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {name: a[i] for name, a in self._arrays.items()}


def source_batches(
    source: Sequence[Any],
    batch_size: int,
    seed: int,
    transform: Callable[[Any], dict[str, Any]] | None = None,
    threads: int = 1,
) -> grain.IterDataset:
    """Endless epochs of global batches of ``batch_size`` examples of ``source``, each passed
    through ``transform`` (in ``threads`` reader threads) and stacked."""
    if batch_size % jax.process_count():
        raise ValueError(f"batch_size={batch_size} must split over {jax.process_count()} processes")
    per_process = batch_size // jax.process_count()
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    ds = ds[jax.process_index() :: jax.process_count()]
    if transform is not None:
        ds = ds.map(transform)
    ds = ds.batch(per_process, drop_remainder=True)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4))


def array_batches(
    arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, threads: int = 1
) -> grain.IterDataset:
    """``source_batches`` over the rows of ``arrays`` (one length)."""
    return source_batches(_Rows(arrays), batch_size, seed, threads=threads)
