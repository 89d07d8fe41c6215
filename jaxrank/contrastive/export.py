"""A trained dual encoder (the contrastive recipe's, Region-R1's scorer, ELVA's fast-path
encoder) out of its run as a CLIP or SigLIP transformers checkpoint; an encoder whose layout is
neither is refused, naming what differs, before anything is written."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxrank import imaging, parallel
from jaxrank.contrastive.encoder import restore
from jaxrank.models.dual_encoder import DualEncoder
from jaxrank.models.hf.export import LEGACY_CLIP_EOS, check_exportable, save_pretrained
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


def eos_moved(encoder: DualEncoder) -> tuple[DualEncoder, int | None]:
    """``encoder`` with its end-of-text token moved to a new last row of the token table (a
    copy of its row) when it is id 2, which transformers' CLIP reads as "pool at the largest
    id"; the new id, or None when nothing moved. Texts with the old id replaced by the new one
    give the same embeddings as before."""
    text = encoder.config.text
    if not (text.pool == "eos" and text.eos_token_id == LEGACY_CLIP_EOS):
        return encoder, None
    new_id = text.vocab_size
    moved_text = dataclasses.replace(text, vocab_size=new_id + 1, eos_token_id=new_id)
    config = dataclasses.replace(encoder.config, text=moved_text)
    moved = nnx.eval_shape(lambda: DualEncoder(config, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(encoder, nnx.Param))
    table = params["text"]["tower"]["token_embedding"]
    table["embedding"] = jnp.concatenate([table["embedding"], table["embedding"][2:3]])
    state = nnx.state(moved, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(moved, state)
    return moved, new_id


def encoder_artifact(
    cfg: ml_collections.ConfigDict, encoder: DualEncoder, title: str, description: str
) -> Artifact:
    """``encoder`` (whole on this host) as an ``Artifact``; refused here if transformers has no
    counterpart for it."""
    encoder, moved_eos = eos_moved(encoder)
    check_exportable(encoder)
    if moved_eos is not None:
        description += (
            f" Its end-of-text token is id {moved_eos} in this export (jaxrank's vocabulary "
            f"writes {LEGACY_CLIP_EOS}, which transformers' CLIP would read as its legacy "
            f"pooling rule): replace id {LEGACY_CLIP_EOS} by {moved_eos} in its input ids."
        )
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
