"""E-VQA readers on fixtures in the released formats: CSV rows (bad ones skipped, counted and
named, or raised in strict mode), the single-hop filter, GLDv2 / iNat21 image paths, the KB
streamed without ever holding the whole file, absent KB entries reported, and url Recall@K
against a hand-worked case and ranx."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import paths
import PIL.Image
import pytest

from jaxrank.data import wiki_kb
from jaxrank.data.errors import BadRows, DataError
from jaxrank.data.evqa import (
    ImageLayout,
    image_path,
    load_id2name,
    query_image_path,
    read_evqa_csv,
    read_query_image,
)
from jaxrank.data.evqa_recall import first_hit_rank, gold_urls, recall_at_k

FIXTURES = paths.FIXTURES / "evqa"
CSV = FIXTURES / "test.csv"
W = "https://en.wikipedia.org/wiki/"


def _layout() -> ImageLayout:
    id2name = load_id2name(FIXTURES / "inaturalist" / "val_id2name.json")
    return ImageLayout(
        FIXTURES / "inaturalist", FIXTURES / "landmarks", inaturalist_id2name=id2name
    )


# Question rows ---------------------------------------------------------------------------------


def test_rows_are_typed_filtered_and_bad_ones_named():
    bad = BadRows()
    examples = list(read_evqa_csv(CSV, bad))
    assert [e.row for e in examples] == [0, 1, 2, 7, 8]
    assert [e.query_id for e in examples] == ["E-VQA_0", "E-VQA_1", "E-VQA_2", "E-VQA_5", "E-VQA_6"]
    hotel, raven, sunflower = examples[:3]
    assert hotel.question == "Where does this hotel derive its name from?"
    assert hotel.image_ids == ("6e158a47eb2ca3f6", "0a1b2c3d4e5f6789")
    assert hotel.wikipedia_urls == (W + "Menger_Hotel",)
    assert (hotel.dataset_name, hotel.split, hotel.url_used_in_train) == ("landmarks", "test", True)
    assert hotel.evidence_section_ids == (1,) and hotel.evidence_section_title == "History"
    assert raven.answers == ("100 to 150 cm", "1.0 to 1.5 m")
    assert raven.evidence == "Adults are 54 to 67 cm long, with a wingspan of 100 to 150 cm."
    assert raven.url_used_in_train is False and raven.question_type == "templated"
    assert sunflower.answer_parts == (("North America", "Europe"), ("Europe", "North America"))
    assert bad.report() == {
        "read": 5,
        "skipped": {"malformed_row": 1, "empty_question": 1, "bad_image_id": 1},
        "examples": [
            f"{CSV} row 4 (line 6): malformed_row: 12 cells, the header has 14",
            f"{CSV} row 5 (line 7): empty_question: the question cell is empty",
            f"{CSV} row 6 (line 8): bad_image_id: landmarks ids ['Menger-1']",
        ],
    }


def test_two_hop_rows_kept_on_request():
    two_hop = [e for e in read_evqa_csv(CSV, BadRows(), single_hop=False) if e.row == 3]
    (row,) = two_hop
    assert row.question_type == "2_hop" and row.query_id is None
    assert row.wikipedia_urls == (W + "Menger_Hotel", W + "San_Antonio")
    assert row.evidence_section_ids == (1, 0)


def test_strict_mode_raises_on_the_first_bad_row():
    with pytest.raises(DataError, match=r"test\.csv row 4 \(line 6\): malformed_row"):
        list(read_evqa_csv(CSV, BadRows(strict=True)))


def test_missing_file_and_columns_are_errors(tmp_path):
    with pytest.raises(DataError, match="no such E-VQA CSV file"):
        list(read_evqa_csv(tmp_path / "nope.csv", BadRows()))
    (tmp_path / "a.csv").write_text("question,answer\nWhat?,this\n")
    with pytest.raises(DataError, match=r"lacks E-VQA columns \['question_type'"):
        list(read_evqa_csv(tmp_path / "a.csv", BadRows()))


# Images ----------------------------------------------------------------------------------------


def test_image_paths_follow_the_gldv2_and_inat_layouts():
    layout = _layout()
    gld = image_path("landmarks", "6e158a47eb2ca3f6", layout)
    assert gld == FIXTURES / "landmarks" / "6" / "e" / "1" / "6e158a47eb2ca3f6.jpg"
    inat = image_path("inaturalist", "1234567", layout)
    assert inat.parent.name.endswith("_Helianthus_annuus") and inat.is_file()
    assert image_path("inaturalist", "999999999", layout) is None
    flat = ImageLayout.flat("/data/inat", "/data/gld")
    assert image_path("inaturalist", "42", flat) == Path("/data/inat/42.jpg")
    assert image_path("landmarks", "6e158a47eb2ca3f6", flat) == Path(
        "/data/gld/6e158a47eb2ca3f6.jpg"
    )
    with pytest.raises(DataError, match=r"needs ImageLayout\.inaturalist_id2name"):
        image_path("inaturalist", "42", ImageLayout(inaturalist_root=Path("/data")))
    with pytest.raises(DataError, match="no root for landmarks"):
        image_path("landmarks", "6e158a47eb2ca3f6", ImageLayout())


def test_query_images_read_or_recorded_as_bad():
    layout, bad = _layout(), BadRows()
    hotel, raven, _, unknown, broken = list(read_evqa_csv(CSV, BadRows()))
    image = read_query_image(hotel, layout, bad)
    with PIL.Image.open(FIXTURES / "landmarks/6/e/1/6e158a47eb2ca3f6.jpg") as expected:
        np.testing.assert_array_equal(image, np.asarray(expected.convert("RGB")))
    assert read_query_image(raven, layout, bad, which=1).shape == (48, 48, 3)
    assert read_query_image(hotel, layout, bad, which=1) is None  # second GLDv2 id: no file
    assert read_query_image(unknown, layout, bad) is None
    assert read_query_image(broken, layout, bad) is None
    assert bad.reasons == {"missing_image": 1, "unknown_image_id": 1, "undecodable_image": 1}
    assert bad.examples[1] == f"{CSV} row 7: unknown_image_id: inaturalist id '999999999'"
    with pytest.raises(DataError, match=r"row 8: undecodable_image"):
        read_query_image(broken, layout, BadRows(strict=True))
    paths = BadRows()  # resolving alone (a stat) drops the unknown id and the missing file
    assert query_image_path(broken, layout, paths).name == "c0ffee0123456789.jpg"
    assert query_image_path(unknown, layout, paths) is None
    assert query_image_path(hotel, layout, paths, which=1) is None
    assert paths.reasons == {"unknown_image_id": 1, "missing_image": 1}


# Knowledge base --------------------------------------------------------------------------------


def test_kb_entries_typed_and_malformed_one_counted(tmp_path):
    bad = BadRows()
    entries = {e.url: e for e in wiki_kb.iter_kb(FIXTURES / "kb.json", bad)}
    assert list(entries) == [W + "Menger_Hotel", W + "Common_raven", W + "Common_sunflower"]
    raven = entries[W + "Common_raven"]
    assert raven.section_titles == ("Common raven", "Description", "Diet")
    assert raven.section_texts[1].endswith("wingspan of 100 to 150 cm.")
    assert raven.image_section_indices == (0, 2) and len(raven.image_urls) == 2
    assert bad.report()["skipped"] == {"malformed_entry": 1}
    assert bad.examples[0].startswith(f"kb entry {W}The_Alamo: malformed_entry")
    archive = tmp_path / "encyclopedic_kb_wiki.zip"  # the released KB is zipped
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(FIXTURES / "kb.json", "encyclopedic_kb_wiki.json")
    assert [e.url for e in wiki_kb.iter_kb(archive, BadRows())] == list(entries)


def test_lookup_keeps_what_queries_need_and_reports_absent_entries():
    queries = list(read_evqa_csv(CSV, BadRows()))
    needed = {url for q in queries for url in q.wikipedia_urls} | {W + "The_Alamo"}
    bad = BadRows()
    found = wiki_kb.lookup_kb(FIXTURES / "kb.json", needed, bad)
    assert set(found.entries) == {W + "Menger_Hotel", W + "Common_raven", W + "Common_sunflower"}
    assert found.absent == (W + "Riverwalk_Tower", W + "The_Alamo")  # not there / malformed
    assert found.report() == {"found": 3, "absent": 2, "examples": list(found.absent)}
    assert bad.reasons == {"malformed_entry": 1}


class _CountingReader(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.consumed, self.largest_read = 0, 0

    def read(self, n=-1):
        out = super().read(n)
        self.consumed += len(out)
        self.largest_read = max(self.largest_read, len(out))
        return out


def _big_kb(n: int) -> bytes:
    text = "lorem ipsum dolor sit amet " * 40
    kb = {
        f"{W}Page_{i}": {
            "title": f"Page {i}",
            "section_titles": [f"Page {i}", "More"],
            "section_texts": [text, text],
            "image_urls": [f"https://upload.wikimedia.org/{i}.jpg"],
            "image_reference_descriptions": [""],
            "image_section_indices": [1],
            "url": f"{W}Page_{i}",
        }
        for i in range(n)
    }
    return json.dumps(kb).encode()


def test_kb_is_streamed_never_loaded_whole(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the KB must not go through json.load(s)")

    monkeypatch.setattr(json, "load", refuse)
    monkeypatch.setattr(json, "loads", refuse)
    data = _big_kb(3000)  # about 7 MB
    early = _CountingReader(data)
    found = wiki_kb.lookup_kb(early, [W + "Page_3"], BadRows())
    assert list(found.entries) == [W + "Page_3"] and found.scanned == 4
    assert early.consumed < len(data) / 20 and early.largest_read <= 1 << 16
    late = _CountingReader(data)
    found = wiki_kb.lookup_kb(late, [W + "Page_2999", W + "Missing"], BadRows())
    assert list(found.entries) == [W + "Page_2999"] and found.absent == (W + "Missing",)
    assert found.scanned == 3000 and late.consumed == len(data)


def test_kb_that_is_not_an_object_or_is_cut_short_is_an_error(tmp_path):
    (tmp_path / "list.json").write_text('  [{"title": "x"}]')
    with pytest.raises(DataError, match="expected a JSON object"):
        list(wiki_kb.iter_kb(tmp_path / "list.json", BadRows()))
    data = (FIXTURES / "kb.json").read_bytes()
    (tmp_path / "cut.json").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"broken JSON after entry '{W}Menger_Hotel'"):
        list(wiki_kb.iter_kb(tmp_path / "cut.json", BadRows()))
    with pytest.raises(DataError, match="no such knowledge-base file"):
        wiki_kb.lookup_kb(tmp_path / "nope.json", [W + "X"], BadRows())


# Recall@K by url -------------------------------------------------------------------------------


def test_recall_hand_worked():
    a, b, c, d = (W + x for x in "ABCD")
    golds = [a, f"{b}|{c}", d, a]
    rankings = [
        [b, a, c],  # first gold at rank 2
        [a, a, a, c],  # repeats collapse: c is the 2nd distinct url
        [a, b, c],  # gold never retrieved
        [],  # nothing retrieved: a miss that still counts
    ]
    assert [first_hit_rank(g, r) for g, r in zip(golds, rankings, strict=True)] == [
        2,
        2,
        None,
        None,
    ]
    assert recall_at_k(golds, rankings, ks=(1, 2, 5)) == {1: 0.0, 2: 0.5, 5: 0.5}
    assert gold_urls(f" {b} | {c} ") == (b, c) and gold_urls([a]) == (a,)
    with pytest.raises(ValueError, match="gold url"):
        gold_urls("|")
    with pytest.raises(ValueError, match="2 gold entries but 1 rankings"):
        recall_at_k([a, b], [[a]])


def test_recall_agrees_with_ranx_hit_rate():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(0)
    pages = [f"{W}P{i}" for i in range(40)]
    golds, rankings = [], []
    for _ in range(60):
        gold = rng.choice(pages, size=int(rng.integers(1, 3)), replace=False)
        golds.append("|".join(gold))
        rankings.append(list(rng.choice(pages, size=20, replace=False)))
    ks = (1, 5, 10, 20)
    ours = recall_at_k(golds, rankings, ks)
    qrels = {f"q{i}": dict.fromkeys(gold_urls(g), 1) for i, g in enumerate(golds)}
    run = {f"q{i}": {u: float(20 - j) for j, u in enumerate(r)} for i, r in enumerate(rankings)}
    theirs = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), [f"hit_rate@{k}" for k in ks])
    assert 0 < ours[1] < ours[20] < 1
    for k in ks:
        assert ours[k] == pytest.approx(theirs[f"hit_rate@{k}"])
