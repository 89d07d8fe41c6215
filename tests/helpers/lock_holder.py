"""A second process that holds a run folder's lock (``workdir_lock``) the way a training run
does, for the tests of what is refused beside it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HOLD = (
    "import sys, time\n"
    "from jaxrank.train.workdir import workdir_lock\n"
    "with workdir_lock(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(600)\n"
)


def start_holder(workdir: Path) -> subprocess.Popen:
    """The holder process, returned once it holds the lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


@contextlib.contextmanager
def held(workdir: Path) -> Iterator[subprocess.Popen]:
    """``workdir`` locked by another process for the block; SIGKILLed after it."""
    proc = start_holder(workdir)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
