"""Resumable shuffled batches over rows of in-memory arrays (pre-rendered queries, pools)."""

from __future__ import annotations

from collections.abc import Mapping

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


def array_batches(
    arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, threads: int = 1
) -> grain.IterDataset:
    """Endless epochs, reshuffled each epoch, of global batches of ``batch_size`` rows; each
    process reads its own slice. The iterator's ``get_state``/``set_state`` resume it exactly."""
    per_process = batch_size // jax.process_count()
    ds = grain.MapDataset.source(_Rows(arrays)).shuffle(seed=seed).repeat(None)
    ds = ds[jax.process_index() :: jax.process_count()]
    ds = ds.batch(per_process, drop_remainder=True)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4))
