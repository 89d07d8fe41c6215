"""Jitted embedders of a dual encoder and the knowledge base embedded with them: image,
text, and the normalised image+text pair that is Region-R1's candidate embedding."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxrank import retrieval_eval
from jaxrank.contrastive.encoder import encoder_inputs
from jaxrank.data.synthetic import World


def image_embedder(graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict):
    """``(params, float pixels in [0, 255] at the model's input size) -> embeddings``: the
    scorer's image tower for callers that crop and resize themselves (Region-R1)."""
    inputs = encoder_inputs(cfg)

    def embed(params, pixels):
        return nnx.merge(graphdef, params).encode_image(inputs.normalize(pixels))

    return embed


def encoders(graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict):
    """Jitted ``image(params, uint8 images)``, ``cropped(params, images, boxes)`` and
    ``text(params, tokens)`` embedders."""

    inputs = encoder_inputs(cfg)

    @jax.jit
    def image(params, images):
        return nnx.merge(graphdef, params).encode_image(inputs.pixels(images))

    @jax.jit
    def cropped(params, images, boxes):
        return nnx.merge(graphdef, params).encode_image(inputs.crops(images, boxes))

    @jax.jit
    def text(params, tokens):
        return nnx.merge(graphdef, params).encode_text(tokens)

    return image, cropped, text


def knowledge_base(world: World, cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Every entity's image (uint8) and tokenised description."""
    return {
        "images": world.entity_images(world.config.image_size),
        "tokens": encoder_inputs(cfg).tokenize(world.entity_texts()),
    }


def knowledge_base_embeddings(
    graphdef: nnx.GraphDef,
    params: Any,
    world: World,
    cfg: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """Every entity's ``image`` and ``text`` embedding and their normalised sum ``pair``
    (Region-R1's candidate embedding, PAPERS.md §1), float32 [N, D] on the host."""
    image_fn, _, text_fn = encoders(graphdef, cfg)
    bs = cfg.eval.batch_size
    kb = knowledge_base(world, cfg)
    image = retrieval_eval.embed_in_batches(lambda x: image_fn(params, x), [kb["images"]], bs, mesh)
    text = retrieval_eval.embed_in_batches(lambda x: text_fn(params, x), [kb["tokens"]], bs, mesh)
    pair = image + text
    return {
        "pair": pair / np.linalg.norm(pair, axis=-1, keepdims=True),
        "image": image,
        "text": text,
    }
