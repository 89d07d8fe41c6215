"""Create a module's parameters from checkpoint tensors, each directly on its sharding.

The module is first built abstractly (shapes only), then every parameter is created with
``jax.make_array_from_callback``: each device reads just its own slice from the safetensors
files, so a large checkpoint never exists as a full extra copy per device.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from jax.sharding import Mesh, SingleDeviceSharding
from jax.typing import DTypeLike
from tqdm.auto import tqdm

from jaxrank import parallel
from jaxrank.models.hf.errors import CheckpointMismatch
from jaxrank.models.hf.files import SafetensorsCheckpoint
from jaxrank.models.hf.tensors import Path as ParamPath
from jaxrank.models.hf.tensors import Rule, Stacked, Tensor, stacked_rules

# Non-persistent buffers that checkpoints written by older transformers still carry.
_IGNORED_SUFFIXES = ("position_ids",)
_LISTED = 8  # problems named in an error message before "and N more"


@dataclasses.dataclass(frozen=True)
class LoadedModule:
    """A module with checkpoint parameters; ``missing`` kept their random init (only with
    ignore_missing), ``ignored`` checkpoint tensors had no use (only with ignore_unused)."""

    model: nnx.Module
    loaded: int
    missing: tuple[str, ...]
    ignored: tuple[str, ...]


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def _check(
    checkpoint: SafetensorsCheckpoint,
    rules: dict[ParamPath, Tensor],
    abstract: dict[ParamPath, jax.ShapeDtypeStruct],
    expected_names: set[str],
    *,
    ignore_unused: bool,
    ignore_missing: bool,
    what: str,
) -> tuple[list[str], list[str]]:
    """Every parameter's tensor exists with a fitting shape; every tensor has a use.
    Returns (missing tensor names, ignored tensor names)."""
    uncovered = sorted(".".join(map(str, p)) for p in set(abstract) - set(rules))
    if uncovered:  # a bug in a family's name map, not in the user's checkpoint
        raise RuntimeError(f"no checkpoint rule for jaxrank parameters {_listed(uncovered)}")
    missing, mismatched = [], []
    for path, rule in rules.items():
        param_shape = tuple(abstract[path].shape)
        if isinstance(rule, Stacked) and param_shape[0] != len(rule.layers):
            mismatched.append(
                f"{'.'.join(map(str, path))}: {param_shape[0]} layers stacked, the "
                f"checkpoint has {len(rule.layers)}"
            )
            continue
        for tensor, target in _per_layer(rule, param_shape):
            if tensor.name not in checkpoint:
                missing.append(tensor.name)
                continue
            shape = checkpoint.shape(tensor.name)
            if not tensor.fits(shape, target):
                mismatched.append(
                    f"{tensor.name}: checkpoint shape {list(shape)} does not fit "
                    f"{'.'.join(map(str, path))} of shape {list(target)}"
                )
    unused = sorted(
        name
        for name in checkpoint
        if name not in expected_names and not name.endswith(_IGNORED_SUFFIXES)
    )
    problems = []
    if mismatched:
        problems.append(f"shape mismatches: {_listed(mismatched)}")
    if missing and not ignore_missing:
        problems.append(f"missing tensors: {_listed(sorted(set(missing)))}")
    if unused and not ignore_unused:
        problems.append(f"unused tensors: {_listed(unused)} (pass ignore_unused=True to skip them)")
    if problems:
        problems_text = "; ".join(problems)
        raise CheckpointMismatch(f"{checkpoint.folder} does not match {what}: {problems_text}")
    return sorted(set(missing)), unused


def _per_layer(rule: Rule, shape: tuple[int, ...]) -> list[tuple[Tensor, tuple[int, ...]]]:
    """The checkpoint tensors of a parameter of ``shape`` and the shape each one fills."""
    if isinstance(rule, Stacked):
        return [(tensor, shape[1:]) for tensor in rule.layers]
    return [(rule, shape)]


def _reader(checkpoint: SafetensorsCheckpoint, rule: Rule, shape: tuple, dtype: DTypeLike):
    """The callback ``jax.make_array_from_callback`` calls once per device with its slice;
    a ``Stacked`` parameter's slice is its layers' slices, stacked."""
    if isinstance(rule, Stacked):
        readers = [_reader(checkpoint, tensor, shape[1:], dtype) for tensor in rule.layers]
        return lambda index: np.stack([read(index[1:]) for read in readers[index[0]]])
    tensor = rule

    def read(index: tuple[slice, ...]) -> np.ndarray:
        if tensor.checkpoint_shape is not None or not shape:
            value = checkpoint.read(tensor.name).reshape(shape)[index]
        else:
            value = checkpoint.read(tensor.name, tensor.source_index(index))
            if tensor.permutation is not None:
                value = value.transpose(tensor.permutation)
        return np.require(value.astype(dtype), requirements="C")

    return read


def load_module(
    build: Callable[[nnx.Rngs], nnx.Module],
    rules: dict[ParamPath, Tensor],
    checkpoint: SafetensorsCheckpoint,
    expected_names: set[str],
    *,
    mesh: Mesh | None,
    seed: int,
    ignore_unused: bool,
    ignore_missing: bool,
    what: str,
    fsdp: bool = False,
) -> LoadedModule:
    """``build(rngs)``'s module with every parameter read through ``rules`` from
    ``checkpoint``, placed with its annotated sharding on ``mesh`` (or the default device),
    also split over the data axis with ``fsdp``. ``expected_names``: every tensor the
    checkpoint may hold (the rest are unused)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(seed))))
    abstract = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    rules = stacked_rules(rules, abstract)  # scanned layers: per-layer tensors stacked
    missing, ignored = _check(
        checkpoint,
        rules,
        abstract,
        expected_names,
        ignore_unused=ignore_unused,
        ignore_missing=ignore_missing,
        what=what,
    )
    if mesh is None:
        shardings = dict.fromkeys(abstract, SingleDeviceSharding(jax.devices()[0]))
    else:
        shardings = traverse_util.flatten_dict(
            nnx.to_pure_dict(parallel.state_shardings(state, mesh, fsdp=fsdp))
        )
    initial = None
    if missing:  # only with ignore_missing: a concrete random init to fill the gaps
        with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
            initial = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(build(nnx.Rngs(seed)))))

    values = {}
    loaded = 0
    for path, leaf in tqdm(abstract.items(), desc=f"loading {checkpoint.folder.name}", leave=False):
        tensor = rules[path]
        first = tensor.layers[0] if isinstance(tensor, Stacked) else tensor
        if first.name not in checkpoint:
            values[path] = jax.device_put(initial[path], shardings[path])
            continue
        read = _reader(checkpoint, tensor, tuple(leaf.shape), leaf.dtype)
        values[path] = jax.make_array_from_callback(leaf.shape, shardings[path], read)
        loaded += 1
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(values))
    return LoadedModule(nnx.merge(graphdef, state), loaded, tuple(missing), tuple(ignored))


