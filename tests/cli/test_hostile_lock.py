"""Hostile inputs, class 3: two runs on one workdir. The lock is held by a real second process;
a run started beside it is refused naming that process, and once the holder is killed with
SIGKILL the OS has dropped its lock, so the next run takes the folder (a CLI resume after
kill -9 through this same lock: tests/contrastive/test_recipe.py's sigkill test)."""

import json
import os
import socket
import time

import contrastive_tiny
from contrastive_tiny import CONFIG
from lock_holder import held
from refusals import refused

from jaxrank.train.workdir import HOLDER_FILE, workdir_lock

TINY = [f"--config.{o}" for o in (*contrastive_tiny.TINY, "train.steps=2")]


def test_second_run_refused_then_kill_frees_the_folder(capsys, tmp_path):
    """One holder process (its start costs seconds): first refused beside it, then killed."""
    workdir = tmp_path / "run"
    with held(workdir) as proc:
        refused_beside(capsys, workdir, proc)
    taken_after_kill(workdir, proc)


def refused_beside(capsys, workdir, proc):
    info = json.loads((workdir / HOLDER_FILE).read_text())
    argv = ["train", "--config", CONFIG, "--workdir", workdir, *TINY]
    holder = f"process {proc.pid} on host {socket.gethostname()}, started {info['started']}"
    refused(capsys, argv, workdir, culprit=(holder, "is in use"))


def taken_after_kill(workdir, proc):
    stale = json.loads((workdir / HOLDER_FILE).read_text())
    assert stale["pid"] == proc.pid  # a kill leaves its holder file; the OS dropped the lock
    started = time.monotonic()
    with workdir_lock(workdir):
        assert json.loads((workdir / HOLDER_FILE).read_text())["pid"] == os.getpid()
    assert time.monotonic() - started < 5  # taken at once, not after a timeout
    assert not (workdir / HOLDER_FILE).exists()
