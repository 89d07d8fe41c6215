"""Hostile inputs, class 1: config values that can never work, and config files that cannot
be read. Each is refused before the run folder exists (nothing written, exit 2, one line)."""

import contrastive_tiny
import pytest
from contrastive_tiny import CONFIG
from refusals import refused

# Two steps at most, should a refusal ever fail and the run start.
TINY = [f"--config.{o}" for o in (*contrastive_tiny.TINY, "train.steps=2")]


@pytest.mark.parametrize(
    ("override", "culprit"),
    [
        ("train.batch_size=0", "'train.batch_size' is 0"),
        ("train.batch_size=-16", "'train.batch_size' is -16"),
        ("eval.batch_size=0", "'eval.batch_size' is 0"),
        ("train.steps=-1", "'train.steps' is -1"),  # used to train nothing and exit 0
        ("train.log_every=0", "'train.log_every' is 0"),
        ("train.checkpoint_every=-5", "'train.checkpoint_every' is -5"),
        ("train.warmup_steps=-1", "'train.warmup_steps' is -1"),
        ("train.learning_rate=1e400", "'train.learning_rate' is inf"),
        ("train.learning_rate=-0.1", "'train.learning_rate' is -0.1"),
        ("train.profile_steps=(5, 2)", "'train.profile_steps' is (5, 2)"),
        ("train.profile_steps=(1, 9999)", "'train.profile_steps'"),
        ("mesh.data=16", "'mesh.data' is 16"),  # more devices than the 8 there are
        ("mesh.data=0", "'mesh.data' is 0"),
        ("mesh.model=3", "'mesh.model' is 3"),  # does not divide 8 devices
        ("train.batch_size=12", "'train.batch_size' is 12"),  # not a multiple of 8
    ],
)
def test_impossible_value(capsys, tmp_path, override, culprit):
    workdir = tmp_path / "run"
    argv = ["train", "--config", CONFIG, "--workdir", workdir, *TINY, f"--config.{override}"]
    refused(capsys, argv, workdir, culprit=culprit)


def test_batch_against_the_data_axis(capsys, tmp_path):
    """Divisibility is against the mesh's data axis (4 of data=4 x model=2), not the 8
    devices."""
    workdir = tmp_path / "run"
    mesh = ["--config.mesh.data=4", "--config.mesh.model=2", "--config.train.batch_size=6"]
    argv = ["train", "--config", CONFIG, "--workdir", workdir, *TINY, *mesh]
    refused(capsys, argv, workdir, culprit="multiple of the 4 devices")


def test_data_path_missing(capsys, tmp_path):
    """A data file the config names that is not there stops the run before its folder exists."""
    from paths import CONFIGS

    workdir = tmp_path / "run"
    argv = [
        "train", "--config", CONFIGS / "elva" / "mbeir.py", "--workdir", workdir,
        f"--config.data.root={tmp_path / 'no-such-mbeir'}",
    ]  # fmt: skip
    refused(capsys, argv, workdir, culprit=("'data.root'", "no-such-mbeir"))


CONFIG_FILES = {
    "raises.py": ("def get_config():\n    raise RuntimeError('no GPU here')\n", "no GPU here"),
    "syntax.py": ("def get_config(:\n", "failed to import"),
    "noconfig.py": ("X = 1\n", "no get_config()"),
    "not_a_dict.py": ("def get_config():\n    return {'recipe': 'contrastive'}\n", "not a Config"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_config_file_that_cannot_be_read(capsys, tmp_path, name):
    source, culprit = CONFIG_FILES[name]
    (tmp_path / name).write_text(source)
    workdir = tmp_path / "run"
    argv = ["train", "--config", tmp_path / name, "--workdir", workdir]
    refused(capsys, argv, workdir, tmp_path / name, culprit=(name, culprit))


def test_config_argument_not_taken(capsys, tmp_path):
    """``FILE:ARG`` for a ``get_config()`` that takes no argument, and the reverse."""
    (tmp_path / "plain.py").write_text("def get_config():\n    return None\n")
    (tmp_path / "needs.py").write_text("def get_config(arg):\n    return None\n")
    workdir = tmp_path / "run"
    argv = ["train", "--config", f"{tmp_path / 'plain.py'}:large", "--workdir", workdir]
    refused(capsys, argv, workdir, culprit="cannot be called with the argument 'large'")
    argv = ["train", "--config", tmp_path / "needs.py", "--workdir", workdir]
    refused(capsys, argv, workdir, culprit="cannot be called with no argument")


def test_unknown_key_and_bad_type(capsys, tmp_path):
    workdir = tmp_path / "run"
    base = ["train", "--config", CONFIG, "--workdir", workdir, *TINY]
    err = refused(capsys, [*base, "--config.train.batchsize=8"], workdir, culprit="'batchsize'")
    assert "Valid keys:" in err and "  train.batch_size\n" in err
    refused(capsys, [*base, "--config.train.steps=many"], workdir, culprit="'train.steps'")
    refused(capsys, [*base, "--config.recipe=contrastiv"], workdir, culprit="'contrastiv'")
