"""The contrastive recipe's synthetic config made tiny: shared by the recipe's tests, the
pretrained-encoder tests and (as overrides) the multi-process worker."""

from __future__ import annotations

from paths import CONFIGS

from jaxrank.configs import apply_overrides, load_config_file

CONFIG = CONFIGS / "contrastive" / "synthetic.py"
TINY = [
    "world.num_entities=32",
    "model.width=32",
    "model.depth=1",
    "model.heads=2",
    "model.embed_dim=16",
    "train.batch_size=16",
    "train.warmup_steps=2",
    "train.data_threads=1",
    "eval.num_queries=16",
    "eval.batch_size=16",
    "eval.presets=('default',)",
]


def tiny_config(*extra):
    return apply_overrides(load_config_file(CONFIG), [*TINY, *extra])
