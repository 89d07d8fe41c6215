"""Write a jaxrank encoder as a transformers checkpoint folder (config.json + safetensors).

The tensors are named as checkpoints saved by earlier transformers versions name them (with the
``vision_model.`` / ``text_model.`` prefixes), which transformers v4 and v5 both load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx, traverse_util
from safetensors.numpy import save_file

from jaxrank.models.dual_encoder import DualEncoder, ImageEncoder, TextEncoder
from jaxrank.models.hf.clip import CLIP
from jaxrank.models.hf.errors import UnsupportedCheckpoint
from jaxrank.models.hf.family import Family, Tower, Towers
from jaxrank.models.hf.files import INDEX_FILE, SINGLE_FILE
from jaxrank.models.hf.loading import Encoder, name_map
from jaxrank.models.hf.siglip import SIGLIP
from jaxrank.models.hf.tensors import stacked_rules, to_checkpoint, unstacked
from jaxrank.models.text import TextConfig
from jaxrank.models.vit import VisionConfig

# transformers' CLIP pools at the largest token id when its eos_token_id is 2 (checkpoints from
# before transformers PR #24773); a jaxrank tower that ends texts with id 2 differs.
LEGACY_CLIP_EOS = 2
_PREFIXES: dict[Tower, str] = {"image": "vision_model.", "text": "text_model."}
_ARCHITECTURES = {
    ("clip", ("image", "text"), True): "CLIPModel",
    ("clip", ("image",), False): "CLIPVisionModel",
    ("clip", ("image",), True): "CLIPVisionModelWithProjection",
    ("clip", ("text",), False): "CLIPTextModel",
    ("clip", ("text",), True): "CLIPTextModelWithProjection",
    ("siglip", ("image", "text"), True): "SiglipModel",
    ("siglip", ("image",), False): "SiglipVisionModel",
    ("siglip", ("text",), True): "SiglipTextModel",
}


def _vision_family(v: VisionConfig) -> str | None:
    if v.class_token and v.pool == "cls" and v.pre_norm and not v.patch_bias and v.post_norm:
        return "clip"
    if not v.class_token and v.pool == "map" and not v.pre_norm and v.patch_bias and v.post_norm:
        return "siglip"
    return None


def _text_family(t: TextConfig) -> str | None:
    if t.causal and t.pool == "eos":
        return "clip"
    if not t.causal and t.pool == "last":
        return "siglip"
    return None


def _projection(encoder: ImageEncoder | TextEncoder) -> tuple[int | None, bool]:
    if encoder.projection is None:
        return None, False
    return encoder.projection.out_features, encoder.projection.use_bias


def towers_of(model: Encoder) -> tuple[Towers, tuple[Tower, ...]]:
    """The ``Towers`` description of a jaxrank encoder, and which towers it has."""
    if isinstance(model, DualEncoder):
        c = model.config
        image_dim, image_bias = _projection(model.image)
        text_dim, text_bias = _projection(model.text)
        bias = None if model.logit_bias is None else float(model.logit_bias[...])
        towers = Towers(
            c.vision,
            c.text,
            image_dim,
            text_dim,
            image_bias or text_bias,
            float(model.logit_scale[...]),
            bias,
        )
        return towers, ("image", "text")
    if isinstance(model, ImageEncoder):
        dim, bias = _projection(model)
        return Towers(model.tower.config, None, vision_embed_dim=dim, projection_bias=bias), (
            "image",
        )
    if isinstance(model, TextEncoder):
        dim, bias = _projection(model)
        return Towers(None, model.tower.config, text_embed_dim=dim, projection_bias=bias), ("text",)
    raise TypeError(f"expected a DualEncoder, ImageEncoder or TextEncoder, got {type(model)}")


def _family_and_architecture(towers: Towers, kinds: tuple[Tower, ...]) -> tuple[Family, str]:
    names = set()
    if "image" in kinds:
        names.add(_vision_family(towers.vision))
    if "text" in kinds:
        names.add(_text_family(towers.text))
    projected = (
        towers.vision_embed_dim is not None
        if kinds == ("image",)
        else towers.text_embed_dim is not None
    )
    name = names.pop() if len(names) == 1 else None
    key = (name, kinds, projected)
    if name is None or key not in _ARCHITECTURES:
        raise UnsupportedCheckpoint(
            "this encoder's layout matches neither CLIP nor SigLIP as transformers implements "
            f"them (towers {kinds}, projection={projected}): it cannot be exported"
        )
    if name == "clip" and "text" in kinds and towers.text.eos_token_id == LEGACY_CLIP_EOS:
        raise UnsupportedCheckpoint(
            f"the text tower pools at the first end-of-text token, id {LEGACY_CLIP_EOS}; "
            f"transformers' CLIP reads eos_token_id={LEGACY_CLIP_EOS} as its legacy rule (pool at "
            "the largest token id), so the export would compute other text embeddings"
        )
    if name == "clip" and towers.projection_bias:
        raise UnsupportedCheckpoint("CLIP projections have no bias; this encoder's do")
    text_unbiased = "text" in kinds and not towers.projection_bias
    if name == "siglip" and (towers.vision_embed_dim is not None or text_unbiased):
        raise UnsupportedCheckpoint(
            "SigLIP has no image projection and a text projection with bias; this encoder differs"
        )
    return {"clip": CLIP, "siglip": SIGLIP}[name], _ARCHITECTURES[key]


def check_exportable(model: Encoder) -> None:
    """Raise ``UnsupportedCheckpoint``, naming what differs, unless transformers has a CLIP or
    SigLIP class for ``model``."""
    _family_and_architecture(*towers_of(model))


def _shards(tensors: dict[str, np.ndarray], max_shard_bytes: int | None) -> list[dict]:
    """Tensors grouped, in name order, into files of at most ``max_shard_bytes`` (a tensor larger
    than that gets a file of its own)."""
    if max_shard_bytes is None:
        return [tensors]
    shards: list[dict] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    return shards


def _write_atomically(path: Path, write) -> None:
    partial = path.with_name(f".{path.name}.partial")
    write(partial)
    os.replace(partial, path)


def save_pretrained(
    model: Encoder, folder: str | Path, *, max_shard_bytes: int | None = None
) -> Path:
    """Write ``model`` to ``folder`` as a transformers checkpoint; returns the folder.

    With ``max_shard_bytes`` the weights are split into ``model-0000i-of-0000n.safetensors``
    files plus an index, as transformers writes large models. Each file appears under its final
    name only once complete.
    """
    towers, kinds = towers_of(model)
    family, architecture = _family_and_architecture(towers, kinds)
    rules = name_map(family, towers, kinds, {kind: _PREFIXES[kind] for kind in kinds})
    tensors = checkpoint_tensors(model, rules)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = family.export_config(towers, architecture)
    config.dtype = str(next(iter(tensors.values())).dtype)
    config.save_pretrained(folder)
    write_weights(tensors, folder, max_shard_bytes)
    return folder


def checkpoint_tensors(model: nnx.Module, rules: dict) -> dict[str, np.ndarray]:
    """``model``'s parameters on the host, named and laid out as the checkpoint ``rules`` say."""
    params = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    host = {path: np.asarray(jax.device_get(value)) for path, value in params.items()}
    rules, host = unstacked(stacked_rules(rules, host), host)  # scanned layers, one at a time
    return {
        name: np.require(value, requirements="C")
        for name, value in to_checkpoint(host, rules).items()
    }


