"""What RAR's protocols read: the ranker's fine-tuning pool, the labelled shots of each shot
count, and the test queries.

- ``digits`` (offline): scikit-learn's digits split once by ``data.split_seed`` into the three
  parts (``labelled_images.partition``); shots are drawn from the middle part.
- ``tfds``: a few-shot dataset read by name through tensorflow-datasets (array_record, no
  TensorFlow; ``data/fewshot_tfds.py``): shots drawn from its train split (only the drawn
  images are decoded), the test split as queries, and the ranker's pool from another dataset
  (``data.finetune_name``), as the paper fine-tunes on FGVC-Aircraft and tests elsewhere.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from jaxrank.configs import ConfigError
from jaxrank.data import fewshot_tfds
from jaxrank.data.labelled_images import LabelledImages, digits, partition


@dataclasses.dataclass(frozen=True)
class RARData:
    ranker_pool: LabelledImages
    shots: dict[int, LabelledImages]  # shot count -> its memory's images
    test: LabelledImages


def _tfds_part(name: str, split: str, data_dir: str | None, size: int, rows=None):
    source = fewshot_tfds.load_split(name, split, data_dir)
    names = tuple(fewshot_tfds.class_names(source))
    images, labels = fewshot_tfds.read_arrays(source, size, rows)
    return LabelledImages(images, labels, names)


def _tfds(cfg: ml_collections.ConfigDict) -> RARData:
    data = cfg.data
    entry = fewshot_tfds.FEWSHOT_DATASETS.get(data.name)
    train = data.train_split or (entry.train_split if entry else "train")
    test = data.test_split or (entry.test_split if entry else "test")
    data_dir = data.data_dir or None
    size = data.image_size
    labels = fewshot_tfds.split_labels(
        fewshot_tfds.load_split(data.name, train, data_dir, decode_images=False)
    )
    shots = {}
    for count in cfg.eval.shots:
        rows = fewshot_tfds.sample_shots(labels, count, cfg.seed)
        shots[count] = _tfds_part(data.name, train, data_dir, size, rows)
    queries = _tfds_part(data.name, test, data_dir, size)
    if not data.finetune_name:
        raise ConfigError("data.finetune_name is empty: name the dataset the ranker learns on")
    pool = _tfds_part(data.finetune_name, data.finetune_split, data_dir, size)
    return RARData(pool, shots, queries)


def _digits(cfg: ml_collections.ConfigDict) -> RARData:
    pool, shot_pool, test = partition(
        digits(cfg.data.image_size), tuple(cfg.data.fractions), cfg.data.split_seed
    )
    shots = {
        count: shot_pool.take(
            fewshot_tfds.sample_shots(shot_pool.labels, count, cfg.seed, names=shot_pool.names)
        )
        for count in cfg.eval.shots
    }
    return RARData(pool, shots, test)


def load_data(cfg: ml_collections.ConfigDict) -> RARData:
    """The three parts of ``cfg.data`` (test cut to ``eval.num_queries`` when set)."""
    readers = {"digits": _digits, "tfds": _tfds}
    if cfg.data.source not in readers:
        raise ConfigError(f"data.source={cfg.data.source!r}: expected one of {sorted(readers)}")
    parts = readers[cfg.data.source](cfg)
    if cfg.eval.num_queries:
        keep = np.arange(min(cfg.eval.num_queries, len(parts.test)))
        parts = dataclasses.replace(parts, test=parts.test.take(keep))
    return parts
