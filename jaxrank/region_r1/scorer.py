"""The frozen scorer both Region-R1 recipes re-rank with: a finished contrastive run's image
tower, the knowledge base embedded with it into an index, and each query's first-stage pool
(the top-K entries by the full image)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxrank import retrieval_eval
from jaxrank.contrastive.embedders import encoders, image_embedder, knowledge_base_embeddings
from jaxrank.contrastive.encoder import build_model, build_world, encoder_inputs
from jaxrank.contrastive.recipe import train_or_restore
from jaxrank.data.synthetic import World, query_preset, world_vocabulary
from jaxrank.search import Index

INDEX_FILE = "kb_index.safetensors"


class Scorer:
    """The frozen scorer: its image tower, its parameters and the knowledge-base index."""

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: Path, mesh: jax.sharding.Mesh):
        scorer_dir = Path(cfg.scorer_workdir) if cfg.scorer_workdir else workdir / "scorer"
        graphdef, self.params = train_or_restore(cfg.scorer, scorer_dir, mesh)
        self.world: World = build_world(cfg.scorer)
        self.input_size: int = encoder_inputs(cfg.scorer).image_size
        self.embed = image_embedder(graphdef, cfg.scorer)
        kb = knowledge_base_embeddings(graphdef, self.params, self.world, cfg.scorer, mesh)
        self.kb = kb["pair"]
        self.index = Index.from_array(self.kb, metric="cosine", mesh=mesh)
        self.index.save(workdir / INDEX_FILE)
        self._full, _, _ = encoders(graphdef, cfg.scorer)

    def full_image_embeddings(self, images: np.ndarray, batch: int, mesh) -> np.ndarray:
        return retrieval_eval.embed_in_batches(
            lambda x: self._full(self.params, x), [images], batch, mesh
        )


def untrained_scorer(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """``(scorer, params)``: the scorer's image tower at the config's sizes with fresh
    weights, shaped like ``Scorer`` for ``make_step``. For step tests and cost studies, where
    what a step computes and costs does not depend on the scorer's training."""
    graphdef, params = nnx.split(build_model(cfg.scorer, mesh), nnx.Param)
    scorer = SimpleNamespace(
        embed=image_embedder(graphdef, cfg.scorer),
        input_size=cfg.scorer.model.image_size,
    )
    return scorer, params


def query_set(
    scorer: Scorer,
    split: str,
    presets: tuple[str, ...],
    per_preset: int,
    cfg: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
    """Rendered queries of each preset with their first-stage pools: the top ``pool_size``
    knowledge-base entries by the full image's embedding. Presets take disjoint query indices,
    so the same index never renders the same target under two presets."""
    parts = [
        scorer.world.queries(split, per_preset, query_preset(p), start=i * per_preset)
        for i, p in enumerate(presets)
    ]
    images = np.concatenate([p["images"] for p in parts])
    entity = np.concatenate([p["entity"] for p in parts])
    questions = [q for p in parts for q in p["questions"]]
    embeddings = scorer.full_image_embeddings(images, cfg.eval.batch_size, mesh)
    found = scorer.index.search(embeddings, cfg.data.pool_size)
    pools = found.ids
    queries = {
        "images": images,
        "boxes": np.concatenate([p["boxes"] for p in parts]).astype(np.float32),
        "pool_ids": np.maximum(pools, 0).astype(np.int32),
        "labels": (pools == entity[:, None]).astype(np.float32),
        "pool_valid": pools >= 0,
        # The first stage's full-image ranking, which the MLLM step reuses instead of
        # re-embedding the image (empty slots score -1: below any cosine).
        "pool_scores": np.where(pools >= 0, found.scores, -1.0).astype(np.float32),
        "questions": questions,
    }
    if "max_len" in cfg.policy:  # the structured policy reads the question's word ids
        queries["tokens"] = world_vocabulary().encode(questions, cfg.policy.max_len)
    return queries
