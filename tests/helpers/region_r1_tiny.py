"""The Region-R1 recipe's synthetic config made tiny: shared by the recipe's tests, the step-cost
tests and the multi-process worker."""

from __future__ import annotations

from paths import CONFIGS

from jaxrank.configs import apply_overrides, load_config_file

CONFIG = CONFIGS / "region_r1" / "synthetic.py"


# Small towers: compile time grows with depth, and these tests are about wiring.
TINY_MODELS = [
    "scorer.model.width=32",
    "scorer.model.depth=1",
    "scorer.model.heads=2",
    "scorer.model.embed_dim=16",
    "policy.width=32",
    "policy.depth=1",
    "policy.heads=2",
    "policy.fusion_depth=1",
]


def tiny_config(*extra):
    return apply_overrides(
        load_config_file(CONFIG),
        [*TINY_MODELS, "train.batch_size=8", "rl.num_generations=4", *extra],
    )
