"""Hostile inputs, classes 1, 2 and 5: run folders that cannot hold the run, a refused command
that must not block its correction, and the silent-wrong-result cases (eval on nothing, eval
over the training report, a resume on another mesh)."""

import json
import os
import shutil

import contrastive_tiny
import jax
import pytest
from contrastive_tiny import CONFIG
from fast_xla import fast_compile
from refusals import refused, snapshot

from jaxrank.cli import main as cli
from jaxrank.cli.run_folder import check_run
from jaxrank.configs import apply_overrides, load_config_file

# 0 steps: the untrained encoder saved as step 0 and evaluated, a whole run without the
# training step's compilation (these tests are about the run folder, not the weights).
RUN = [f"--config.{o}" for o in (*contrastive_tiny.TINY, "train.steps=0")]


def train(workdir, *extra):
    return ["train", "--config", CONFIG, "--workdir", workdir, *RUN, *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run, made by the corrected twin of a refused command (class 2:
    the refusal wrote nothing, so the correction is not "a different config"), then
    re-evaluated with ``eval`` (in the same compilation context: its programs are the
    training run's evaluation programs). Returns the folder and its training report's hashes
    before the ``eval``."""
    workdir = tmp_path_factory.mktemp("hostile") / "run"
    assert cli.main([str(a) for a in train(workdir, "--config.train.batch_size=0")]) == 2
    assert not workdir.exists()
    with fast_compile():  # its time is almost all compilation
        assert cli.main([str(a) for a in train(workdir)]) == 0
        trained = snapshot(workdir / "report.json", workdir / "report.md")
        assert (
            cli.main([str(a) for a in ["eval", "--config", CONFIG, "--workdir", workdir, *RUN]])
            == 0
        )
    return workdir, trained


def test_refusal_wrote_nothing_so_the_correction_ran(run):
    run, _ = run
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["batch_size"] == 16
    assert saved["mesh"] == {"data": 8, "model": 1}  # recorded resolved, not -1
    assert (run / "report.json").is_file()


def test_workdir_is_a_file(capsys, tmp_path):
    target = tmp_path / "run"
    target.write_text("not a folder")
    refused(capsys, train(target), target, culprit=(str(target), "is a file"))


def test_parent_missing(capsys, tmp_path):
    target = tmp_path / "missing" / "run"
    refused(capsys, train(target), tmp_path, culprit="does not exist")


def test_workdir_read_only(capsys, tmp_path, monkeypatch):
    target = tmp_path / "run"
    target.mkdir()
    target.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: answer as a read-only mount answers root
        real = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if p == target and mode & os.W_OK else real(p, mode)
        )
    refused(capsys, train(target), target, culprit=(str(target), "not writable"))


@pytest.mark.parametrize(
    ("content", "culprit"),
    [
        (None, "is not a file"),  # config.json is a folder
        ('{"train": ', "is not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (b"\xff\xfe\x00", "is not valid JSON"),
    ],
)
def test_config_json_damaged(capsys, tmp_path, content, culprit):
    target = tmp_path / "run"
    target.mkdir()
    saved = target / "config.json"
    if content is None:
        saved.mkdir()
    elif isinstance(content, bytes):
        saved.write_bytes(content)
    else:
        saved.write_text(content)
    refused(capsys, train(target), target, culprit=("config.json", culprit))


def test_eval_on_nothing_creates_nothing(capsys, tmp_path):
    missing = tmp_path / "typo"
    argv = ["eval", "--config", CONFIG, "--workdir", missing, *RUN]
    refused(capsys, argv, missing, culprit=(str(missing), "does not exist"))
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["eval", "--config", CONFIG, "--workdir", empty, *RUN]
    refused(capsys, argv, empty, culprit="holds no run")


def test_resume_with_another_config(capsys, run):
    run, _ = run
    err = refused(capsys, train(run, "--config.train.learning_rate=0.5"), run, culprit=str(run))
    assert "train.learning_rate: 0.001 -> 0.5" in err


def test_resume_on_another_mesh(capsys, run, monkeypatch):
    """The run recorded its resolved mesh, data=8 x model=1. Resuming where ``mesh.data=-1``
    resolves to 4 devices (``jax.device_count`` answering as a 4-device machine does), or on
    the same 8 devices split 4 x 2, would not continue bit-exactly: refused."""
    run, _ = run
    mesh = ["--config.mesh.data=4", "--config.mesh.model=2"]
    err = refused(capsys, train(run, *mesh), run, culprit="data=8 x model=1 mesh")
    assert "not continue bit-exactly" in err
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    err = refused(capsys, train(run), run, culprit="data=8 x model=1 mesh")
    assert "mesh.data: 8 -> 4" in err


def test_malformed_metrics_line(capsys, run, tmp_path):
    """A resume cuts metrics.jsonl at its checkpoint: a damaged line in the middle (not the
    last line, which a kill may cut short) is named by file and line before the run starts."""
    copy = tmp_path / "run"
    shutil.copytree(run[0], copy)
    metrics = copy / "metrics.jsonl"
    for first in ('{"step": 1, oops', '{"step": "one"}', "[1]"):
        metrics.write_text(f'{first}\n{{"step": 2, "train/loss": 1.0}}\n')
        refused(capsys, train(copy), copy, culprit=(f"{metrics}:1", "integer 'step'"))


def test_eval_keeps_the_training_report(run):
    """``eval`` on a finished run wrote eval_report.*; report.json kept its training time and
    devices (it used to be overwritten with "0 s on ")."""
    run, trained_hashes = run
    assert snapshot(run / "report.json", run / "report.md") == trained_hashes
    trained = json.loads((run / "report.json").read_text())
    evaluated = json.loads((run / "eval_report.json").read_text())
    assert trained["train"]["train_seconds"] > 0 and trained["train"]["devices"]
    assert evaluated.keys() == trained.keys()
    assert (run / "eval_report.md").is_file()


def test_folder_from_before_resolved_meshes_is_re_entered(run, tmp_path):
    """A run folder written with ``mesh.data=-1`` (before meshes were recorded resolved) is
    accepted as before; its config.json is not rewritten."""
    copy = tmp_path / "run"
    shutil.copytree(run[0], copy, ignore=shutil.ignore_patterns("checkpoints"))
    saved = json.loads((copy / "config.json").read_text())
    saved["mesh"]["data"] = -1
    (copy / "config.json").write_text(json.dumps(saved))
    before = snapshot(copy / "config.json")
    cfg = apply_overrides(load_config_file(CONFIG), [o.removeprefix("--config.") for o in RUN])
    check_run(cfg, copy)
    assert snapshot(copy / "config.json") == before
