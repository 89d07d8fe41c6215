"""Load a Hugging Face CLIP or SigLIP checkpoint into jaxrank's Flax encoders: identify the
family and architecture, translate the config, pick the towers and their name map, then let
``placement.load_module`` create every parameter on its sharding.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from jax.typing import DTypeLike

from jaxrank.models.dual_encoder import DualEncoder, DualEncoderConfig, ImageEncoder, TextEncoder
from jaxrank.models.hf.clip import CLIP
from jaxrank.models.hf.errors import CheckpointMismatch, UnsupportedCheckpoint
from jaxrank.models.hf.family import Family, Tower, Towers
from jaxrank.models.hf.files import (
    CONFIG_FILE,
    SafetensorsCheckpoint,
    read_config,
    resolve_checkpoint,
)
from jaxrank.models.hf.placement import load_module
from jaxrank.models.hf.preprocessing import ImagePreprocessor
from jaxrank.models.hf.siglip import SIGLIP
from jaxrank.models.hf.tensors import Path as ParamPath
from jaxrank.models.hf.tensors import Tensor, nest
from jaxrank.models.hf.tokenization import TextTokenizer
from jaxrank.models.layer_stack import UNROLLED, Stacking, with_stacking

FAMILIES: tuple[Family, ...] = (CLIP, SIGLIP)
Encoder = DualEncoder | ImageEncoder | TextEncoder


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A loaded encoder and what it was loaded from. ``towers`` describes the whole checkpoint,
    ``kinds`` the towers loaded; ``skipped`` are tensors of towers that were not asked for;
    ``ignored`` are tensors jaxrank has no place for (only with ignore_unused)."""

    model: Encoder
    family: str
    architecture: str
    towers: Towers
    kinds: tuple[Tower, ...]
    folder: Path
    loaded: int
    skipped: tuple[str, ...]
    ignored: tuple[str, ...]
    missing: tuple[str, ...]

    def tokenizer(self) -> TextTokenizer:
        """The checkpoint's tokenizer, padding to the text tower's length with the family's mask
        convention (see ``jaxrank.models.hf.tokenization``)."""
        if self.towers.text is None:
            raise ValueError(f"{self.architecture} has no text tower to tokenize for")
        return TextTokenizer.for_family(self.folder, self.family, self.towers.text.max_len)

    def image_preprocessor(self) -> ImagePreprocessor:
        """The checkpoint's image pre-processing (its ``preprocessor_config.json``)."""
        return ImagePreprocessor.from_pretrained(self.folder)

    def summary(self) -> dict[str, Any]:
        """A JSON-able account of the load (for ``jaxrank convert`` and run reports)."""
        params = nnx.state(self.model, nnx.Param)
        leaves = jax.tree.leaves(params)
        return {
            "folder": str(self.folder),
            "family": self.family,
            "architecture": self.architecture,
            "module": type(self.model).__name__,
            "vision": dataclasses.asdict(self.towers.vision) if "image" in self.kinds else None,
            "text": dataclasses.asdict(self.towers.text) if "text" in self.kinds else None,
            "vision_embed_dim": self.towers.vision_embed_dim,
            "text_embed_dim": self.towers.text_embed_dim,
            "parameters": int(sum(leaf.size for leaf in leaves)),
            "dtype": str(leaves[0].dtype),
            "tensors_loaded": self.loaded,
            "tensors_skipped": len(self.skipped),
            "tensors_ignored": list(self.ignored),
            "tensors_missing": list(self.missing),
        }


def identify(config: dict[str, Any], where: Path) -> tuple[Family, str]:
    """The family and transformers architecture a ``config.json`` describes."""
    names = list(config.get("architectures") or [])
    model_type = config.get("model_type")
    for family in FAMILIES:
        for name in names:
            if name in family.architectures:
                return family, name
    for family in FAMILIES:
        if not names and model_type in family.by_model_type:
            return family, family.by_model_type[model_type]
    supported = sorted(a for family in FAMILIES for a in family.architectures)
    raise UnsupportedCheckpoint(
        f"{where / CONFIG_FILE}: architectures={names} (model_type={model_type!r}) is not "
        f"supported; jaxrank loads {supported}"
    )


def _tower_prefix(family: Family, kind: Tower, checkpoint: SafetensorsCheckpoint) -> str:
    candidates = family.prefixes[kind]
    for prefix in candidates:
        if f"{prefix}embeddings.position_embedding.weight" in checkpoint:
            return prefix
    names = [f"{p}embeddings.position_embedding.weight" for p in candidates]
    raise CheckpointMismatch(
        f"{checkpoint.folder}: no {kind} tower found (expected one of the tensors {names})"
    )


