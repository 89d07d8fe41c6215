"""The MLLM recipe from the command line on a tiny config: the frozen scorer, the supervised
warm start, the compiled r-GRPO step and the in-graph evaluation write the report's columns;
re-running the finished run only re-evaluates, with the same numbers."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from fast_xla import subprocess_env
from paths import CONFIGS
from region_r1_tiny import TINY_MODELS

CONFIG = CONFIGS / "region_r1" / "mllm_synthetic.py"
POLICY = "policy.tiny." + ",policy.tiny.".join(
    ["width=32", "depth=1", "heads=2", "kv_heads=1", "mlp_dim=48", "vision_depth=1"]
)
TINY = [
    *(o for o in TINY_MODELS if o.startswith("scorer.")),
    *POLICY.split(","),
    "policy.max_new_tokens=12",
    "scorer.train.steps=10",
    "scorer.train.checkpoint_every=10",
    "scorer.eval.num_queries=16",
    "scorer.eval.batch_size=16",
    "scorer.eval.presets=('moderate',)",
    "data.train_queries_per_preset=8",
    "data.pool_size=100",  # pools that hold a positive, from a scorer trained 10 steps
    "sft.steps=2",
    "sft.batch_size=8",
    "sft.log_every=1",
    "sft.warmup_steps=1",
    "rl.num_generations=2",
    "train.steps=2",
    "train.batch_size=4",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.warmup_steps=1",
    "eval.presets=('moderate',)",
    "eval.num_queries=24",
    "eval.batch_size=8",
    "eval.gallery_queries=4",
]
STRATEGIES = {"full", "centre_crop", "random_crop", "oracle_crop", "warm_start_policy", "policy"}


def _train(workdir, cache) -> dict:
    """One run in a fresh process with one CPU device and XLA's cheapest optimisation level
    (``fast_xla.subprocess_env``; runs sharing ``cache`` compile each program once)."""
    command = [sys.executable, "-m", "jaxrank.cli.main", "train", "--config", str(CONFIG)]
    command += ["--workdir", str(workdir), *(f"--config.{o}" for o in TINY)]
    done = subprocess.run(command, env=subprocess_env(cache), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((workdir / "report.json").read_text())


@pytest.mark.slow
def test_mllm_recipe_from_the_command_line(tmp_path):
    workdir, cache = tmp_path / "run", tmp_path / "xla_cache"
    report = _train(workdir, cache)
    m = report["evaluation"]["moderate"]
    assert set(m) == STRATEGIES
    assert m["full"]["crop_rate"] == 0.0 and m["oracle_crop"]["crop_rate"] == 1.0
    assert {s["num_queries"] for s in m.values()} == {24}
    with_positive = m["full"]["num_with_positive"]
    assert {s["num_with_positive"] for s in m.values()} == {with_positive} and with_positive
    for s, k in itertools.product(m.values(), (1, 5, 10)):  # CondR@k: R@k over those queries
        np.testing.assert_allclose(s[f"cond_recall@{k}"] * with_positive, s[f"recall@{k}"] * 24)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    logged = set().union(*rows)
    assert {
        "train/loss",
        "train/forced_rate",
        "train/crop_trips",
        "train/outcome/no_crop",
    } <= logged
    assert (workdir / "checkpoints" / "2").exists() and (
        workdir / "sft" / "checkpoints" / "2"
    ).exists()

    again = _train(workdir, cache)  # finished: restored and re-evaluated
    assert again["evaluation"] == report["evaluation"]
