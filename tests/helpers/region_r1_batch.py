"""One r-GRPO batch on the synthetic world, shared by the step tests (one device, sharded,
several processes): 8 moderate queries, random unit knowledge-base embeddings and pools of 20
that hold the positive for the first 6 queries only."""

from __future__ import annotations

import ml_collections
import numpy as np

from jaxrank.contrastive.encoder import build_world
from jaxrank.data.synthetic import query_preset, world_vocabulary


def toy_batch(cfg: ml_collections.ConfigDict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(batch, knowledge-base embeddings ``[N, D]``) for ``region_r1.make_step``."""
    world = build_world(cfg.scorer)
    queries = world.queries("train", 8, query_preset("moderate"))
    rng = np.random.default_rng(0)
    kb = rng.normal(size=(world.num_entities, cfg.scorer.model.embed_dim)).astype(np.float32)
    kb /= np.linalg.norm(kb, axis=1, keepdims=True)
    pool_ids = rng.integers(0, world.num_entities, (8, 20)).astype(np.int32)
    pool_ids[:6, 3] = queries["entity"][:6]  # two pools without their positive
    batch = {
        "images": queries["images"],
        "tokens": world_vocabulary().encode(queries["questions"], cfg.policy.max_len),
        "boxes": queries["boxes"],
        "pool_ids": pool_ids,
        "labels": (pool_ids == queries["entity"][:, None]).astype(np.float32),
        "pool_valid": np.ones((8, 20), bool),
    }
    return batch, kb
