"""A checkpoint whose saved data position the iterator cannot take is refused when the run
resumes (exit 2, one line naming the checkpoint), not a traceback from grain."""

import pytest
from contrastive_tiny import CONFIG, TINY, tiny_config
from refusals import refused

from jaxrank.contrastive.encoder import initial_state, setup
from jaxrank.train.checkpoint import Checkpointer
from jaxrank.train.workdir import prepare_workdir


@pytest.mark.parametrize("position", [{"bogus": 1}, "garbage"])
def test_resume_refuses_a_damaged_iterator_position(capsys, tmp_path, position):
    workdir, cfg = tmp_path / "run", tiny_config("train.steps=3")
    prepare_workdir(workdir, cfg)
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        checkpointer.save(1, initial_state(cfg, setup(cfg)[3]), {"iterator": position})
    argv = ["train", "--config", CONFIG, "--workdir", workdir]
    argv += [f"--config.{o}" for o in [*TINY, "train.steps=3"]]
    culprit = (str(workdir / "checkpoints" / "1"), "data iterator position")
    refused(capsys, argv, workdir / "checkpoints", workdir / "config.json", culprit=culprit)
