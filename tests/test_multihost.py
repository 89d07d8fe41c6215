"""Multi-host through ``jax.distributed``: 2 CPU processes x 4 devices give what 1 x 8 gives.

Both runs are ``tests/helpers/multihost_worker.py`` (one contrastive step through the trainer
with its checkpoint, sharded embedding, one r-GRPO step, a sharded search); the two processes of
the multi-process run join through a coordinator on a free localhost port.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fast_xla import FAST_COMPILE
from paths import ROOT

from jaxrank import distributed

WORKER = ROOT / "tests" / "helpers" / "multihost_worker.py"
TIMEOUT_S = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict[str, str]:
    flags = [f"--xla_force_host_platform_device_count={devices}"]
    flags += [f"--{k}={str(v).lower()}" for k, v in FAST_COMPILE.items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    return dict(env, XLA_FLAGS=" ".join(flags), **extra)


def _start(out: Path, work: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        return subprocess.Popen(
            [sys.executable, str(WORKER), str(out), str(work)], env=env, stdout=f, stderr=f
        )


def _wait(runs: list[tuple[subprocess.Popen, Path]]) -> None:
    """Until every run has exited; the first failure kills the others (a process whose peer
    died would otherwise wait out the coordination service's timeouts)."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(proc.poll() is None for proc, _ in runs):
            for proc, log in runs:
                code = proc.poll()
                assert code in (None, 0), f"{log.name} exited {code}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"still running after {TIMEOUT_S} s"
            time.sleep(0.5)
        for proc, log in runs:
            assert proc.returncode == 0, (
                f"{log.name} exited {proc.returncode}:\n{log.read_text()[-4000:]}"
            )
    finally:
        for proc, _ in runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(single, [process 0, process 1], multi-process workdir)``: the worker's outputs."""
    root = tmp_path_factory.mktemp("multihost")
    address = f"127.0.0.1:{_free_port()}"
    started = [_start(root / "single", root / "single_work", _env(8), root / "single.log")]
    for i in range(2):
        env = _env(
            4,
            **{
                distributed.COORDINATOR: address,
                distributed.NUM_PROCESSES: "2",
                distributed.PROCESS_ID: str(i),
            },
        )
        started.append(_start(root / "multi", root / "multi_work", env, root / f"process_{i}.log"))
    logs = [root / "single.log", root / "process_0.log", root / "process_1.log"]
    _wait(list(zip(started, logs, strict=True)))
    load = lambda path: dict(np.load(path))
    multi = [load(root / "multi" / f"process_{i}.npz") for i in range(2)]
    return load(root / "single" / "process_0.npz"), multi, root / "multi_work"


def _tree(out: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [out[k] for k in sorted(out) if k.startswith(prefix + "/")]


@pytest.mark.slow
def test_the_processes_formed_one_run(runs):
    single, multi, _ = runs
    np.testing.assert_array_equal(single["processes"], [1, 8])
    for out in multi:
        np.testing.assert_array_equal(out["processes"], [2, 4])
        assert out.keys() == single.keys()


@pytest.mark.slow
def test_every_process_ends_with_the_same_values(runs):
    """Whatever a process reads back (parameters gathered from other hosts' devices, metrics,
    search results) is the same on every host."""
    _, (first, second), _ = runs
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["contrastive", "region_r1"])
def test_a_step_on_two_hosts_equals_one_host(runs, recipe):
    """The same update from the same initial parameters, to 1e-4 of the largest update. The
    contrastive batch is each process's slice of the data stream, so its rows come in another
    order (float rounding of the reductions differs); the r-GRPO batch keeps its order, so the
    sampled actions, rewards and decisions agree."""
    single, (multi, _), _ = runs
    initial = _tree(single, f"{recipe}/initial")
    for a, b in zip(initial, _tree(multi, f"{recipe}/initial"), strict=True):
        np.testing.assert_array_equal(a, b)
    updates = [
        [x - start for x, start in zip(_tree(out, f"{recipe}/trained"), initial, strict=True)]
        for out in (single, multi)
    ]
    largest = max(np.abs(u).max() for u in updates[0])
    assert largest > 1e-3, "the step did not move the parameters"
    for a, b in zip(*updates, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * largest)
    if recipe == "region_r1":
        for key in ("reward", "region_rate", "cond_r1", "invalid_box_rate", "grad_norm"):
            name = f"region_r1/metrics/['{key}']"
            np.testing.assert_allclose(multi[name], single[name], rtol=1e-5, err_msg=key)


@pytest.mark.slow
def test_checkpoint_written_by_both_processes_restores(runs):
    _, (multi, _), workdir = runs
    np.testing.assert_array_equal(multi["contrastive/restored_step"], [1, 1])
    for a, b in zip(
        _tree(multi, "contrastive/restored"), _tree(multi, "contrastive/trained"), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert (workdir / "contrastive" / "checkpoints" / "1").is_dir()


@pytest.mark.slow
def test_only_process_zero_writes_logs(runs):
    _, _, workdir = runs
    rows = [json.loads(line) for line in (workdir / "contrastive" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [1]
    assert len(list((workdir / "contrastive" / "tb").iterdir())) == 1


@pytest.mark.slow
def test_sharded_embedding_and_search_span_the_processes(runs):
    single, (multi, _), _ = runs
    np.testing.assert_allclose(
        multi["contrastive/kb_pair"], single["contrastive/kb_pair"], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_array_equal(multi["search/ids"], single["search/ids"])
    np.testing.assert_allclose(multi["search/scores"], single["search/scores"], rtol=1e-6)
    np.testing.assert_array_equal(multi["search/loaded_ids"], multi["search/ids"])
    np.testing.assert_array_equal(multi["search/loaded_scores"], multi["search/scores"])


def test_environment_parsing():
    env = {
        distributed.COORDINATOR: "10.0.0.2:1234",
        distributed.NUM_PROCESSES: "4",
        distributed.PROCESS_ID: "3",
    }
    assert distributed.from_environment({}) is None
    assert distributed.from_environment(env) == ("10.0.0.2:1234", 4, 3)
    bad = [
        ({distributed.PROCESS_ID: "0"}, "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES not set"),
        ({**env, distributed.PROCESS_ID: "4"}, "must be in [0, JAX_NUM_PROCESSES=4)"),
        ({**env, distributed.NUM_PROCESSES: "two"}, "must be integers"),
        ({**env, distributed.COORDINATOR: "10.0.0.2"}, "must be host:port"),
    ]
    for environ, message in bad:
        with pytest.raises(distributed.DistributedError, match=re.escape(message)):
            distributed.from_environment(environ)
