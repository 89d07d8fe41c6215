"""Hostile inputs, class 1: query files and arguments ``jaxrank search`` cannot use (an empty
file, no rows, one vector without a batch axis, a pickle, a folder to write into that is not
there). Each is named, exit 2, before the index is searched; nothing on disk changes."""

import pickle

import numpy as np
import pytest
from refusals import refused

from jaxrank.search import Index


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "kb.safetensors"
    built = Index(4, "ip")
    built.add(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    built.save(path)
    return path


def search(index, queries, out, *extra):
    return ["search", "--index", index, "--queries", queries, "--out", out, *extra]


@pytest.mark.parametrize(
    ("write", "culprit"),
    [
        (lambda p: p.write_bytes(b""), "is not a .npy array"),  # an empty file
        (lambda p: np.save(p, np.zeros((0, 4), np.float32)), "shape (0, 4)"),
        (lambda p: np.save(p, np.zeros(4, np.float32)), "shape (4,)"),
        (lambda p: p.write_bytes(pickle.dumps([[0.0] * 4])), "is not a .npy array"),
        (lambda p: np.save(p, np.array([{"a": 1}]), allow_pickle=True), "is not a .npy array"),
    ],
    ids=["empty-file", "no-rows", "one-vector", "pickle", "object-array"],
)
def test_unusable_queries(capsys, index, tmp_path, write, culprit):
    queries = tmp_path / "queries.npy"
    write(queries)
    out = tmp_path / "out.jsonl"
    refused(capsys, search(index, queries, out), tmp_path, culprit=(str(queries), culprit))


def test_queries_missing(capsys, index, tmp_path):
    queries = tmp_path / "queries.npy"
    refused(capsys, search(index, queries, tmp_path / "o.jsonl"), tmp_path, culprit=str(queries))


def test_out_unwritable(capsys, index, tmp_path):
    queries = tmp_path / "queries.npy"
    np.save(queries, np.ones((2, 4), np.float32))
    out = tmp_path / "no-such-folder" / "out.jsonl"
    refused(capsys, search(index, queries, out), tmp_path, culprit=str(out))
    refused(capsys, search(index, queries, tmp_path), tmp_path, culprit=str(tmp_path))
    argv = search(index, queries, tmp_path / "o.jsonl", "--k", "0")
    refused(capsys, argv, tmp_path, culprit="--k 0")
