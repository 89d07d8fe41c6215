"""CoOp's pickled few-shot draws (tests/fixtures/coop/oxford_pets/split_fewshot, written as
CoOp writes them), the safety of reading them, and the RAR data stage and data check on CoOp's
layout."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import paths
import pytest
from coop_pickles import write_fewshot_pickle

from jaxrank.cli.data_check import check_data
from jaxrank.configs import apply_overrides, load_config_file
from jaxrank.data import coop_splits
from jaxrank.data.coop_fewshot import fewshot_pickle_path, read_fewshot_pickle
from jaxrank.data.errors import BadRows, DataError
from jaxrank.data.images import centre_square, read_image
from jaxrank.rar.data import load_data

FIXTURES = paths.FIXTURES / "coop"
IMAGES = FIXTURES / "oxford_pets" / "images"
CONFIG = paths.CONFIGS / "rar" / "fewshot_coop.py"
ELSEWHERE = "/home/someone/coop/oxford_pets/images"


def _pets():
    return coop_splits.read_splits(FIXTURES, "oxford_pets", BadRows())


def _names(rows) -> list[str]:
    return [r.path.name for r in rows]


def test_the_fixture_draw_maps_onto_this_machines_rows():
    splits, bad = _pets(), BadRows(strict=True)
    path = fewshot_pickle_path(FIXTURES, "oxford_pets", 2, 1)
    assert path == FIXTURES / "oxford_pets" / "split_fewshot" / "shot_2-seed_1.pkl"
    train = read_fewshot_pickle(path, "train", splits.train, IMAGES, bad)
    # The pickle's order, its paths from another machine resolved under this one's folder.
    assert _names(train) == [
        "Abyssinian_3.jpg", "Abyssinian_1.jpg", "Bengal_3.jpg",
        "Bengal_1.jpg", "Birman_3.jpg", "Birman_1.jpg",
    ]  # fmt: skip
    assert all(r.path.parent == IMAGES and r.path.exists() for r in train)
    assert [r.label for r in train] == [0, 0, 1, 1, 2, 2]
    val = read_fewshot_pickle(path, "val", splits.val, IMAGES, bad)
    assert _names(val) == ["Abyssinian_4.jpg", "Bengal_4.jpg", "Birman_4.jpg"]
    with pytest.raises(DataError, match="no 'test' draws"):
        read_fewshot_pickle(path, "test", splits.test, IMAGES, bad)


def test_bad_draws_are_named_and_skipped_or_fatal(tmp_path):
    splits = _pets()
    path = tmp_path / "shot_1-seed_1.pkl"
    write_fewshot_pickle(path, {"train": [
        (f"{ELSEWHERE}/Abyssinian_2.jpg", 0, "abyssinian"),
        (f"{ELSEWHERE}/Sphynx_1.jpg", 2, "sphynx"),  # in no train row
        (f"{ELSEWHERE}/Bengal_2.jpg", 2, "birman"),  # the split says 1, bengal
        ("C:\\data\\oxford_pets\\images\\Birman_2.jpg", 2, "birman"),  # a Windows path
    ]})  # fmt: skip
    bad = BadRows()
    rows = read_fewshot_pickle(path, "train", splits.train, IMAGES, bad)
    assert _names(rows) == ["Abyssinian_2.jpg", "Birman_2.jpg"]
    report = bad.report()
    assert report["read"] == 2
    assert report["skipped"] == {"unknown_image": 1, "label_mismatch": 1}
    assert report["examples"][0].startswith(f"{path}:train[1]: unknown_image")
    with pytest.raises(DataError, match=r"train\[1\]: unknown_image"):
        read_fewshot_pickle(path, "train", splits.train, IMAGES, BadRows(strict=True))


def test_a_pickle_that_builds_anything_else_is_refused(tmp_path):
    """Unpickling runs code: only Dassl's Datum is ever built."""
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": [PurePosixPath("/etc/passwd")]}))
    with pytest.raises(DataError, match=r"refuses to load pathlib.*PurePosixPath"):
        read_fewshot_pickle(path, "train", _pets().train, IMAGES, BadRows())
    path.write_bytes(b"\x80\x05not a pickle")
    with pytest.raises(DataError, match="not a readable pickle"):
        read_fewshot_pickle(path, "train", _pets().train, IMAGES, BadRows())
    path.write_bytes(pickle.dumps(["no", "dict"]))
    with pytest.raises(DataError, match="expected a dict with a 'train' list"):
        read_fewshot_pickle(path, "train", _pets().train, IMAGES, BadRows())
    with pytest.raises(DataError, match="no such CoOp few-shot file"):
        read_fewshot_pickle(tmp_path / "absent.pkl", "train", _pets().train, IMAGES, BadRows())


def _coop_config(root: Path, *extra: str):
    return apply_overrides(load_config_file(CONFIG), [
        f"data.coop_root={root}", "data.image_size=16", "eval.shots=(2,)", "data.strict=False",
        "memory.encoder=pixels", "ranker.checkpoint=", *extra,
    ])  # fmt: skip


def test_rar_data_stage_reads_coops_splits_and_draws():
    data = load_data(_coop_config(FIXTURES))
    expected = ["Abyssinian_3", "Abyssinian_1", "Bengal_3", "Bengal_1", "Birman_3", "Birman_1"]
    for image, stem in zip(data.shots[2].images, expected, strict=True):
        pixels = read_image(IMAGES / f"{stem}.jpg", "", BadRows())
        np.testing.assert_array_equal(image, centre_square(pixels, 16))
    np.testing.assert_array_equal(data.shots[2].labels, [0, 0, 1, 1, 2, 2])
    assert data.test.names == ("abyssinian", "bengal", "birman") and len(data.test) == 6
    assert data.ranker_pool.names == ("707-320", "A300B4", "Cessna 172")  # FGVC-Aircraft
    assert len(data.ranker_pool) == 6
    # The fixtures' deliberate faults, skipped and reported (pets' and aircraft's).
    assert data.bad_rows["skipped"] == {
        "malformed_entry": 2, "label_mismatch": 1, "missing_image": 2, "malformed_line": 1,
        "unknown_class": 1,
    }  # fmt: skip
    seeded = load_data(_coop_config(FIXTURES, "data.pickled_shots=False", "seed=5"))
    drawn = coop_splits.draw_shots(_pets(), "train", 2, 5)
    np.testing.assert_array_equal(seeded.shots[2].labels, [r.label for r in drawn])


def test_data_check_lists_missing_draws_and_counts_rows(tmp_path):
    root = tmp_path / "coop"
    shutil.copytree(FIXTURES, root)
    check = check_data(_coop_config(root, "eval.shots=(1, 2)"), samples=2)
    assert [m["what"] for m in check.missing] == ["CoOp's 1-shot draw, seed 1"]
    assert check.counts["shots and test"]["train"] == 9
    assert check.counts["ranker pool"]["dataset"] == "fgvc_aircraft"
    assert len(check.samples) == 2
    check = check_data(_coop_config(tmp_path / "nowhere"), samples=0)
    assert check.missing[0]["what"] == "CoOp data root"
