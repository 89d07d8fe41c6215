"""The structured crop policy (``region_r1.policy.CropPolicy``; transformers has no
counterpart) as a folder that stands without its run: ``model.safetensors`` (parameters under
their dotted jaxrank paths), ``policy_config.json`` (its ``CropPolicyConfig`` and how its inputs
are prepared), and ``load_policy`` to read it back.

    from jaxrank.region_r1.policy_export import load_policy
    policy, inputs = load_policy("exported/")
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from safetensors.numpy import load_file, save_file

from jaxrank.models.text import TextConfig
from jaxrank.models.vit import VisionConfig
from jaxrank.region_r1.policy import CropPolicy, CropPolicyConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "policy_config.json"
FORMAT = "jaxrank.region_r1.CropPolicy/1"


def _dotted(path: tuple) -> str:
    return ".".join(map(str, path))


def policy_tensors(policy: CropPolicy) -> dict[str, np.ndarray]:
    """The policy's parameters on the host, by dotted path."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(policy, nnx.Param)))
    return {_dotted(p): np.ascontiguousarray(jax.device_get(v)) for p, v in flat.items()}


def config_dict(config: CropPolicyConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["dtype"], out["param_dtype"] = (
        jnp.dtype(t).name for t in (config.dtype, config.param_dtype)
    )
    return out


def _dataclass(cls: type, values: dict[str, Any]) -> Any:
    """``cls`` from ``dataclasses.asdict``'s dict, nested dataclasses (a tower's ``stacking``)
    and tuples rebuilt."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = _dataclass(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(d: dict[str, Any]) -> CropPolicyConfig:
    return CropPolicyConfig(
        vision=_dataclass(VisionConfig, d["vision"]),
        text=_dataclass(TextConfig, d["text"]),
        fusion_depth=d["fusion_depth"],
        num_bins=d["num_bins"],
        dtype=jnp.dtype(d["dtype"]),
        param_dtype=jnp.dtype(d["param_dtype"]),
    )


def save_policy(policy: CropPolicy, folder: str | Path, inputs: dict[str, Any]) -> Path:
    """Write ``policy`` to ``folder``; ``inputs`` describes how its inputs are prepared (image
    size and normalisation, tokenizer), kept beside the config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "config": config_dict(policy.config), "inputs": inputs}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    save_file(policy_tensors(policy), folder / WEIGHTS_FILE, {"format": FORMAT})
    return folder


def load_policy(folder: str | Path) -> tuple[CropPolicy, dict[str, Any]]:
    """``(policy, inputs)`` from a ``save_policy`` folder; every tensor must be the config's."""
    folder = Path(folder)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG_FILE}: format {meta.get('format')!r}, not {FORMAT}")
    policy = nnx.eval_shape(lambda: CropPolicy(config_from_dict(meta["config"]), rngs=nnx.Rngs(0)))
    expected = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(policy, nnx.Param)))
    stored = load_file(folder / WEIGHTS_FILE)
    names = {_dotted(p): p for p in expected}
    if set(names) != set(stored):
        missing, extra = sorted(set(names) - set(stored)), sorted(set(stored) - set(names))
        raise ValueError(f"{folder / WEIGHTS_FILE}: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, path in names.items():
        if stored[name].shape != expected[path].shape:
            raise ValueError(
                f"{folder / WEIGHTS_FILE}: {name} is {stored[name].shape}, expected "
                f"{expected[path].shape}"
            )
    values = {path: jnp.asarray(stored[name]) for name, path in names.items()}
    state = nnx.state(policy)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(values))
    nnx.update(policy, state)
    return policy, meta["inputs"]
