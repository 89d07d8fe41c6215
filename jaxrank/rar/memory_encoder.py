"""The frozen image embedder behind RAR's memory: a Hugging Face CLIP / SigLIP image tower (the
paper's CLIP ViT-B/16), or, for the offline demonstration, the images' own pixels.

``pixels``: each image flattened, centred on its own mean and unit-normalised, so the cosine
is the images' correlation: the classic nearest-neighbour baseline on digits, and a memory that
needs no weights.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxrank.configs import ConfigError
from jaxrank.models.hf.loading import load_pretrained

Embed = Callable[[np.ndarray], np.ndarray]


@jax.jit
def _pixel_embeddings(images: jax.Array) -> jax.Array:
    flat = images.reshape(images.shape[0], -1).astype(jnp.float32)
    centred = flat - flat.mean(axis=1, keepdims=True)
    return centred / jnp.maximum(jnp.linalg.norm(centred, axis=1, keepdims=True), 1e-6)


def memory_embedder(memory: ml_collections.ConfigDict) -> Embed:
    """``embed(images uint8 [B, H, W, 3]) -> [B, D]`` (unit rows) of ``memory.encoder``:
    ``"pixels"``, or a checkpoint folder / hub id whose image tower is loaded."""
    if memory.encoder == "pixels":
        return lambda images: np.asarray(_pixel_embeddings(jnp.asarray(images)))
    if not memory.encoder:
        raise ConfigError("memory.encoder is empty: give 'pixels' or a CLIP checkpoint")
    pretrained = load_pretrained(memory.encoder, tower="image", dtype=memory.dtype)
    preprocess = pretrained.image_preprocessor()
    graphdef, params = nnx.split(pretrained.model)
    tower = image_tower(graphdef)
    return lambda images: np.asarray(tower(params, preprocess(list(images))))


def image_tower(graphdef: nnx.GraphDef) -> Callable[[nnx.State, jax.Array], jax.Array]:
    """``tower(params, pixels) -> [B, D]`` unit rows, jitted: the image encoder's program (the
    planner compiles this one, rar/plan_programs.py)."""
    return jax.jit(lambda params, pixels: nnx.merge(graphdef, params)(pixels))
