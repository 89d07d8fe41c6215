"""A damaged E-VQA CSV is refused with the row and line at fault: a quote left open (which would
swallow the rows after it), bytes that are not UTF-8 in a row or in the header. Through
``jaxrank data check``: exit 2, one line, nothing written."""

import csv
import io

import pytest
from evqa_fixture import evqa_paths
from paths import CONFIGS
from refusals import refused, snapshot

from jaxrank.data.errors import BadRows, DataError
from jaxrank.data.evqa import read_evqa_csv

HEADER = ["question", "answer", "question_type", "dataset_name", "dataset_image_ids"]
HEADER += ["wikipedia_url", "evidence"]


def csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([HEADER, *rows])
    return out.getvalue()


def row(i: int, evidence: str = "") -> list[str]:
    return [f"question {i}?", "a", "automatic", "inaturalist", str(i), "https://w/x", evidence]


def read(path):
    bad = BadRows()
    return [e.question for e in read_evqa_csv(path, bad)], bad.report()


def test_a_multiline_cell_is_one_row(tmp_path):
    """What strict quoting must keep accepting: a quoted cell with line breaks and commas."""
    (tmp_path / "ok.csv").write_text(csv_text([row(0, "two,\nlines"), row(1)]))
    questions, report = read(tmp_path / "ok.csv")
    assert questions == ["question 0?", "question 1?"] and report["skipped"] == {}


def test_an_open_quote_that_runs_to_the_end_of_the_file(tmp_path):
    # Row 1's question opens a quote that nothing closes: rows 2 and 3 would become its cell.
    text = csv_text([row(0), row(1), row(2), row(3)]).replace("question 1?", '"question 1?')
    (tmp_path / "open.csv").write_text(text)
    message = (
        r"open\.csv row 1 \(line 3\): a quoted cell opened here is still open at line 5 "
        r"\(unexpected end of data\): a closing quote is missing"
    )
    with pytest.raises(DataError, match=message):
        read(tmp_path / "open.csv")


def test_an_open_quote_closed_by_a_later_rows_quote(tmp_path):
    """The swallowed text keeps the header's cell count (7): without strict quoting this row
    would be read as one good example holding rows 2-3 in its last cell."""
    rows = [row(0), row(1, "unclosed"), row(2), row(3, "x, quoted"), row(4)]
    text = csv_text(rows).replace(",unclosed\n", ',"unclosed\n')
    (tmp_path / "swallow.csv").write_text(text)
    with pytest.raises(DataError, match=r"row 1 \(line 3\): .* still open at line 5 "):
        read(tmp_path / "swallow.csv")


def test_bytes_that_are_not_utf8_name_their_row(tmp_path):
    # 300 rows of ~60 bytes before it: past the 8 KiB blocks a text reader decodes at once.
    rows = [row(i) for i in range(302)]
    data = csv_text(rows).encode().replace(b"question 300?", b"question \xff300?")
    (tmp_path / "latin.csv").write_bytes(data)
    message = r"latin\.csv row 300 \(line 302\): not UTF-8 text \(invalid start byte at byte 9 "
    with pytest.raises(DataError, match=message):
        read(tmp_path / "latin.csv")
    (tmp_path / "header.csv").write_bytes(b"question,\xe9nswer\n" + data.split(b"\n", 1)[1])
    with pytest.raises(DataError, match=r"header\.csv the header \(line 1\): not UTF-8 text"):
        read(tmp_path / "header.csv")


def test_data_check_refuses_the_damaged_file(capsys, tmp_path):
    paths = evqa_paths()
    text = paths["test_csv"].read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    head, _, last = lines[2].rpartition(",")
    lines[2] = f'{head},"{last}'  # row 1's last cell opens a quote; a later row's closes it
    (tmp_path / "test.csv").write_text("".join(lines))
    paths["train_csv"] = paths["test_csv"] = tmp_path / "test.csv"
    argv = ["data", "check", "--config", CONFIGS / "region_r1" / "evqa.py"]
    argv += [
        "--out",
        tmp_path / "out",
        "--config.scorer_checkpoint=",
        "--config.policy.checkpoint=",
    ]
    argv += [f"--config.data.{key}={value}" for key, value in paths.items()]
    before = snapshot(tmp_path)
    refused(
        capsys, argv, tmp_path, culprit=(f"{tmp_path / 'test.csv'} row 1 (line 3)", "still open")
    )
    assert snapshot(tmp_path) == before
