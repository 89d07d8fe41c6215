"""The E-VQA-format fixture (tests/fixtures/evqa) as a config's data paths: it has one split,
which serves as both train and test."""

from __future__ import annotations

from pathlib import Path

from paths import FIXTURES

FIXTURE = FIXTURES / "evqa"


def evqa_paths() -> dict[str, Path]:
    """``data.*`` keys of configs/region_r1/evqa.py pointing at the fixture."""
    return {
        "train_csv": FIXTURE / "test.csv",
        "test_csv": FIXTURE / "test.csv",
        "kb": FIXTURE / "kb.json",
        "inaturalist_root": FIXTURE / "inaturalist",
        "train_id2name": FIXTURE / "inaturalist" / "val_id2name.json",
        "test_id2name": FIXTURE / "inaturalist" / "val_id2name.json",
        "landmarks_root": FIXTURE / "landmarks",
    }
