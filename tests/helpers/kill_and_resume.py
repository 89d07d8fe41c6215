"""Killing a training command the hard way once it has written a given checkpoint."""

import signal
import subprocess
import time
from pathlib import Path


def sigkill_after(cmd: list[str], checkpoint: Path, env: dict[str, str]) -> None:
    """Run ``cmd`` until ``checkpoint`` exists (at most 300 s), then SIGKILL it."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not checkpoint.exists():
        assert proc.poll() is None and time.time() < deadline, f"no checkpoint {checkpoint}"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
