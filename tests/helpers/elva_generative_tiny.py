"""The generative ELVA recipe's config at test size: a one-layer embedder of width 32 on a
128-entity world of 16-px images, summaries of at most 4 tokens."""

import ml_collections
from paths import CONFIGS

from jaxrank.configs import apply_overrides, load_config_file

CONFIG = CONFIGS / "elva" / "generative_synthetic.py"
TINY = (
    "world.num_entities=128",
    "world.image_size=16",
    "embedder.image_size=16",
    "embedder.summary_tokens=4",
    "embedder.tiny.vocab_size=300",
    "embedder.tiny.width=32",
    "embedder.tiny.depth=1",
    "embedder.tiny.mlp_dim=48",
    "embedder.tiny.vision_depth=1",
    "embedder.tiny.vision_width=32",
    "benchmark.min_fine_neighbours=1",
    "lora.rank=4",
    "mining.threshold=1.5",  # an untrained embedder scores many entries > 0.99
)


def tiny_config(*extra: str) -> ml_collections.ConfigDict:
    return apply_overrides(load_config_file(CONFIG), [*TINY, *extra])
