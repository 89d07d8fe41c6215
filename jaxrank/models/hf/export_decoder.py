"""Write a Qwen2 decoder or Qwen2-VL model back as a transformers checkpoint: in the layout of
the checkpoint it came from (its config, tokenizer and processor files are copied), e.g. after
training LoRA adapters and merging them (``jaxrank.models.lora.merge_lora``), or, for a model
with no checkpoint behind it (a tiny random one), in the hub's layout with a config written
from its own (``export_vlm_config``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from jaxrank.models.hf import qwen2, qwen2_vl
from jaxrank.models.hf.errors import CheckpointMismatch
from jaxrank.models.hf.export import checkpoint_tensors, write_weights
from jaxrank.models.hf.export_vlm_config import transformers_config
from jaxrank.models.hf.files import (
    CONFIG_FILE,
    SafetensorsCheckpoint,
    architecture,
    resolve_checkpoint,
)
from jaxrank.models.hf.qwen_vision import vision_name_map
from jaxrank.models.hf.tensors import nest
from jaxrank.models.layer_stack import UNROLLED, with_stacking
from jaxrank.models.lm import CausalLM
from jaxrank.models.vlm import VisionLanguageModel

_COPIED = ("*.json", "*.txt", "*.jinja", "*.model", "*.tiktoken")
_WEIGHT_FILES = ("model*.safetensors", "model.safetensors.index.json")
# The hub's Qwen2-VL layout (what released checkpoints hold and transformers v5 writes back).
HUB_LM_PREFIX, HUB_VISION_PREFIX = "model.", "visual."


def decoder_rules(model: CausalLM | VisionLanguageModel, base: str | Path | None) -> dict:
    """jaxrank parameter path -> checkpoint tensor: ``base``'s layout (its config must describe
    ``model``), or the hub's layout when ``base`` is None."""
    if base is None:
        if not isinstance(model, VisionLanguageModel):
            raise TypeError("a decoder without a base checkpoint must be a VisionLanguageModel")
        rules = nest(("language_model",), qwen2.name_map(model.config.lm, HUB_LM_PREFIX))
        return rules | nest(("visual",), vision_name_map(model.config.vision, HUB_VISION_PREFIX))
    source = resolve_checkpoint(base)
    if isinstance(model, VisionLanguageModel):
        architecture(source, qwen2_vl.ARCHITECTURES)
        expected = qwen2_vl.vlm_config(source)
        rules = qwen2_vl.name_map(expected, SafetensorsCheckpoint(source))
    elif isinstance(model, CausalLM):
        architecture(source, qwen2.ARCHITECTURES)
        expected = qwen2.lm_config(source)
        rules = qwen2.name_map(expected)
    else:
        raise TypeError(f"expected a CausalLM or VisionLanguageModel, got {type(model).__name__}")
    if with_stacking(model.config, UNROLLED) != expected:  # scanned or not, the same tensors
        raise CheckpointMismatch(
            f"{source / CONFIG_FILE} describes {expected}, but the model is {model.config}"
        )
    return rules


def save_decoder(
    model: CausalLM | VisionLanguageModel,
    folder: str | Path,
    *,
    base: str | Path,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write ``model`` to ``folder`` with the config and tensor names of ``base`` (the folder or
    hub id it was loaded from); its shapes must be ``base``'s. Returns the folder."""
    source = resolve_checkpoint(base)
    folder = Path(folder)
    if folder.exists() and folder.resolve() == source.resolve():
        raise ValueError(f"{folder}: refusing to overwrite the base checkpoint in place")
    tensors = checkpoint_tensors(model, decoder_rules(model, base))
    config = json.loads((source / CONFIG_FILE).read_text())
    config["dtype"] = str(np.dtype(next(iter(tensors.values())).dtype))
    config.pop("torch_dtype", None)
    _write(folder, tensors, config, source, max_shard_bytes)
    return folder


def save_vlm(
    model: VisionLanguageModel,
    folder: str | Path,
    *,
    tokenizer: Any,
    files_from: Path,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write ``model``, which no checkpoint describes, to ``folder`` in the hub's layout, its
    config from the model's own (special-token ids from ``tokenizer``), the tokenizer and
    processor files of ``files_from`` beside it. Returns the folder."""
    folder = Path(folder)
    tensors = checkpoint_tensors(model, decoder_rules(model, None))
    dtype = str(np.dtype(next(iter(tensors.values())).dtype))
    config = transformers_config(model.config, tokenizer, dtype)
    _write(folder, tensors, config, files_from, max_shard_bytes)
    return folder


def _write(folder: Path, tensors, config: dict, files_from: Path, max_shard_bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    weights = {p for pattern in _WEIGHT_FILES for p in files_from.glob(pattern)}
    for pattern in _COPIED:
        for path in files_from.glob(pattern):
            if path not in weights and path.name != CONFIG_FILE:
                shutil.copyfile(path, folder / path.name)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    write_weights(tensors, folder, max_shard_bytes)
