"""InfoSeek readers on tiny files in the released formats (tests/fixtures/infoseek): bad lines
are counted and named by file and line (or raise in strict mode), the withkb join, the OVEN
image-path rule, the val subsets, and a Wiki6M lookup that keeps only referenced entities,
reports the absent ones and streams (a large file is never loaded whole).

Fixture layout: ``infoseek_val.jsonl`` (lines 3, 4, 8, 10 bad; line 5 has no withkb entry;
line 6's image is missing; line 7's entity is not in Wiki6M), ``infoseek_val_withkb.jsonl``
(lines 6-8 bad), ``infoseek_test.jsonl`` (unlabelled; line 2 bad), ``Wiki6M_ver_1_0.jsonl``
(lines 5-6 bad, line 7 repeats Q9202 with an image URL), ``oven_images/<2 digits>/`` holding
three small images made from skimage.data (.jpg, .JPEG, .png).
"""

import gzip
import json
import tracemalloc
from pathlib import Path

import numpy as np
import paths
import PIL.Image
import pytest

from jaxrank.data.errors import BadRows, DataError
from jaxrank.data.infoseek import (
    UNSEEN_ENTITY,
    UNSEEN_QUESTION,
    EntityLink,
    NumericAnswer,
    keep_known,
    lookup_entities,
    oven_image_path,
    read_infoseek,
    read_query_image,
    read_wiki6m,
    read_withkb,
    referenced_entities,
    subset,
)

FIXTURES = paths.FIXTURES / "infoseek"
VAL = FIXTURES / "infoseek_val.jsonl"
WITHKB = FIXTURES / "infoseek_val_withkb.jsonl"
WIKI6M = FIXTURES / "Wiki6M_ver_1_0.jsonl"
IMAGES = FIXTURES / "oven_images"


def _joined(bad: BadRows | None = None):
    return list(read_infoseek(VAL, bad or BadRows(), links=read_withkb(WITHKB, BadRows())))


def test_qa_reader_fields_and_bad_lines():
    bad = BadRows()
    examples = list(read_infoseek(VAL, bad))
    assert [e.line for e in examples] == [1, 2, 5, 6, 7]
    first, numeric = examples[0], examples[1]
    assert first.data_id == "infoseek_val_00000001"
    assert first.image_id == "oven_01963180"
    assert first.question == "Which country is this bird native to?"
    assert first.answer == ("China",)
    assert first.answer_eval == ("China", "PRC", "People's Republic of China", "CN")
    assert first.data_split == "val_unseen_question"
    assert first.entity_id is None and first.where == f"{VAL} line 1"
    assert numeric.answer_eval == (NumericAnswer(330.0, 297.0, 363.0),)
    assert bad.report()["read"] == 5
    assert bad.reasons == {"invalid_json": 1, "missing_key": 1, "duplicate_id": 1, "bad_field": 1}
    assert bad.examples[0].startswith(f"{VAL} line 3: invalid_json: ")
    assert bad.examples[1] == f"{VAL} line 4: missing_key: no 'question'"
    assert bad.examples[2] == f"{VAL} line 8: duplicate_id: infoseek_val_00000001 already read"
    assert bad.examples[3].startswith(f"{VAL} line 10: bad_field: 'answer' is 'seeds'")
    with pytest.raises(DataError, match=r"infoseek_val\.jsonl line 3: invalid_json"):
        list(read_infoseek(VAL, BadRows(strict=True)))


def test_unlabelled_split_has_no_answers():
    bad = BadRows()
    examples = list(read_infoseek(FIXTURES / "infoseek_test.jsonl", bad, labelled=False))
    assert [(e.data_id, e.answer, e.answer_eval, e.data_split, e.subset) for e in examples] == [
        ("infoseek_test_00000000", (), (), "", None),
        ("infoseek_test_00000002", (), (), "", None),
    ]
    assert bad.examples == [
        f"{FIXTURES / 'infoseek_test.jsonl'} line 2: missing_key: no 'image_id'"
    ]
    # read as labelled, every row lacks its answers
    labelled = BadRows()
    assert list(read_infoseek(FIXTURES / "infoseek_test.jsonl", labelled)) == []
    assert labelled.reasons == {"missing_key": 3}


