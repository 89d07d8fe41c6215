"""M-BEIR readers on tiny files in the released formats (tests/fixtures/mbeir), bad rows
included, and UniIR's Recall@K by hand and against ranx."""

import json
from pathlib import Path

import numpy as np
import pytest
from paths import FIXTURES

from jaxrank.data import mbeir
from jaxrank.data.errors import BadRows, DataError

ROOT = FIXTURES / "mbeir"
TASKS = (("mscoco", 3), ("cirr", 7), ("webqa", 1))


def _queries(dataset, task, bad=None, **options):
    return mbeir.read_queries(mbeir.query_path(ROOT, dataset, task), bad or BadRows(), **options)


def _pool(dataset, task, bad=None):
    return mbeir.read_pool(mbeir.local_pool_path(ROOT, dataset, task), bad or BadRows())


def _lines_of(report):
    return [int(e.split(": ")[0].rsplit(":", 1)[1]) for e in report["examples"]]


# Queries ------------------------------------------------------------------------------------


def test_query_fields_as_released():
    pool = _pool("mscoco", 3)
    first, second = _queries("mscoco", 3, image_root=ROOT, known_dids=pool, check_images=True)
    rel = "mbeir_images/mscoco_images/val2014/COCO_val2014_000000000001.jpg"
    assert (first.qid, first.query_txt, first.query_img_path) == ("9:1", None, rel)
    assert (first.query_modality, first.query_src_content, first.task_id) == ("image", None, 3)
    assert (first.pos_cand_list, first.neg_cand_list) == (("9:2", "9:3"), ())
    assert first.image == ROOT / rel and first.image.is_file()
    assert first.dataset_id == 9 and first.line == 1
    assert first.where.endswith("mbeir_mscoco_task3_test.jsonl:1")
    assert second.qid == "9:4" and second.line == 2


def test_composed_queries_keep_text_image_and_source_string():
    first, second = _queries("cirr", 7, image_root=ROOT)
    assert first.query_modality == "image,text" and first.query_txt and first.image.is_file()
    assert json.loads(first.query_src_content)["reference"] == "dev-17-0"
    assert second.neg_cand_list == ("8:4",)


def test_query_bad_rows_counted_and_named():
    bad = BadRows()
    pool = _pool("mscoco", 3)
    queries = _queries("mscoco", 3, bad, image_root=ROOT, known_dids=pool, check_images=True)
    assert [q.qid for q in queries] == ["9:1", "9:4"]
    report = bad.report()
    assert report["read"] == 2
    assert report["skipped"] == {
        "invalid_json": 1,
        "missing_key": 1,
        "unknown_candidate": 1,
        "missing_image": 1,
    }
    assert _lines_of(report) == [3, 4, 5, 6]
    assert all("mbeir_mscoco_task3_test.jsonl" in e for e in report["examples"])
    assert "'query_modality'" in report["examples"][1]
    assert "9:999" in report["examples"][2]


def test_unknown_candidates_and_images_are_checked_only_when_asked():
    bad = BadRows()
    queries = _queries("mscoco", 3, bad, image_root=ROOT)
    assert [q.qid for q in queries] == ["9:1", "9:4", "9:8", "9:9"]
    assert bad.report()["skipped"] == {"invalid_json": 1, "missing_key": 1}
    # The missing image surfaces when the image is read, named by the query's line.
    images = BadRows()
    assert mbeir.load_image(queries[0], images).shape == (40, 40, 3)
    assert mbeir.load_image(queries[3], images) is None
    assert images.report()["skipped"] == {"missing_image": 1}
    assert images.report()["examples"][0].split(": ")[0].endswith("_test.jsonl:6")


def test_task_that_does_not_fit_the_query_is_a_bad_row():
    bad = BadRows()
    assert [q.qid for q in _queries("webqa", 1, bad)] == ["2:1"]
    assert bad.report()["skipped"] == {"bad_value": 1} and _lines_of(bad.report()) == [2]


def test_strict_mode_raises_on_the_first_bad_row():
    with pytest.raises(DataError, match=r"mbeir_mscoco_task3_test\.jsonl:3: invalid_json"):
        _queries("mscoco", 3, BadRows(strict=True))
    with pytest.raises(DataError, match=r"task7_cand_pool\.jsonl:3: missing_key"):
        _pool("cirr", 7, BadRows(strict=True))


