"""``jaxrank index build`` and ``jaxrank search`` in-process, on a tiny run folder."""

import json

import contrastive_tiny
import numpy as np
import pytest
from contrastive_tiny import CONFIG

from jaxrank.cli import main as cli
from jaxrank.configs import apply_overrides, load_config_file
from jaxrank.contrastive.encoder import initial_state, setup
from jaxrank.search import Index
from jaxrank.train.checkpoint import Checkpointer
from jaxrank.train.workdir import prepare_workdir

TINY = [*contrastive_tiny.TINY, "train.steps=4"]
OVERRIDES = [f"--config.{o}" for o in TINY]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder as ``jaxrank train`` leaves it (config.json, an orbax checkpoint), with the
    freshly initialised state as its checkpoint: these tests are about the plumbing, not the
    weights, and skip the training and evaluation compiles."""
    workdir = tmp_path_factory.mktemp("search_cli") / "run"
    cfg = apply_overrides(load_config_file(CONFIG), TINY)
    prepare_workdir(workdir, cfg)
    _, _, _, params = setup(cfg)
    state = initial_state(cfg, params)
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        checkpointer.save(0, state, {})
    return workdir


def jaxrank(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_build_then_search_synthetic_queries(run, capsys):
    index_path = run / "kb.safetensors"
    code, out, err = jaxrank(
        capsys, "index", "build", "--config", CONFIG, "--workdir", run, "--out", index_path,
        *OVERRIDES,
    )  # fmt: skip
    assert code == 0, err
    assert "indexed 32 pair entries" in out
    index = Index.load(index_path)
    assert len(index) == 32 and index.dim == 16
    np.testing.assert_array_equal(index.ids, np.arange(32))

    results = run / "search.jsonl"
    code, out, err = jaxrank(
        capsys, "search", "--index", index_path, "--config", CONFIG, "--workdir", run,
        "--k", 5, "--out", results, *OVERRIDES,
    )  # fmt: skip
    assert code == 0, err
    rows = read_jsonl(results)
    assert [r["query"] for r in rows] == list(range(16))
    for row in rows:
        assert len(row["ids"]) == 5 and len(set(row["ids"])) == 5
        assert set(row["ids"]) <= set(range(32)) and 0 <= row["entity"] < 32
        assert row["scores"] == sorted(row["scores"], reverse=True)
    assert "recall@5 of the default test queries (full)" in out


def test_search_queries_from_a_file(run, capsys, tmp_path):
    index_path = tmp_path / "image.safetensors"
    code, _, err = jaxrank(
        capsys, "index", "build", "--config", CONFIG, "--workdir", run, "--out", index_path,
        "--entry", "image", "--metric", "l2", *OVERRIDES,
    )  # fmt: skip
    assert code == 0, err
    queries = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    np.save(tmp_path / "q.npy", queries)
    out_path = tmp_path / "r.jsonl"
    args = ["search", "--index", index_path, "--queries", tmp_path / "q.npy", "--k", 4]
    code, _, err = jaxrank(capsys, *args, "--out", out_path)
    assert code == 0, err
    expected = Index.load(index_path).search(queries, 4)
    rows = read_jsonl(out_path)
    assert [r["ids"] for r in rows] == expected.ids.tolist()
    np.testing.assert_allclose([r["scores"] for r in rows], expected.scores, rtol=1e-6)

    code, _, err = jaxrank(capsys, *args, "--out", out_path, "--metric", "ip")
    assert code == 2 and "built with metric 'l2', not 'ip'" in err
    np.save(tmp_path / "q.npy", queries[:, :5])
    code, _, err = jaxrank(capsys, *args, "--out", out_path)
    assert code == 2 and "queries have dimension 5, but the index holds 16" in err


def test_user_errors_exit_2(capsys, tmp_path):
    missing = tmp_path / "nothing.safetensors"
    code, _, err = jaxrank(
        capsys, "search", "--index", missing, "--queries", "q.npy", "--out", tmp_path / "o"
    )
    assert code == 2 and f"jaxrank: error: index file {missing} does not exist" in err
    code, _, err = jaxrank(
        capsys, "index", "build", "--config", CONFIG, "--workdir", tmp_path / "untrained",
        "--out", missing, *OVERRIDES,
    )  # fmt: skip
    assert code == 2 and "holds no trained run" in err
