"""What RAR's protocols read: the ranker's fine-tuning pool, the labelled shots of each shot
count, and the test queries.

- ``digits`` (offline): scikit-learn's digits split once by ``data.split_seed`` into the three
  parts (``labelled_images.partition``); shots are drawn from the middle part.
- ``tfds``: a few-shot dataset read by name through tensorflow-datasets (array_record, no
  TensorFlow; ``data/fewshot_tfds.py``): shots drawn from its train split (only the drawn
  images are decoded), the test split as queries, and the ranker's pool from another dataset
  (``data.finetune_name``), as the paper fine-tunes on FGVC-Aircraft and tests elsewhere.
- ``coop``: the dataset in CoOp's own layout under ``data.coop_root`` (``data/coop_splits.py``):
  CoOp's train / test splits, the shots CoOp itself drew (its ``split_fewshot`` pickles, read
  by ``data/coop_fewshot.py``) when ``data.pickled_shots``, else drawn by seed; the ranker's
  pool from another CoOp dataset, FGVC-Aircraft as in the paper. Bad rows are errors when
  ``data.strict``, else skipped and reported.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from jaxrank.configs import ConfigError
from jaxrank.data import coop_fewshot, coop_splits, fewshot_tfds
from jaxrank.data.errors import BadRows
from jaxrank.data.labelled_images import LabelledImages, digits, partition


@dataclasses.dataclass(frozen=True)
class RARData:
    ranker_pool: LabelledImages
    shots: dict[int, LabelledImages]  # shot count -> its memory's images
    test: LabelledImages
    bad_rows: dict | None = None  # BadRows.report() of files read row by row


def protocol_splits(data: ml_collections.ConfigDict) -> tuple[str, str]:
    """(train, test) split of ``data.name``: the config's, else the dataset's protocol ones."""
    entry = fewshot_tfds.FEWSHOT_DATASETS.get(data.name)
    train = data.train_split or (entry.train_split if entry else "train")
    return train, data.test_split or (entry.test_split if entry else "test")


def _labelled(source, size: int, rows=None) -> LabelledImages:
    images, labels = fewshot_tfds.read_arrays(source, size, rows)
    return LabelledImages(images, labels, tuple(fewshot_tfds.class_names(source)))


def _tfds(cfg: ml_collections.ConfigDict) -> RARData:
    data = cfg.data
    train, test = protocol_splits(data)
    load = lambda name, split: fewshot_tfds.load_split(name, split, data.data_dir or None)
    labels = fewshot_tfds.split_labels(
        fewshot_tfds.load_split(data.name, train, data.data_dir or None, decode_images=False)
    )
    train_source = load(data.name, train)
    shots = {
        count: _labelled(
            train_source, data.image_size, fewshot_tfds.sample_shots(labels, count, cfg.seed)
        )
        for count in cfg.eval.shots
    }
    queries = _labelled(load(data.name, test), data.image_size)
    if not data.finetune_name:
        raise ConfigError("data.finetune_name is empty: name the dataset the ranker learns on")
    pool = _labelled(load(data.finetune_name, data.finetune_split), data.image_size)
    return RARData(pool, shots, queries)


def _coop(cfg: ml_collections.ConfigDict) -> RARData:
    data = cfg.data
    bad = BadRows(strict=data.strict)
    splits = coop_splits.read_splits(data.coop_root, data.name, bad)
    image_folder = coop_splits.image_folder(data.coop_root, data.name)

    def shot_rows(count: int) -> tuple[coop_splits.SplitRow, ...]:
        if not data.pickled_shots:
            return coop_splits.draw_shots(splits, "train", count, cfg.seed)
        path = coop_fewshot.fewshot_pickle_path(data.coop_root, data.name, count, cfg.seed)
        return coop_fewshot.read_fewshot_pickle(path, "train", splits.train, image_folder, bad)

    labelled = lambda rows, names: coop_splits.to_labelled(rows, names, data.image_size, bad)
    shots = {count: labelled(shot_rows(count), splits.names) for count in cfg.eval.shots}
    test = labelled(splits.rows(data.test_split or "test"), splits.names)
    if not data.finetune_name:
        raise ConfigError("data.finetune_name is empty: name the dataset the ranker learns on")
    pool_splits = coop_splits.read_splits(data.coop_root, data.finetune_name, bad)
    pool = labelled(pool_splits.rows(data.finetune_split), pool_splits.names)
    return RARData(pool, shots, test, bad.report())


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
    readers = {"coop": _coop, "digits": _digits, "tfds": _tfds}
    if cfg.data.source not in readers:
        raise ConfigError(f"data.source={cfg.data.source!r}: expected one of {sorted(readers)}")
    parts = readers[cfg.data.source](cfg)
    if cfg.eval.num_queries:
        keep = np.arange(min(cfg.eval.num_queries, len(parts.test)))
        parts = dataclasses.replace(parts, test=parts.test.take(keep))
    return parts
