"""The dual encoder a config describes: jaxrank's own tiny CLIP/SigLIP or a Hugging Face
checkpoint, its inputs (size, normalisation, tokenizer), and a run's trained weights restored.
Region-R1's frozen scorer, ELVA's embedder and the search command all build on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

from jaxrank import imaging, parallel
from jaxrank.configs import ConfigError
from jaxrank.data.synthetic import World, WorldConfig, world_vocabulary
from jaxrank.data.vocabulary import EOS
from jaxrank.models.dual_encoder import DualEncoder
from jaxrank.models.hf import load_pretrained
from jaxrank.models.hf.inputs import pretrained_inputs
from jaxrank.models.inputs import EncoderInputs
from jaxrank.models.presets import tiny_clip, tiny_siglip
from jaxrank.train.checkpoint import Checkpointer
from jaxrank.train.optim import adamw_warmup_cosine
from jaxrank.train.step import TrainState

FAMILIES = {"clip": tiny_clip, "siglip": tiny_siglip}


def build_world(cfg: ml_collections.ConfigDict) -> World:
    return World(WorldConfig(**cfg.world.to_dict()))


def encoder_inputs(cfg: ml_collections.ConfigDict) -> EncoderInputs:
    """Input size, pixel normalisation and tokenizer of the configured encoder: the world's
    vocabulary for jaxrank's own, the checkpoint's processor and tokenizer for a pretrained one."""
    if cfg.model.get("pretrained", ""):
        return pretrained_inputs(cfg.model.pretrained)
    vocabulary = world_vocabulary()
    return EncoderInputs(
        cfg.model.image_size,
        imaging.UNIT_MEAN,
        imaging.UNIT_STD,
        lambda texts: vocabulary.encode(list(texts), cfg.model.max_len),
    )


def _pretrained_model(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> DualEncoder:
    loaded = load_pretrained(cfg.model.pretrained, compute_dtype=cfg.model.dtype, mesh=mesh)
    if not isinstance(loaded.model, DualEncoder) or loaded.family != cfg.model.family:
        raise ConfigError(
            f"model.pretrained={cfg.model.pretrained!r} is a {loaded.architecture}; the recipe "
            f"needs a two-tower model of model.family={cfg.model.family!r}"
        )
    return loaded.model


def build_model(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> DualEncoder:
    """A fresh encoder of the configured shape, or ``model.pretrained`` (a Hugging Face folder or
    hub id) loaded onto the mesh, whose shape keys are then ignored."""
    if cfg.model.get("pretrained", ""):
        return _pretrained_model(cfg, mesh)
    model_cfg = cfg.model.to_dict()
    model_cfg.pop("pretrained", None)
    family = model_cfg.pop("family")
    if family == "clip":
        model_cfg["eos_token_id"] = EOS
    else:  # SigLIP has no image projection: its embedding width is the tower width.
        model_cfg.pop("embed_dim")
    config = FAMILIES[family](**model_cfg, vocab_size=world_vocabulary().size)
    with jax.set_mesh(mesh):
        return DualEncoder(config, rngs=nnx.Rngs(cfg.seed))


def setup(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
    """``(mesh, world, graphdef, params)`` of a config's fresh (or pretrained) encoder; the
    mesh defaults to the config's."""
    mesh = mesh or parallel.mesh_from_config(cfg.mesh)
    world = build_world(cfg)
    graphdef, params = nnx.split(build_model(cfg, mesh), nnx.Param)
    return mesh, world, graphdef, params


def initial_state(cfg: ml_collections.ConfigDict, params: Any) -> TrainState:
    """The train state a contrastive run checkpoints (AdamW of ``cfg.train``): the template
    its checkpoints restore into."""
    optimizer = adamw_warmup_cosine(cfg.train)
    return jax.jit(lambda p: TrainState.create(p, optimizer, cfg.seed))(params)


def restore(
    cfg: ml_collections.ConfigDict, workdir: str | Path, mesh: jax.sharding.Mesh | None = None
) -> tuple[int, nnx.GraphDef, Any]:
    """``(step, graphdef, params)`` of a run's latest checkpoint, placed on ``mesh``."""
    _, _, graphdef, params = setup(cfg, mesh)
    state = initial_state(cfg, params)
    with Checkpointer(Path(workdir) / "checkpoints") as checkpointer:
        step, state, _ = checkpointer.restore(state)
    return step, graphdef, state.params