def test_withkb_join():
    bad = BadRows()
    links = read_withkb(WITHKB, bad)
    assert links == {
        "infoseek_val_00000001": EntityLink("Q200339", "Mandarin duck"),
        "infoseek_val_00000002": EntityLink("Q243", "Eiffel Tower"),
        "infoseek_val_00000004": EntityLink("Q243", "Eiffel Tower"),
        "infoseek_val_00000006": EntityLink("Q9202", "Statue of Liberty"),
        "infoseek_val_00000007": EntityLink("Q987654321", "Unlisted fig"),
    }
    assert bad.reasons == {"missing_key": 1, "bad_field": 1, "invalid_json": 1}
    assert bad.examples[0] == f"{WITHKB} line 6: missing_key: no 'entity_id'"
    assert bad.examples[1].startswith(f"{WITHKB} line 7: bad_field: 'entity_id' is 'mandarin duck'")
    with pytest.raises(DataError, match=r"withkb\.jsonl line 6: missing_key"):
        read_withkb(WITHKB, BadRows(strict=True))

    joined_bad = BadRows()
    joined = _joined(joined_bad)
    assert [(e.line, e.entity_id, e.entity_text) for e in joined] == [
        (1, "Q200339", "Mandarin duck"),
        (2, "Q243", "Eiffel Tower"),
        (6, "Q9202", "Statue of Liberty"),
        (7, "Q987654321", "Unlisted fig"),
    ]
    assert joined_bad.reasons["no_entity"] == 1
    assert f"{VAL} line 5: no_entity: infoseek_val_00000005 is not in the withkb file" in (
        joined_bad.examples
    )


def test_val_subsets():
    assert subset("val_unseen_question") == UNSEEN_QUESTION
    assert subset("val_unseen_entity") == UNSEEN_ENTITY
    assert subset("train") is None and subset("") is None
    examples = list(read_infoseek(VAL, BadRows()))
    assert [e.subset for e in examples] == [
        UNSEEN_QUESTION,
        UNSEEN_ENTITY,
        UNSEEN_QUESTION,
        UNSEEN_ENTITY,
        UNSEEN_ENTITY,
    ]


def test_oven_image_path_rule():
    assert oven_image_path("oven_01963180", IMAGES) == IMAGES / "01" / "oven_01963180.jpg"
    assert oven_image_path("oven_05012345", IMAGES) == IMAGES / "05" / "oven_05012345.JPEG"
    assert oven_image_path("oven_00000042", IMAGES) == IMAGES / "00" / "oven_00000042.png"
    assert oven_image_path("oven_07777777", IMAGES) == IMAGES / "07" / "oven_07777777.jpg"
    assert oven_image_path("oven_01963180", "/x", layout="flat") == Path("/x/oven_01963180.jpg")
    with pytest.raises(DataError, match="not an OVEN image id"):
        oven_image_path("img_12", IMAGES)
    with pytest.raises(ValueError, match="layout"):
        oven_image_path("oven_01963180", IMAGES, layout="nested")


def test_query_images_read_and_missing_one_named():
    bad = BadRows()
    images = {e.line: read_query_image(e, IMAGES, bad) for e in _joined()}
    for line, image in images.items():
        if line != 6:
            assert image.dtype == np.uint8 and image.shape == (40, 48, 3)
    with PIL.Image.open(IMAGES / "00" / "oven_00000042.png") as png:
        np.testing.assert_array_equal(images[7], np.asarray(png.convert("RGB")))
    assert images[6] is None
    assert bad.reasons == {"missing_image": 1}
    assert bad.examples[0].startswith(f"{VAL} line 6: missing_image: no file ")
    assert bad.examples[0].endswith("oven_07777777.jpg")