def test_queries_are_streamed():
    bad = BadRows()
    stream = mbeir.iter_queries(mbeir.query_path(ROOT, "mscoco", 3), bad)
    assert next(stream).qid == "9:1"
    assert bad.report() == {"read": 1, "skipped": {}, "examples": []}


GOOD = {
    "qid": "9:1",
    "query_txt": None,
    "query_img_path": "a.jpg",
    "query_modality": "image",
    "query_src_content": None,
    "pos_cand_list": ["9:2"],
    "neg_cand_list": [],
    "task_id": 3,
}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("[1, 2]", "invalid_json"),
        (json.dumps({**GOOD, "task_id": True}), "bad_value"),
        (json.dumps({**GOOD, "task_id": 5}), "bad_value"),  # UniIR's unused task
        (json.dumps({**GOOD, "qid": "coco-1"}), "bad_value"),
        (json.dumps({**GOOD, "query_img_path": None}), "bad_value"),
        (json.dumps({**GOOD, "query_modality": "video"}), "bad_value"),
        (json.dumps({**GOOD, "neg_cand_list": [3]}), "bad_value"),
        (json.dumps({**GOOD, "query_src_content": {"id": 1}}), "bad_value"),
        (json.dumps({**GOOD, "pos_cand_list": []}), "no_positive"),
        (json.dumps(GOOD), "duplicate_id"),
    ],
)
def test_malformed_query_values(tmp_path, line, reason):
    path = tmp_path / "mbeir_x_task3_test.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n")  # a blank line is not a row
    bad = BadRows()
    assert [q.qid for q in mbeir.read_queries(path, bad)] == ["9:1"]
    assert bad.report()["skipped"] == {reason: 1}
    assert bad.report()["examples"][0].startswith(f"{path}:3: {reason}")


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        mbeir.read_queries(tmp_path / "absent.jsonl", BadRows())


# Pools --------------------------------------------------------------------------------------


def test_local_pool_bad_rows_and_first_did_wins():
    bad = BadRows()
    pool = _pool("cirr", 7, bad)
    assert list(pool) == ["8:2", "8:3", "8:4"]
    assert pool["8:3"].img_path.endswith("dev-29-1-img0.jpg") and pool["8:3"].line == 2
    assert bad.report()["skipped"] == {"missing_key": 1, "bad_value": 1, "duplicate_id": 1}
    assert _lines_of(bad.report()) == [3, 4, 6]


def test_global_pool_is_the_union_of_the_local_pools():
    bad = BadRows()
    union = mbeir.read_pool(mbeir.global_pool_path(ROOT), bad, image_root=ROOT, check_images=True)
    assert bad.report()["skipped"] == {}
    local = {did: c for dataset, task in TASKS for did, c in _pool(dataset, task).items()}
    assert union.keys() == local.keys()
    for did, candidate in union.items():
        other = local[did]
        assert (candidate.txt, candidate.img_path, candidate.modality, candidate.src_content) == (
            other.txt,
            other.img_path,
            other.modality,
            other.src_content,
        )
    # Released sorted by (dataset id, number within it).
    assert list(union) == sorted(union, key=lambda d: tuple(map(int, d.split(":"))))
    text = union["9:2"]
    assert (text.modality, text.image, text.dataset_id) == ("text", None, 9)
    assert all(c.image.is_file() for c in union.values() if c.img_path)


def test_every_good_query_points_into_its_local_pool():
    unknown = {}
    for dataset, task in TASKS:
        pool, bad = _pool(dataset, task), BadRows()
        queries = _queries(dataset, task, bad, known_dids=pool)
        assert all(set(q.pos_cand_list + q.neg_cand_list) <= pool.keys() for q in queries)
        unknown[dataset] = bad.report()["skipped"].get("unknown_candidate", 0)
    assert unknown == {"mscoco": 1, "cirr": 0, "webqa": 0}


# Qrels --------------------------------------------------------------------------------------