@dataclasses.dataclass(frozen=True)
class PretrainedModule:
    """A module loaded from a checkpoint folder, its jaxrank config, and the tensors read."""

    model: nnx.Module
    config: Any
    folder: Path
    loaded: int


def load_configured(
    module_class: Callable[..., nnx.Module],
    config: Any,
    rules: dict[ParamPath, Tensor],
    checkpoint: SafetensorsCheckpoint,
    expected_names: set[str],
    *,
    dtype: DTypeLike,
    compute_dtype: DTypeLike | None,
    mesh: Mesh | None,
    fsdp: bool,
    seed: int,
    ignore_unused: bool,
    what: str,
) -> PretrainedModule:
    """``load_module`` for a module built as ``module_class(config, dtype=, param_dtype=,
    rngs=)``: parameters stored in ``dtype``, computed in ``compute_dtype`` (default ``dtype``),
    every parameter required from the checkpoint."""
    dtype = jnp.dtype(dtype)
    compute = dtype if compute_dtype is None else jnp.dtype(compute_dtype)
    module = load_module(
        lambda rngs: module_class(config, dtype=compute, param_dtype=dtype, rngs=rngs),
        rules,
        checkpoint,
        expected_names,
        mesh=mesh,
        fsdp=fsdp,
        seed=seed,
        ignore_unused=ignore_unused,
        ignore_missing=False,
        what=what,
    )
    return PretrainedModule(module.model, config, checkpoint.folder, module.loaded)
