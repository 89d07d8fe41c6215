"""Experiment configs: Python files exposing ``get_config()``, with dotted command-line overrides.

An override may only set a key the config already has, so a typo fails loudly (listing the
valid keys) instead of silently training the default.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


def load_config_file(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """Import ``path`` and call its ``get_config()`` (with ``arg`` when given, big_vision style)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"jaxrank_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"config file {path} failed to import: {_first_line(e)}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config() function")
    try:
        cfg = module.get_config(arg) if arg is not None else module.get_config()
    except TypeError as e:
        if _accepts_argument(module.get_config, arg is not None):
            raise ConfigError(f"{path}: get_config() failed: {_first_line(e)}") from e
        given = f"the argument {arg!r} (FILE:ARG)" if arg is not None else "no argument"
        raise ConfigError(f"{path}: get_config() cannot be called with {given}") from e
    except Exception as e:
        raise ConfigError(f"{path}: get_config() failed: {_first_line(e)}") from e
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, not a ConfigDict")
    return cfg


def _first_line(error: BaseException) -> str:
    """``Type: first line of the message``: what a one-line error quotes of its cause."""
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _accepts_argument(fn: Any, with_arg: bool) -> bool:
    """Whether ``fn`` can be called with one positional argument (``with_arg``) or none."""
    try:
        inspect.signature(fn).bind(*(["arg"] if with_arg else []))
    except TypeError:
        return False
    return True


def flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in cfg.items():
        key = f"{prefix}{name}"
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(flat_keys(value, key + "."))
        else:
            keys.append(key)
    return keys


def _parse_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _coerce(key: str, old: Any, new: Any) -> Any:
    """Match the type of the value being replaced, so ``--config.lr=1`` stays a float."""
    if old is None or new is None:
        return new
    if isinstance(old, bool) or isinstance(new, bool):
        if isinstance(old, bool) and isinstance(new, bool):
            return new
    elif isinstance(old, float) and isinstance(new, int):
        return float(new)
    elif isinstance(old, tuple) and isinstance(new, list | tuple):
        return tuple(new)
    elif isinstance(old, type(new)) or isinstance(new, type(old)):
        return new
    elif isinstance(old, str):
        return str(new)
    raise ConfigError(
        f"config key {key!r} expects {type(old).__name__} (current value {old!r}), "
        f"got {type(new).__name__} {new!r}"
    )


def set_value(cfg: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Set an existing dotted key; an unknown key names every valid one."""
    node = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            valid = "\n  ".join(flat_keys(cfg))
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(
                f"unknown config key {key!r} ({part!r} is not a key of {where}). "
                f"Valid keys:\n  {valid}"
            )
        if depth < len(parts) - 1:
            node = node[part]
    old = node[parts[-1]]
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"config key {key!r} is a group; set one of its fields instead")
    with node.unlocked():
        node[parts[-1]] = _coerce(key, old, value)


def apply_overrides(
    cfg: ml_collections.ConfigDict, overrides: Iterable[str]
) -> ml_collections.ConfigDict:
    """Apply ``a.b=value`` strings (values parsed as Python literals, else kept as text)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        set_value(cfg, key.strip(), _parse_value(text))
    return cfg


def to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=repr)


def diff(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys whose values differ between two resolved configs (for refusing a mismatched resume)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(diff(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
