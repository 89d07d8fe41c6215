"""``jaxrank eval`` on a checkpoint whose parameters hold NaN refuses it (exit 2, one line
naming the checkpoint and the leaf) instead of printing a recall of zero."""

import jax
import numpy as np
from contrastive_tiny import CONFIG, TINY, tiny_config
from refusals import refused

from jaxrank.contrastive.encoder import initial_state, setup
from jaxrank.train.checkpoint import Checkpointer
from jaxrank.train.workdir import prepare_workdir


def nan_checkpoint(workdir, cfg, step):
    """A run folder whose checkpoint ``step`` is the run's fresh train state with every float
    NaN (the model's initialisation compiled here is reused by the command's)."""
    prepare_workdir(workdir, cfg)
    fresh = initial_state(cfg, setup(cfg)[3])
    poison = lambda x: np.full(x.shape, np.nan, x.dtype) if x.dtype.kind == "f" else x
    state = jax.tree.map(poison, fresh)
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        checkpointer.save(step, state, {})


def test_eval_refuses_a_checkpoint_with_nan_parameters(capsys, tmp_path):
    workdir = tmp_path / "run"
    nan_checkpoint(workdir, tiny_config("train.steps=3"), 3)
    argv = ["eval", "--config", CONFIG, "--workdir", workdir]
    argv += [f"--config.{o}" for o in [*TINY, "train.steps=3"]]
    watched = (workdir / "checkpoints", workdir / "config.json", workdir / "report.json")
    culprit = (f"checkpoint {workdir / 'checkpoints' / '3'} holds NaN/inf values in", "params.")
    refused(capsys, argv, *watched, culprit=culprit)
