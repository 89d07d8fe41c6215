"""Where a Hugging Face checkpoint's files are, and lazy reads of its safetensors.

Only safetensors are read: a folder that holds weights only as pickles (``pytorch_model.bin``) is
refused, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from jaxrank.models.hf.errors import CheckpointNotFound, UnreadableCheckpoint, UnsupportedCheckpoint

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_UNSAFE_WEIGHTS = (
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5",
    "flax_model.msgpack",
    "model.ckpt.index",
)
# What a hub download fetches: configs, weights and tokenizer/processor files, never pickles.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def resolve_checkpoint(source: str | Path, *, revision: str | None = None) -> Path:
    """A local checkpoint folder for ``source``: the folder itself, or a hub id downloaded into
    the Hugging Face cache (needs network access, or the files already cached)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointNotFound(
            f"{source}: expected a checkpoint folder (with {CONFIG_FILE}), got a file"
        )
    text = str(source)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise CheckpointNotFound(f"{source}: no such checkpoint folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id=text, revision=revision, allow_patterns=_HUB_PATTERNS)
        )
    except Exception as err:  # the hub client raises many types; all mean "not obtainable"
        raise CheckpointNotFound(
            f"{source!r} is neither a local folder nor a hub id that could be fetched: {err}"
        ) from err


def read_config(folder: Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as a dict."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointNotFound(
            f"{folder}: no {CONFIG_FILE}; not a Hugging Face checkpoint folder"
        )
    return read_json_object(path)


def read_json_object(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON file (config, index, processor) as a dict, or an error naming it."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UnreadableCheckpoint(f"{path}: not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise UnreadableCheckpoint(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _open(file: Path) -> Any:
    """A safetensors file opened lazily; a truncated or corrupt one is named."""
    try:
        return safe_open(file, framework="np")
    except Exception as err:  # safetensors raises its own SafetensorError and OSError alike
        raise UnreadableCheckpoint(f"{file}: not a readable safetensors file ({err})") from err


def architecture(folder: Path, accepted: tuple[str, ...]) -> str:
    """The checkpoint's first architecture among ``accepted``, or an error naming the file."""
    names = list(read_config(folder).get("architectures") or [])
    for name in names:
        if name in accepted:
            return name
    raise UnsupportedCheckpoint(
        f"{folder / CONFIG_FILE}: architectures={names}; expected one of {list(accepted)}"
    )


def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UnreadableCheckpoint(f"{index}: expected JSON with a 'weight_map' object")
        files = {name: folder / file for name, file in weight_map.items()}
        for file in sorted(set(files.values())):
            if not file.is_file():
                raise CheckpointNotFound(f"{index} names {file.name}, which is not in {folder}")
        return files
    single = folder / SINGLE_FILE
    if single.is_file():
        with _open(single) as handle:
            return dict.fromkeys(handle.keys(), single)
    unsafe = [name for name in _UNSAFE_WEIGHTS if (folder / name).exists()]
    if unsafe:
        raise UnsupportedCheckpoint(
            f"{folder} holds weights only as {', '.join(unsafe)}; jaxrank loads safetensors only "
            "(pickled weights can run code on load). Convert them once with transformers: "
            "`Model.from_pretrained(folder).save_pretrained(out, safe_serialization=True)`"
        )
    raise CheckpointNotFound(f"{folder}: neither {SINGLE_FILE} nor {INDEX_FILE}")


class SafetensorsCheckpoint:
    """The tensors of one checkpoint folder (single file or sharded with an index), read lazily:
    a slice of a tensor reads only those bytes, so each device can load just its shard."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._files = _weight_files(folder)
        self._handles: dict[Path, Any] = {}

    def _handle(self, name: str) -> Any:
        file = self._files[name]
        if file not in self._handles:
            self._handles[file] = _open(file)
        return self._handles[file]

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._files))

    def __len__(self) -> int:
        return len(self._files)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """The tensor ``name``, or only ``index`` of it."""
        if index is None:
            return np.asarray(self._handle(name).get_tensor(name))
        return np.asarray(self._handle(name).get_slice(name)[index])
