"""Readers stay inside their data root. A path a data file names that is absolute, climbs out
with ``..``, or passes through a symlink leading outside is refused and counted by reason
(``strict``: an error naming the row), though the file outside exists and would decode; a
symlink that stays inside, and a root that is itself a symlink, are read as usual."""

import csv
import json
import os

import numpy as np
import PIL.Image
import pytest
from paths import CONFIGS
from refusals import snapshot

from jaxrank.cli.data_check import check_data
from jaxrank.configs import load_config_file
from jaxrank.data import mbeir
from jaxrank.data.coop_splits import read_split_json
from jaxrank.data.errors import BadRows, DataError
from jaxrank.data.evqa import ImageLayout, read_evqa_csv, read_query_image
from jaxrank.data.infoseek import InfoSeekExample
from jaxrank.data.infoseek import read_query_image as read_oven_image
from jaxrank.data.paths import OutsideRoot, check_resolved, join_under

ESCAPES = {"path_outside_root": 2, "symlink_outside_root": 2}


@pytest.fixture
def tree(tmp_path):
    """``root/`` holding ``good.jpg``; ``outside/secret.jpg`` next to it, a real image. Inside
    the root: ``link.jpg`` and ``linked_dir`` lead out, ``ok_link.jpg`` points at good.jpg."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    pixels = np.full((8, 8, 3), 200, np.uint8)
    PIL.Image.fromarray(pixels).save(root / "good.jpg")
    PIL.Image.fromarray(pixels).save(outside / "secret.jpg")
    (root / "link.jpg").symlink_to(outside / "secret.jpg")
    (root / "linked_dir").symlink_to(outside)
    (root / "ok_link.jpg").symlink_to("good.jpg")
    (tmp_path / "root_link").symlink_to(root)
    return tmp_path


def hostile_names(tree):
    """Six relative names as a data file would give them: 2 lexical escapes, 2 through
    symlinks, 2 fine."""
    return [
        "good.jpg",
        "../outside/secret.jpg",
        str(tree / "outside" / "secret.jpg"),
        "link.jpg",
        "linked_dir/secret.jpg",
        "ok_link.jpg",
    ]


def test_join_and_resolve_by_hand(tree):
    root = tree / "root"
    assert join_under(root, "a/b.jpg") == root / "a" / "b.jpg"
    assert join_under(root, "a..b/c..jpg") == root / "a..b" / "c..jpg"  # dots in names are fine
    for name in ("../x.jpg", "a/../../x.jpg", "/etc/hostname", "a/.."):
        with pytest.raises(OutsideRoot) as info:
            join_under(root, name)
        assert info.value.reason == "path_outside_root"
    check_resolved(root, root / "ok_link.jpg")
    check_resolved(tree / "root_link", tree / "root_link" / "good.jpg")
    for name in ("link.jpg", "linked_dir/secret.jpg"):
        with pytest.raises(OutsideRoot, match=f"resolves to {tree / 'outside' / 'secret.jpg'}"):
            check_resolved(root, root / name)


def test_evqa_id2name_entries_that_leave_the_root(tree):
    root = tree / "root"
    id2name = {str(i): name for i, name in enumerate(hostile_names(tree), start=1)}
    columns = ["question", "answer", "question_type", "dataset_name", "dataset_image_ids"]
    with (tree / "val.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, "wikipedia_url"])
        for i in id2name:
            writer.writerow([f"q{i}", "a", "automatic", "inaturalist", i, "https://w/x"])
    before = snapshot(tree)
    for layout_root in (root, tree / "root_link"):
        layout = ImageLayout(inaturalist_root=layout_root, inaturalist_id2name=id2name)
        bad = BadRows()
        read = [read_query_image(e, layout, bad) for e in read_evqa_csv(tree / "val.csv", bad)]
        assert [image is not None for image in read] == [True, False, False, False, False, True]
        assert bad.report()["skipped"] == ESCAPES
    detail = "row 1: path_outside_root: inaturalist id 2: '../outside/secret.jpg' leads out of"
    assert bad.report()["examples"][0].startswith(f"{tree / 'val.csv'} {detail}")
    strict = [*read_evqa_csv(tree / "val.csv", BadRows())][1]
    with pytest.raises(DataError, match=r"val\.csv row 1: path_outside_root"):
        read_query_image(strict, layout, BadRows(strict=True))
    assert snapshot(tree) == before


def test_mbeir_img_paths_that_leave_the_root(tree):
    root, pool = tree / "root", tree / "pool.jsonl"
    lines = [
        {"txt": None, "img_path": name, "modality": "image", "did": f"1:{i}", "src_content": None}
        for i, name in enumerate(hostile_names(tree))
    ]
    pool.write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = snapshot(tree)
    bad = BadRows()
    checked = mbeir.read_pool(pool, bad, image_root=root, check_images=True)
    assert list(checked) == ["1:0", "1:5"] and bad.report()["skipped"] == ESCAPES
    assert bad.report()["examples"][0].startswith(f"{pool}:2: path_outside_root: ")
    # Unchecked, the lexical escapes still go when the line is read, the symlinks when the
    # image is: read_image follows the record's root.
    bad = BadRows()
    unchecked = mbeir.read_pool(pool, bad, image_root=root)
    assert bad.report()["skipped"] == {"path_outside_root": 2}
    images = [mbeir.load_image(c, bad) for c in unchecked.values()]
    assert [image is not None for image in images] == [True, False, False, True]
    assert bad.report()["skipped"] == ESCAPES
    with pytest.raises(DataError, match=r"pool\.jsonl:4: symlink_outside_root"):
        mbeir.load_image(unchecked["1:3"], BadRows(strict=True))
    assert snapshot(tree) == before


def test_coop_split_entries_that_leave_the_image_folder(tree):
    split = {"train": [[name, 0, "cat"] for name in hostile_names(tree)], "val": [], "test": []}
    (tree / "split.json").write_text(json.dumps(split))
    before = snapshot(tree)
    bad = BadRows()
    splits = read_split_json(tree / "split.json", tree / "root", bad)
    assert [row.path.name for row in splits.train] == ["good.jpg", "ok_link.jpg"]
    assert bad.report()["skipped"] == ESCAPES
    with pytest.raises(DataError, match=r"train\[1\]: path_outside_root"):
        read_split_json(tree / "split.json", tree / "root", BadRows(strict=True))
    assert snapshot(tree) == before


def test_oven_image_through_a_symlink_out_of_the_root(tree):
    oven = tree / "root" / "oven"
    (oven / "12").mkdir(parents=True)
    os.symlink(tree / "outside" / "secret.jpg", oven / "12" / "oven_1234.jpg")
    example = InfoSeekExample("d1", "oven_1234", "q?", (), (), "", "qa.jsonl", 7)
    bad = BadRows()
    assert read_oven_image(example, oven, bad) is None
    assert bad.report()["skipped"] == {"symlink_outside_root": 1}
    assert bad.report()["examples"][0].startswith("qa.jsonl line 7: symlink_outside_root: ")


def test_data_check_counts_mbeir_queries_that_leave_the_root(tree):
    """``jaxrank data check`` reads M-BEIR's queries as the recipe does: under the root, checked."""
    root = tree / "root"
    cfg = load_config_file(CONFIGS / "elva" / "mbeir.py")
    cfg.data.root, cfg.embedder.checkpoint = str(root), ""
    for split in ("test", "train"):
        for dataset, task in mbeir.EVAL_PAIRS:
            for path_of in (mbeir.query_path, mbeir.local_pool_path, mbeir.qrels_path):
                path_of(root, dataset, task, split).parent.mkdir(parents=True, exist_ok=True)
                path_of(root, dataset, task, split).touch()
    mbeir.instructions_path(root).parent.mkdir()
    mbeir.instructions_path(root).touch()
    query = {"query_txt": None, "query_modality": "image", "query_src_content": None}
    query.update(pos_cand_list=["9:1"], neg_cand_list=[], task_id=3)
    lines = [
        {"qid": f"9:{i}", "query_img_path": name, **query}
        for i, name in enumerate(hostile_names(tree), start=10)
    ]
    path = mbeir.query_path(root, "mscoco", 3, "test")
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    check = check_data(cfg)
    assert check.missing == []
    assert check.counts["mscoco/task3"]["queries"] == 2
    assert check.counts["mscoco/task3"]["skipped"] == ESCAPES
