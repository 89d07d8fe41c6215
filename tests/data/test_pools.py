"""Candidate pools: written and read back they give bit-identical arrays and the same ranking
metrics; a failed or killed write leaves the previous file; bad rows are named by file and
line and counted (or raised); EchoSight's and OMGM's results files read into the same pools
and score as their own URL-match recall does."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from paths import ROOT

from jaxrank import metrics
from jaxrank.data import pools
from jaxrank.data.errors import BadRows, DataError
from jaxrank.data.pools import (
    make_pool,
    read_echosight_results,
    read_omgm_results,
    read_pool,
    write_pool,
)

KS = (1, 5, 10)


def _first_stage(seed: int = 0, queries: int = 40, k: int = 12):
    """A top-k search result with ties, holes in ``valid`` and one empty row."""
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.choice(500, size=k, replace=False) for _ in range(queries)])
    scores = np.round(rng.normal(size=(queries, k)), 1).astype(np.float32)  # many ties
    valid = rng.random((queries, k)) > 0.15
    valid[3] = False
    positives = rng.choice(ids.ravel(), size=(queries, 2))  # mostly inside some pool
    positives[::4, 1] = -1
    return [f"q{i}" for i in range(queries)], ids, scores, valid, positives


@jax.jit
def _metrics(ids, scores, valid, positives):
    relevance = metrics.relevance_from_ids(ids, positives)
    report = metrics.ranking_report(scores, relevance, valid, ks=KS)
    fraction = {
        f"frac_r@{k}": metrics.fraction_recall_at_k(scores, relevance, k, valid) for k in KS
    }
    return report | {name: value.mean() for name, value in fraction.items()}


def _report(ids, scores, valid, positives):
    """jaxrank's ranking report (MRR, NDCG, R@k, CondR@k) and fraction recall@k, as floats."""
    return {
        name: np.asarray(v).item() for name, v in _metrics(ids, scores, valid, positives).items()
    }


def test_round_trip_gives_the_same_numbers(tmp_path):
    query_ids, ids, scores, valid, positives = _first_stage()
    pool = make_pool(query_ids, ids, scores, valid, meta={"retriever": "test"})
    write_pool(tmp_path / "pool.jsonl", pool)
    back = read_pool(tmp_path / "pool.jsonl", query_ids)
    assert back.query_ids == pool.query_ids and back.meta == {"retriever": "test"}
    assert back.scores.dtype == np.float32 and back.ids.dtype == np.int64
    np.testing.assert_array_equal(back.ids, pool.ids)
    np.testing.assert_array_equal(back.valid, pool.valid)
    np.testing.assert_array_equal(back.scores.view(np.uint32), pool.scores.view(np.uint32))
    original = _report(ids, scores, valid, positives)
    assert _report(back.ids, back.scores, back.valid, positives) == original
    assert 0 < original["recall@5"] < 1
    # Another order of the query set reorders rows, and the numbers stay.
    order = np.random.default_rng(1).permutation(len(query_ids))
    shuffled = read_pool(tmp_path / "pool.jsonl", [query_ids[i] for i in order])
    assert _report(shuffled.ids, shuffled.scores, shuffled.valid, positives[order]) == original


def test_string_ids_and_float64_round_trip(tmp_path):
    urls = [["https://en.wikipedia.org/wiki/A", "https://en.wikipedia.org/wiki/B"], []]
    scores = [[0.1 + 0.2, 1 / 3], []]
    pool = make_pool(["E-VQA_0", "E-VQA_1"], urls, scores, k=3, score_dtype=np.float64)
    write_pool(tmp_path / "p.jsonl", pool)
    back = read_pool(tmp_path / "p.jsonl")
    assert back.ids.tolist() == [[*urls[0], ""], ["", "", ""]]
    assert back.scores[0, :2].tolist() == [0.1 + 0.2, 1 / 3]
    positives = {"E-VQA_0": "https://en.wikipedia.org/wiki/B"}
    np.testing.assert_array_equal(back.relevance(positives), [[0, 1, 0], [0, 0, 0]])
    with pytest.raises(DataError, match="non-finite"):
        make_pool(["q"], [[1, 2]], [[0.5, float("nan")]])
    with pytest.raises(DataError, match="all strings or all ints"):
        make_pool(["q"], [[1, "x"]], [[0.5, 0.4]])
    with pytest.raises(DataError, match="non-finite"):  # beyond float32
        make_pool(["q"], [[1]], [[1e39]])


