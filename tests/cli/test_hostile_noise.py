"""Hostile inputs, class 7 (the command line's side): an error is one line and its cause's
first line; ``--verbose`` shows the whole traceback and cause chain. A benchmark whose
comparison needs an optional extra names the extra instead of a ModuleNotFoundError."""

import importlib.util
import subprocess
import sys

import pytest
from paths import ROOT
from refusals import refused

from jaxrank.cli import main as cli

RAISES = "def get_config():\n    raise RuntimeError('line one of the cause\\nline two')\n"


def test_error_line_and_first_line_of_its_cause(capsys, tmp_path):
    (tmp_path / "raises.py").write_text(RAISES)
    argv = ["train", "--config", tmp_path / "raises.py", "--workdir", tmp_path / "run"]
    err = refused(capsys, argv, tmp_path, culprit=("raises.py", "line one of the cause"))
    assert "line two" not in err.split("\n", 1)[1]  # the cause's first line only
    assert "--verbose" in err


def test_verbose_shows_the_traceback_and_cause_chain(capsys, tmp_path):
    (tmp_path / "raises.py").write_text(RAISES)
    argv = ["train", "--config", tmp_path / "raises.py", "--workdir", tmp_path / "run"]
    assert cli.main([str(a) for a in [*argv, "--verbose"]]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: line one of the cause" in err
    assert "The above exception was the direct cause" in err  # the chain, not just the top
    assert err.rstrip().splitlines()[-1].startswith("jaxrank: error:")


def test_verbose_on_a_nested_command(capsys, tmp_path):
    """``index build`` is a command inside a command: --verbose reaches it too."""
    argv = ["index", "build", "--config", tmp_path / "none.py", "--workdir", tmp_path]
    assert cli.main([*map(str, argv), "--out", str(tmp_path / "o"), "--verbose"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("trl") is not None, reason="TRL is installed")
def test_benchmark_names_the_missing_extra():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_grpo.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "pip install -e .[test,bench]" in done.stderr
    assert "ModuleNotFoundError" not in done.stderr and "Traceback" not in done.stderr
