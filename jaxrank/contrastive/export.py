"""A trained dual encoder (the contrastive recipe's, Region-R1's scorer, ELVA's fast-path
encoder) out of its run as a CLIP or SigLIP transformers checkpoint; an encoder whose layout is
neither is refused, naming what differs, before anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxrank import imaging, parallel
from jaxrank.contrastive.encoder import restore
from jaxrank.models.dual_encoder import DualEncoder
from jaxrank.models.hf.export import check_exportable, save_pretrained
from jaxrank.models.hf.export_card import Artifact
from jaxrank.models.hf.files import CONFIG_FILE, INDEX_FILE, resolve_checkpoint

_INPUT_FILES = ("*.json", "*.txt", "*.model")  # tokenizer and image processor of a checkpoint


def _inputs_note(cfg: ml_collections.ConfigDict) -> str:
    if cfg.model.get("pretrained", ""):
        return f"Its tokenizer and image processor are those of `{cfg.model.pretrained}`."
    return (
        "It reads jaxrank's synthetic-world vocabulary (`jaxrank.data.synthetic."
        f"world_vocabulary()`, {cfg.model.max_len} tokens) and {cfg.model.image_size}-pixel "
        f"images scaled to [0, 1] and normalised with mean {imaging.UNIT_MEAN} and std "
        f"{imaging.UNIT_STD}; no transformers tokenizer describes that vocabulary."
    )


def encoder_artifact(
    cfg: ml_collections.ConfigDict, encoder: DualEncoder, title: str, description: str
) -> Artifact:
    """``encoder`` (whole on this host) as an ``Artifact``; refused here if transformers has no
    counterpart for it."""
    check_exportable(encoder)
    pretrained = cfg.model.get("pretrained", "")

    def write(folder: Path, fmt: str, max_shard_bytes: int | None) -> None:
        save_pretrained(encoder, folder, max_shard_bytes=max_shard_bytes)
        if pretrained:
            source = resolve_checkpoint(pretrained)
            for pattern in _INPUT_FILES:
                for path in source.glob(pattern):
                    if path.name not in (CONFIG_FILE, INDEX_FILE):
                        shutil.copyfile(path, folder / path.name)

    def usage(fmt: str) -> str:
        return (
            "from transformers import AutoModel\n\n"
            'model = AutoModel.from_pretrained("THIS_FOLDER")\n'
            "image_embeds = model.get_image_features(pixel_values=pixels)\n"
            "text_embeds = model.get_text_features(input_ids=ids)"
        )

    return Artifact(title, f"{description} {_inputs_note(cfg)}", write, usage)


def gathered(graphdef: nnx.GraphDef, params) -> nnx.Module:
    """The module whole on this host's first device (a collective over processes)."""
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, parallel.to_host(params)))


def trained_encoder(
    cfg: ml_collections.ConfigDict, workdir: str | Path, mesh: jax.sharding.Mesh
) -> tuple[int, DualEncoder]:
    """``(step, encoder)`` of a contrastive run's latest checkpoint, gathered to this host."""
    step, graphdef, params = restore(cfg, workdir, mesh)
    return step, gathered(graphdef, params)


def export_encoder(cfg: ml_collections.ConfigDict, workdir: Path, mesh) -> Artifact:
    """The contrastive recipe's dual encoder."""
    step, encoder = trained_encoder(cfg, workdir, mesh)
    description = (
        f"A {cfg.model.family.upper()}-style dual encoder trained contrastively for {step} "
        "steps by jaxrank's contrastive recipe on its synthetic world (query views against "
        "their entity's text and knowledge-base image)."
    )
    return encoder_artifact(cfg, encoder, "Contrastive dual encoder", description)