def name_map(
    family: Family, towers: Towers, kinds: tuple[Tower, ...], prefixes: dict[Tower, str]
) -> dict[ParamPath, Tensor]:
    """Rules for the module holding ``kinds``: one tower alone, or both plus the logit scale."""
    rules = family.tensor_rules(towers, {kind: prefixes[kind] for kind in kinds})
    if len(kinds) == 1:
        return rules[kinds[0]]
    both = nest(("image",), rules["image"]) | nest(("text",), rules["text"])
    return both | family.logit_rules(towers)


def build_encoder(
    towers: Towers,
    kinds: tuple[Tower, ...],
    dtype: DTypeLike,
    param_dtype: DTypeLike,
    rngs: nnx.Rngs,
):
    """The jaxrank module for ``kinds`` of ``towers``."""
    dtypes = {"dtype": dtype, "param_dtype": param_dtype}
    if kinds == ("image",):
        return ImageEncoder(
            towers.vision, towers.vision_embed_dim, towers.projection_bias, **dtypes, rngs=rngs
        )
    if kinds == ("text",):
        return TextEncoder(
            towers.text, towers.text_embed_dim, towers.projection_bias, **dtypes, rngs=rngs
        )
    return DualEncoder(dual_config(towers, dtype, param_dtype), rngs=rngs)


def dual_config(
    towers: Towers, dtype: DTypeLike = jnp.float32, param_dtype: DTypeLike = jnp.float32
) -> DualEncoderConfig:
    return DualEncoderConfig(
        vision=towers.vision,
        text=towers.text,
        embed_dim=towers.vision_embed_dim or towers.text_embed_dim or towers.vision.width,
        vision_projection=towers.vision_embed_dim is not None,
        text_projection=towers.text_embed_dim is not None,
        projection_bias=towers.projection_bias,
        logit_scale_init=towers.logit_scale_init,
        logit_bias_init=towers.logit_bias_init,
        dtype=dtype,
        param_dtype=param_dtype,
    )


def describe(source: str | Path, *, revision: str | None = None) -> tuple[Family, str, Towers]:
    """A checkpoint's family, architecture and jaxrank tower configs, without reading weights."""
    from transformers import AutoConfig

    folder = resolve_checkpoint(source, revision=revision)
    family, architecture = identify(read_config(folder), folder)
    try:
        return family, architecture, family.towers(AutoConfig.from_pretrained(folder), architecture)
    except ValueError as err:
        raise UnsupportedCheckpoint(f"{folder / CONFIG_FILE}: {err}") from err


def load_pretrained(
    source: str | Path,
    *,
    tower: Tower | None = None,
    dtype: DTypeLike = jnp.float32,
    compute_dtype: DTypeLike | None = None,
    mesh: Mesh | None = None,
    revision: str | None = None,
    ignore_unused: bool = False,
    ignore_missing: bool = False,
    seed: int = 0,
    stacking: Stacking = UNROLLED,
) -> Pretrained:
    """Load ``source`` (a checkpoint folder or a hub id) as a jaxrank encoder.

    ``tower`` picks one tower of a two-tower checkpoint ('image' or 'text'; the other tower's
    tensors are skipped). ``dtype`` is the parameter dtype, and the compute dtype unless
    ``compute_dtype`` is given (float32 weights with bfloat16 compute, say). With ``mesh`` every
    parameter is placed with the sharding its module annotates (tensor-parallel over ``model``,
    replicated over ``data``); without, on the default device. Missing tensors keep their
    random initialisation (from ``seed``) only when ``ignore_missing``. ``stacking`` scans (and
    rematerialises) the towers' layers (``models.layer_stack``).
    """
    folder = resolve_checkpoint(source, revision=revision)
    family, architecture, towers = describe(folder)
    towers = with_stacking(towers, stacking)
    present = family.architectures[architecture]
    if tower is not None and tower not in present:
        raise ValueError(f"tower={tower!r}: {architecture} at {folder} holds only {list(present)}")
    kinds = present if tower is None else (tower,)
    dtype = jnp.dtype(dtype)
    compute_dtype = dtype if compute_dtype is None else jnp.dtype(compute_dtype)

    checkpoint = SafetensorsCheckpoint(folder)
    prefixes = {kind: _tower_prefix(family, kind, checkpoint) for kind in present}
    rules = name_map(family, towers, kinds, prefixes)
    expected = {t.name for t in name_map(family, towers, present, prefixes).values()}

    def build(rngs: nnx.Rngs) -> Encoder:
        return build_encoder(towers, kinds, compute_dtype, dtype, rngs)

    module = load_module(
        build,
        rules,
        checkpoint,
        expected,
        mesh=mesh,
        seed=seed,
        ignore_unused=ignore_unused,
        ignore_missing=ignore_missing,
        what=f"{architecture} ({', '.join(kinds)})",
    )
    return Pretrained(
        model=module.model,
        family=family.name,
        architecture=architecture,
        towers=towers,
        kinds=kinds,
        folder=folder,
        loaded=module.loaded,
        skipped=tuple(sorted(expected - {t.name for t in rules.values()})),
        ignored=module.ignored,
        missing=module.missing,
    )