def write_weights(
    tensors: dict[str, np.ndarray], folder: Path, max_shard_bytes: int | None = None
) -> None:
    """Safetensors weights as transformers writes them: one ``model.safetensors``, or with
    ``max_shard_bytes`` ``model-0000i-of-0000n.safetensors`` files plus an index. Each file
    appears under its final name only once complete; an earlier export's files are removed."""
    shards = _shards(tensors, max_shard_bytes)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        _write_atomically(folder / SINGLE_FILE, lambda p: save_file(shards[0], p, metadata))
        _remove_stale(folder, {SINGLE_FILE})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _write_atomically(folder / file, lambda p, shard=shard: save_file(shard, p, metadata))
        weight_map |= dict.fromkeys(shard, file)
    total = sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    _write_atomically(folder / INDEX_FILE, lambda p: p.write_text(json.dumps(index, indent=2)))
    _remove_stale(folder, {*weight_map.values(), INDEX_FILE})


def _remove_stale(folder: Path, written: set[str]) -> None:
    """Weight files of an earlier export to the same folder would shadow or mix with the new
    ones (an old index wins over a new single file): remove them once the new ones are in place."""
    for path in [*folder.glob("model*.safetensors"), folder / INDEX_FILE]:
        if path.name not in written and path.exists():
            path.unlink()