def test_qrels_agree_with_pos_cand_list():
    for dataset, task in TASKS:
        qrels = mbeir.read_qrels(mbeir.qrels_path(ROOT, dataset, task), BadRows())
        for query in _queries(dataset, task):
            assert qrels[query.qid] == mbeir.Relevant(query.task_id, query.pos_cand_list)


def test_qrels_drop_relevance_zero_and_name_bad_lines():
    bad = BadRows()
    qrels = mbeir.read_qrels(mbeir.qrels_path(ROOT, "mscoco", 3), bad)
    assert qrels["9:1"].dids == ("9:2", "9:3")  # "9:1 0 9:10 0 3" is not a positive
    assert bad.report() == {"read": 8, "skipped": {}, "examples": []}
    bad = BadRows()
    assert set(mbeir.read_qrels(mbeir.qrels_path(ROOT, "cirr", 7), bad)) == {"8:1", "8:2"}
    assert bad.report()["skipped"] == {"bad_line": 1} and _lines_of(bad.report()) == [3]


def test_qrels_value_errors(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("9:1 0 9:2 1 3\n9:1 0 9:3 1 4\n9:1 0 9:2 1 3\n9:1 0 9:4 x 3\nq 0 9:5 1 3\n")
    bad = BadRows()
    # Line 2's task disagrees: its positive is kept under the first task (UniIR's load_qrel)
    # and the conflict counted.
    assert mbeir.read_qrels(path, bad) == {"9:1": mbeir.Relevant(3, ("9:2", "9:3"))}
    assert bad.report()["skipped"] == {"task_conflict": 1, "duplicate_id": 1, "bad_value": 2}
    assert _lines_of(bad.report()) == [2, 3, 4, 5]
    with pytest.raises(DataError, match="task_conflict"):
        mbeir.read_qrels(path, BadRows(strict=True))


# Instructions -------------------------------------------------------------------------------


def test_instructions_by_dataset_and_modalities():
    bad = BadRows()
    table = mbeir.read_instructions(mbeir.instructions_path(ROOT), bad)
    assert set(table) == {
        (9, "image", "text"),
        (9, "text", "image"),
        (8, "image,text", "image"),
    } | {(2, "text", "text")}
    assert len(table[(9, "text", "image")]) == 2  # empty trailing cells dropped
    assert bad.report()["skipped"] == {"bad_line": 1} and _lines_of(bad.report()) == [6]
    coco, composed = _queries("mscoco", 3)[0], _queries("cirr", 7)[0]
    assert mbeir.instructions_for(table, coco) == table[(9, "image", "text")]
    assert len(mbeir.instructions_for(table, composed)) == 4
    with pytest.raises(DataError, match=r"no instruction row for \(9, 'image', 'text'\)"):
        mbeir.instructions_for({}, coco)


def test_instruction_header_must_name_the_key_columns(tmp_path):
    path = tmp_path / "query_instructions.tsv"
    path.write_text(
        "dataset_id\tquery_modality\tcand_modality\tname\tprompt\n9\timage\ttext\tx\ty\n"
    )
    with pytest.raises(DataError, match="header"):
        mbeir.read_instructions(path, BadRows())


def test_instruction_bad_rows(tmp_path):
    path = tmp_path / "query_instructions.tsv"
    header = "query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\n"
    rows = [
        "text\timage\tMSCOCO\t9\tFind it.",
        "text\timage\tMSCOCO\tnine\tFind it.",
        "text\ttext\tWebQA\t2\t\t",
        "text\timage\tMSCOCO\t9\tAgain.",
    ]
    path.write_text(header + "\n".join(rows) + "\n")
    bad = BadRows()
    assert mbeir.read_instructions(path, bad) == {(9, "text", "image"): ("Find it.",)}
    assert bad.report()["skipped"] == {"bad_value": 2, "duplicate_id": 1}
    assert _lines_of(bad.report()) == [3, 4, 5]


# Layout and constants -----------------------------------------------------------------------


def test_paths_follow_the_release_layout():
    assert mbeir.local_pool_path("r", "MSCOCO", 0).name == "mbeir_mscoco_task0_test_cand_pool.jsonl"
    assert mbeir.local_pool_path("r", "cirr", 7).name == "mbeir_cirr_task7_cand_pool.jsonl"
    assert mbeir.global_pool_path("r", "val") == Path(
        "r/cand_pool/global/mbeir_union_val_cand_pool.jsonl"
    )
    assert mbeir.qrels_path("r", "nights", 4) == Path(
        "r/qrels/test/mbeir_nights_task4_test_qrels.txt"
    )


def test_evaluation_pairs_and_cutoffs():
    assert len(mbeir.EVAL_PAIRS) == len(set(mbeir.EVAL_PAIRS)) == 16
    assert all(task in mbeir.TASKS for _, task in mbeir.EVAL_PAIRS)
    wide = {p for p, ks in mbeir.RECALL_CUTOFFS.items() if ks == (10, 20, 50)}
    assert wide == {("fashion200k", 0), ("fashion200k", 3), ("fashioniq", 7)}
    for dataset, task in mbeir.EVAL_PAIRS:
        assert mbeir.headline_k(dataset) in mbeir.RECALL_CUTOFFS[(dataset, task)]
    assert mbeir.headline_k("FashionIQ") == 10 and mbeir.headline_k("cirr") == 5


# Recall -------------------------------------------------------------------------------------


def test_recall_is_a_hit_by_hand():
    ranked = ["a", "b", "c", "d", "e", "f"]
    assert [mbeir.recall_at_k(ranked, {"c", "x"}, k) for k in (1, 2, 3, 5, 10)] == [0, 0, 1, 1, 1]
    assert mbeir.recall_at_k(ranked, {"a", "b", "c"}, 1) == 1.0  # not 1/3
    assert mbeir.recall_at_k(ranked, set(), 5) == 0.0
    with pytest.raises(ValueError):
        mbeir.recall_at_k(ranked, {"a"}, 0)


def test_mean_recall_by_task_on_the_fixtures_by_hand():
    qrels = {}
    for dataset, task in TASKS[:2]:
        qrels |= mbeir.read_qrels(mbeir.qrels_path(ROOT, dataset, task), BadRows())
    ranked = {
        "9:1": ["9:10", "9:5", "9:3", "9:2"],  # first positive at rank 3
        "9:4": ["9:2", "9:3", "9:10", "9:5"],  # at rank 4
        "8:1": ["8:3", "8:2", "8:4"],  # at rank 2
        "8:2": ["8:3", "8:4", "8:2"],  # at rank 1
    }
    assert mbeir.mean_recall_by_task(ranked, qrels, 1) == {3: 0.0, 7: 0.5}
    assert mbeir.mean_recall_by_task(ranked, qrels, 3) == {3: 0.5, 7: 1.0}
    assert mbeir.mean_recall_by_task(ranked, qrels, 5) == {3: 1.0, 7: 1.0}
    with pytest.raises(DataError, match="no qrels"):
        mbeir.mean_recall_by_task({"7:1": ["9:2"]}, qrels, 5)


def test_recall_agrees_with_ranx_hit_rate():
    """ranx's ``hit_rate`` is the same hit; its array form skips ranx's slow dict conversion."""
    ranx_metrics = pytest.importorskip("ranx.metrics")
    rng = np.random.default_rng(0)
    num_queries, pool, depth, most = 40, 60, 50, 4
    ranked, relevant = [], []
    for q in range(num_queries):
        ranked.append(list(rng.permutation(pool)[:depth]))
        relevant.append(list(rng.choice(pool, size=q % (most + 1), replace=False)))
    # ranx wants [query, row, (id, score)], ids as numbers, runs sorted best first; padding
    # rows of the qrels carry relevance 0, which ranx drops.
    run = np.array([[(d + 1, depth - r) for r, d in enumerate(row)] for row in ranked], float)
    qrels = np.zeros((num_queries, most, 2))
    for q, ids in enumerate(relevant):
        for slot, d in enumerate(ids):
            qrels[q, slot] = (d + 1, 1)
    for k in (1, 5, 10, 20, 50):
        ours = [mbeir.recall_at_k(r, set(p), k) for r, p in zip(ranked, relevant, strict=True)]
        np.testing.assert_array_equal(ours, ranx_metrics.hit_rate(qrels, run, k))
