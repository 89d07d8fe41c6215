"""The ELVA recipe's views of its dual encoder, shared by training and evaluation: query sets
as arrays, and jit-ready query and knowledge-base embedders on uint8 images (resized in the
graph)."""

from __future__ import annotations

import ml_collections
import numpy as np
from flax import nnx

from jaxrank.contrastive.encoder import build_world, encoder_inputs
from jaxrank.data.multigrain import MultiGrain
from jaxrank.elva.task_embedding import candidate_table, query_embedding


def benchmark(cfg: ml_collections.ConfigDict) -> MultiGrain:
    return MultiGrain(build_world(cfg), cfg.benchmark.min_fine_neighbours)


def rows(cfg: ml_collections.ConfigDict, queries: dict) -> dict[str, np.ndarray]:
    """A rendered query set (``MultiGrain.queries``) as the step's arrays, texts tokenised."""
    return {
        "images": queries["images"],
        "tokens": encoder_inputs(cfg).tokenize(queries["texts"]),
        "task": queries["task"],
        "entity": queries["entity"],
    }


def query_embedder(graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict):
    """``(encoder params, batch) -> unit query embeddings [B, D]``."""
    inputs = encoder_inputs(cfg)

    def embed(params, batch):
        model = nnx.merge(graphdef, params)
        return query_embedding(
            model, inputs.pixels(batch["images"]), batch["tokens"], batch["task"]
        )

    return embed


def candidate_embedder(graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict):
    """``(encoder params, kb) -> [2, N, D]``: every entry's image and text embedding."""
    inputs = encoder_inputs(cfg)

    def table(params, kb):
        model = nnx.merge(graphdef, params)
        return candidate_table(model, inputs.pixels(kb["images"]), kb["tokens"])

    return table