def test_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "pool.jsonl"
    query_ids, ids, scores, valid, _ = _first_stage()
    write_pool(path, make_pool(query_ids, ids, scores, valid))
    before = path.read_bytes()
    calls = []
    real = pools._row_line

    def fail_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(pools, "_row_line", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        write_pool(path, make_pool(query_ids, ids, scores + 1, valid))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["pool.jsonl"]


def test_killed_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "pool.jsonl"
    write_pool(path, make_pool(["a", "b"], [[1, 2], [3, 4]], [[0.5, 0.25], [1.0, 0.0]]))
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from jaxrank.data import pools
        real = pools._row_line
        def die_on_third(*args, calls=[]):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args)
        pools._row_line = die_on_third
        ids = np.arange(50).reshape(10, 5)
        pool = pools.make_pool([str(i) for i in range(10)], ids, np.ones((10, 5)))
        pools.write_pool({str(path)!r}, pool)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT)
    assert done.returncode == -9
    assert path.read_bytes() == before
    assert read_pool(path).ids.tolist() == [[1, 2], [3, 4]]


def _pool_file(path: Path, rows: list[str], k: int = 3, queries: int | None = None) -> Path:
    header = {"format": "jaxrank.pool", "version": 1, "k": k, "id_type": "int"}
    header |= {"queries": len(rows) if queries is None else queries, "score_dtype": "float32"}
    path.write_text("\n".join([json.dumps(header), *rows]) + "\n")
    return path


def test_bad_rows_are_named_by_file_and_line(tmp_path):
    path = _pool_file(
        tmp_path / "bad.jsonl",
        [
            '{"query": "a", "ids": [1, 2, 3], "scores": [0.9, 0.8, 0.7]}',
            '{"query": "zz", "ids": [1], "scores": [0.5]}',  # line 3: unknown query
            '{"query": "b", "ids": [1, 2], "scores": [0.9]}',  # ragged
            '{"query": "b", "ids": [1, 2, 3, 4], "scores": [4, 3, 2, 1]}',  # longer than k
            '{"query": "b", "ids": [1, 2], "scores": [0.5, NaN]}',
            '{"query": "b", "ids": [1, 2], "scores": [0.5, 1e39]}',  # inf as float32
            '{"query": "b", "ids": [1, 2], "scores": [0.5, "0.4"]}',
            '{"query": "b", "ids": ["x", 2], "scores": [0.5, 0.4]}',
            '{"query": "b", "ids": [-1], "scores": [0.5]}',
            '{"query": "b", "ids": [1, 2], ',
            '{"query": "a", "ids": [5], "scores": [0.1]}',  # duplicate
            '{"query": "b", "ids": [7], "scores": [2]}',
        ],
    )
    bad = BadRows(keep=20)
    pool = read_pool(path, ["a", "b", "c"], bad=bad)
    assert bad.report()["read"] == 2
    assert bad.report()["skipped"] == {
        "unknown_query": 1,
        "ragged_row": 2,
        "non_finite_score": 3,
        "malformed_row": 3,
        "duplicate_query": 1,
        "missing_query": 1,
    }
    assert bad.examples[0] == f"{path} line 3: unknown_query: query 'zz' is not in the query set"
    assert f"{path} line 6: non_finite_score" in bad.examples[3]
    assert pool.ids.tolist() == [[1, 2, 3], [7, -1, -1], [-1, -1, -1]]
    assert pool.valid.sum(axis=1).tolist() == [3, 1, 0]  # "c" has no row: scores as a miss
    with pytest.raises(DataError, match=r"bad\.jsonl line 4: ragged_row"):
        read_pool(path, ["a", "b", "zz"])  # strict by default