def test_wiki6m_reader_every_line():
    bad = BadRows()
    entities = list(read_wiki6m(WIKI6M, bad))
    assert [e.wikidata_id for e in entities] == ["Q200339", "Q243", "Q9202", "Q42", "Q9202"]
    duck = entities[0]
    assert duck.title == "Mandarin duck" and duck.summary == "A perching duck of East Asia."
    assert duck.content.startswith("The mandarin duck") and duck.image_url.endswith(".jpg")
    assert entities[2].image_url is None and entities[3].image_url is None  # absent / ""
    assert bad.reasons == {"invalid_json": 1, "missing_key": 1}
    assert bad.examples[1] == f"{WIKI6M} line 6: missing_key: no 'wikipedia_title'"


def test_lookup_keeps_referenced_reports_absent_and_drops_their_questions():
    joined = _joined()
    wanted = referenced_entities(joined)
    assert wanted == {"Q200339", "Q243", "Q9202", "Q987654321"}
    bad = BadRows()
    lookup = lookup_entities(WIKI6M, wanted, bad)
    assert sorted(lookup.entities) == ["Q200339", "Q243", "Q9202"]
    assert lookup.absent == ("Q987654321",)
    assert lookup.report() == {
        "found": 3,
        "absent": 1,
        "absent_examples": ["Q987654321"],
        "repeated": 1,
    }
    statue = lookup.entities["Q9202"]
    assert statue.line == 7 and statue.image_url.endswith("statue_of_liberty.jpg")
    assert lookup.entities["Q243"].title == "Eiffel Tower"  # its content quotes another id
    assert bad.report() == {"read": 3, "skipped": {}, "examples": []}  # bad lines not wanted

    kept_bad = BadRows()
    kept = list(keep_known(joined, lookup, kept_bad))
    assert [e.line for e in kept] == [1, 2, 6]
    assert kept_bad.examples == [f"{VAL} line 7: absent_entity: Q987654321 is not in the KB"]
    with pytest.raises(DataError, match=r"line 7: absent_entity"):
        list(keep_known(joined, lookup, BadRows(strict=True)))


def test_wanted_bad_line_is_named_and_gzip_reads_the_same(tmp_path):
    bad = BadRows()
    assert lookup_entities(WIKI6M, {"Q5", "Q243"}, bad).absent == ("Q5",)
    assert bad.examples == [f"{WIKI6M} line 6: missing_key: no 'wikipedia_title'"]

    packed = tmp_path / "Wiki6M_ver_1_0.jsonl.gz"
    packed.write_bytes(gzip.compress(WIKI6M.read_bytes()))
    assert list(read_wiki6m(packed, BadRows())) == list(read_wiki6m(WIKI6M, BadRows()))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: unreadable after line"):
        list(read_wiki6m(cut, BadRows()))
    with pytest.raises(DataError, match="no such file"):
        list(read_infoseek(tmp_path / "nope.jsonl", BadRows()))


def test_lookup_streams_a_large_file(tmp_path, monkeypatch):
    big = tmp_path / "Wiki6M_ver_1_0.jsonl"
    filler = "lorem ipsum " * 40
    with big.open("w") as f:
        for i in range(1, 20_001):
            row = {"wikidata_id": f"Q{i}", "wikipedia_title": f"Entity {i}"}
            row |= {"wikipedia_summary": "", "wikipedia_content": filler}
            f.write(json.dumps(row) + "\n")
    size = big.stat().st_size
    assert size > 9_000_000

    def refuse(*args, **kwargs):
        raise AssertionError("the whole file was loaded")

    monkeypatch.setattr(json, "load", refuse)
    monkeypatch.setattr(Path, "read_text", refuse)
    monkeypatch.setattr(Path, "read_bytes", refuse)
    tracemalloc.start()
    try:
        lookup = lookup_entities(big, {"Q7", "Q19999", "Q30000"}, BadRows())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sorted(lookup.entities) == ["Q19999", "Q7"] and lookup.absent == ("Q30000",)
    assert peak < size / 20, (peak, size)
