"""Write a Qwen2 decoder or Qwen2-VL model back as a transformers checkpoint, in the layout of
the checkpoint it came from (its config, tokenizer and processor files are copied), e.g. after
training LoRA adapters and merging them (``jaxrank.models.lora.merge_lora``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from jaxrank.models.hf import qwen2, qwen2_vl
from jaxrank.models.hf.errors import CheckpointMismatch
from jaxrank.models.hf.export import checkpoint_tensors, write_weights
from jaxrank.models.hf.files import (
    CONFIG_FILE,
    SafetensorsCheckpoint,
    architecture,
    resolve_checkpoint,
)
from jaxrank.models.lm import CausalLM
from jaxrank.models.vlm import VisionLanguageModel

_COPIED = ("*.json", "*.txt", "*.jinja", "*.model", "*.tiktoken")
_WEIGHT_FILES = ("model*.safetensors", "model.safetensors.index.json")


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
    if model.config != expected:
        raise CheckpointMismatch(
            f"{source / CONFIG_FILE} describes {expected}, but the model is {model.config}"
        )
    tensors = checkpoint_tensors(model, rules)

    folder.mkdir(parents=True, exist_ok=True)
    weights = {p for pattern in _WEIGHT_FILES for p in source.glob(pattern)}
    for pattern in _COPIED:
        for path in source.glob(pattern):
            if path not in weights and path.name != CONFIG_FILE:
                shutil.copyfile(path, folder / path.name)
    config = json.loads((source / CONFIG_FILE).read_text())
    config["dtype"] = str(np.dtype(next(iter(tensors.values())).dtype))
    config.pop("torch_dtype", None)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    write_weights(tensors, folder, max_shard_bytes)
    return folder