def test_bad_files(tmp_path):
    rows = ['{"query": "a", "ids": [1], "scores": [0.5]}']
    with pytest.raises(DataError, match="promises 2 rows, the file has 1: truncated"):
        read_pool(_pool_file(tmp_path / "short.jsonl", rows, queries=2))
    (tmp_path / "other.jsonl").write_text('{"query": "a"}\n')
    with pytest.raises(DataError, match=r"other\.jsonl line 1: not a jaxrank pool"):
        read_pool(tmp_path / "other.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="not a jaxrank pool header"):
        read_pool(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="no such pool file"):
        read_pool(tmp_path / "absent.jsonl")


def _url(name: str) -> str:
    return f"https://en.wikipedia.org/wiki/{name}"


def _url_recall(candidates: list[str], truth: str, k: int) -> float:
    """EchoSight's and OMGM's ``eval_recall``: the ground truth in the first k, list order."""
    return float(truth in candidates[:k])


def test_echosight_and_omgm_results(tmp_path):
    names = [f"E{i}" for i in range(25)]
    rng = np.random.default_rng(0)
    lists = {f"E-VQA_{q}": [_url(n) for n in rng.permutation(names)[:20]] for q in range(6)}
    truth = {q: _url(names[i]) for i, q in enumerate(lists)}
    sims = {q: sorted(rng.random(20).round(2).tolist(), reverse=True) for q in lists}  # ties
    echosight = {
        q: {
            "retrieved_entries": urls,
            "retrieval_similarities": sims[q],
            "reranked_entries": urls[::-1],
            "reranked_sections": ["some section"] * 10,
        }
        for q, urls in lists.items()
    }
    omgm = {
        q: {
            "retrieved_entities": [{"url": u, "title": u.rsplit("/", 1)[1]} for u in urls],
            "retrieval_similarities": sims[q],
            "sec_sim": [[0.3, 0.2]] * 20,
        }
        for q, urls in lists.items()
    }
    (tmp_path / "echosight.json").write_text(json.dumps(echosight, indent=4))
    (tmp_path / "result.json").write_text(json.dumps(omgm, indent=4))
    read = {
        "retrieved": read_echosight_results(tmp_path / "echosight.json"),
        "reranked": read_echosight_results(tmp_path / "echosight.json", ranked="reranked_entries"),
        "omgm": read_omgm_results(tmp_path / "result.json", list(lists)),
    }
    for kind, pool in read.items():
        assert pool.query_ids == tuple(lists) and pool.k == 20
        relevance = pool.relevance(truth)
        ranked = [u[::-1] if kind == "reranked" else u for u in lists.values()]
        for k in (1, 5, 10, 20):
            ours = metrics.recall_at_k(pool.scores, relevance, k, pool.valid)
            theirs = [_url_recall(c, truth[q], k) for q, c in zip(lists, ranked, strict=True)]
            assert np.asarray(ours).tolist() == theirs, (kind, k)
    # Bad rows of their files: ragged, non-finite, malformed, unknown query.
    echosight["E-VQA_1"]["retrieval_similarities"].pop()
    echosight["E-VQA_2"]["retrieval_similarities"][0] = float("nan")
    echosight["E-VQA_3"] = {"retrieved_entries": "not a list"}
    (tmp_path / "bad.json").write_text(json.dumps(echosight))
    bad = BadRows()
    pool = read_echosight_results(tmp_path / "bad.json", [*lists][:5], bad=bad)
    assert bad.report()["skipped"] == {
        "ragged_row": 1,
        "non_finite_score": 1,
        "malformed_row": 1,
        "unknown_query": 1,
        "missing_query": 3,
    }
    assert bad.examples[0] == (
        f"{tmp_path / 'bad.json'} query 'E-VQA_1': ragged_row: 20 ids, 19 scores"
    )
    assert pool.valid.sum(axis=1).tolist() == [20, 0, 0, 0, 20]
