"""CoOp's split files read from fixtures in CoOp's exact layouts (tests/fixtures/coop): rows
resolved and labelled as CoOp's loaders label them, bad entries counted by reason (or raised
in strict mode), and splits or k-shot samples loaded as squares of the files' own pixels."""

import json
import shutil

import numpy as np
import paths
import pytest

from jaxrank.data.coop_splits import (
    COOP_DATASETS,
    load_labelled,
    read_imagenet_classnames,
    read_split_json,
    read_splits,
)
from jaxrank.data.errors import BadRows, DataError
from jaxrank.data.fewshot_tfds import FEWSHOT_DATASETS, sample_shots
from jaxrank.data.images import centre_square, read_image

FIXTURES = paths.FIXTURES / "coop"
PETS = FIXTURES / "oxford_pets"


def test_table_covers_coops_eleven_datasets():
    assert set(COOP_DATASETS) == set(FEWSHOT_DATASETS) - {"raf_db"}
    json_less = {k for k, v in COOP_DATASETS.items() if v.split_file is None}
    assert json_less == {"imagenet", "fgvc_aircraft"}
    assert COOP_DATASETS["eurosat"].image_dir == "2750"
    assert COOP_DATASETS["stanford_cars"].image_dir == ""


def test_pets_split_rows_and_bad_entries():
    bad = BadRows()
    splits = read_splits(FIXTURES, "oxford_pets", bad)
    assert splits.names == ("abyssinian", "bengal", "birman")
    assert [len(splits.rows(s)) for s in ("train", "val", "test")] == [9, 3, 6]
    first = splits.train[0]
    assert first.path == PETS / "images" / "Abyssinian_1.jpg" and first.path.is_file()
    assert (first.label, first.classname) == (0, "abyssinian")
    assert all(
        splits.names[r.label] == r.classname
        for s in ("train", "val", "test")
        for r in splits.rows(s)
    )
    report = bad.report()
    assert report["read"] == 18
    assert report["skipped"] == {"malformed_entry": 2, "label_mismatch": 1, "missing_image": 1}
    assert report["examples"][0].startswith(f"{PETS / 'split_zhou_OxfordPets.json'} train[9]: ")
    with pytest.raises(DataError, match=r"train\[9\]: malformed_entry"):
        read_splits(FIXTURES, "oxford_pets")  # strict by default


def test_label_names_by_majority_and_other_faults(tmp_path):
    rows = [["a.jpg", 0, "cat"], ["b.jpg", 0, "cat"], ["c.jpg", 1, "dog"]]
    # The wrong name comes first; the majority still names label 0.
    split = {"train": [["d.jpg", 0, "dog"], *rows], "val": [], "test": [["../x.jpg", 1, "dog"]]}
    (tmp_path / "s.json").write_text(json.dumps(split))
    bad = BadRows()
    splits = read_split_json(tmp_path / "s.json", tmp_path, bad, check_images=False)
    assert splits.names == ("cat", "dog") and len(splits.train) == 3
    assert bad.report()["skipped"] == {"label_mismatch": 1, "path_outside_root": 1}
    (tmp_path / "gap.json").write_text(
        json.dumps({"train": [["a", 1, "x"]], "val": [], "test": []})
    )
    with pytest.raises(DataError, match="no entry names label"):
        read_split_json(tmp_path / "gap.json", tmp_path, BadRows(), check_images=False)
    (tmp_path / "broken.json").write_text('{"train": [')
    with pytest.raises(DataError, match=r"broken\.json: not readable as JSON"):
        read_split_json(tmp_path / "broken.json", tmp_path, BadRows())
    with pytest.raises(DataError, match="no such split file"):
        read_splits(tmp_path, "dtd")


def test_fgvc_aircraft_variants():
    bad = BadRows()
    splits = read_splits(FIXTURES, "fgvc_aircraft", bad)
    assert splits.names == ("707-320", "A300B4", "Cessna 172")
    assert [len(splits.rows(s)) for s in ("train", "val", "test")] == [6, 3, 3]
    cessna = splits.test[-1]
    assert (cessna.label, cessna.classname) == (2, "Cessna 172")
    assert cessna.path == FIXTURES / "fgvc_aircraft" / "images" / "1000012.jpg"
    assert bad.report()["skipped"] == {
        "malformed_line": 1,
        "unknown_class": 1,
        "missing_image": 1,
    }
    assert any("images_variant_val.txt line 4: unknown_class" in e for e in bad.examples)


def test_imagenet_classnames_and_folders(tmp_path):
    names = read_imagenet_classnames(FIXTURES / "imagenet" / "classnames.txt")
    assert names == {"n01440764": "tench", "n01443537": "goldfish"}
    splits = read_splits(FIXTURES, "imagenet")
    assert splits.names == ("tench", "goldfish")
    assert [r.label for r in splits.train] == [0, 0, 1, 1]
    assert splits.val == splits.test and len(splits.test) == 2
    # A folder missing from classnames.txt is one bad entry; labels stay by classnames.txt.
    copy = tmp_path / "imagenet"
    shutil.copytree(FIXTURES / "imagenet", copy)
    (copy / "images" / "val" / "n99999999").mkdir()
    bad = BadRows()
    again = read_splits(tmp_path, "imagenet", bad)
    assert [r.label for r in again.test] == [0, 1]
    assert bad.report()["skipped"] == {"unknown_class": 1}


def test_load_split_and_shots_match_the_files_pixels():
    bad = BadRows()
    test = load_labelled(FIXTURES, "oxford_pets", "test", 24, bad=bad)
    assert test.images.shape == (6, 24, 24, 3) and test.images.dtype == np.uint8
    assert test.names == ("abyssinian", "bengal", "birman")
    np.testing.assert_array_equal(test.labels, [0, 0, 1, 1, 2, 2])
    expected = centre_square(read_image(PETS / "images" / "Abyssinian_5.jpg", "", BadRows()), 24)
    np.testing.assert_array_equal(test.images[0], expected)

    splits = read_splits(FIXTURES, "oxford_pets", BadRows())
    shots = load_labelled(FIXTURES, "oxford_pets", "train", 16, shots=2, seed=3, bad=BadRows())
    picked = sample_shots([r.label for r in splits.train], 2, 3, num_classes=3)
    np.testing.assert_array_equal(shots.labels, [0, 0, 1, 1, 2, 2])
    for image, i in zip(shots.images, picked, strict=True):
        pixels = read_image(splits.train[i].path, "", BadRows())
        np.testing.assert_array_equal(image, centre_square(pixels, 16))
    again = load_labelled(FIXTURES, "oxford_pets", "train", 16, shots=2, seed=3, bad=BadRows())
    np.testing.assert_array_equal(again.images, shots.images)
    with pytest.raises(DataError, match="fewer than shots=4"):
        load_labelled(FIXTURES, "oxford_pets", "train", 16, shots=4, bad=BadRows())
