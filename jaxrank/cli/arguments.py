"""Reading a command's ``--config FILE[:ARG]`` and its ``--config.a.b=v`` overrides."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import ml_collections

from jaxrank.configs import ConfigError, apply_overrides, load_config_file

CONFIG_HELP = "experiment config file (FILE or FILE:ARG); override keys with --config.a.b=v"


def split_overrides(extra: Sequence[str]) -> list[str]:
    """Collect ``--config.a.b=v`` and ``--config.a.b v``; anything else is a usage error."""
    overrides, i = [], 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--config."):
            raise ConfigError(
                f"unrecognised argument {item!r} (overrides look like --config.a.b=v)"
            )
        body = item[len("--config.") :]
        if "=" not in body:
            if i + 1 >= len(extra):
                raise ConfigError(f"override {item!r} has no value")
            body, i = f"{body}={extra[i + 1]}", i + 1
        overrides.append(body)
        i += 1
    return overrides


def load_config(args: argparse.Namespace, extra: Sequence[str]) -> ml_collections.ConfigDict:
    """The config named by ``args.config`` with the overrides in ``extra`` applied."""
    path, _, arg = args.config.partition(":")
    return apply_overrides(load_config_file(path, arg or None), split_overrides(extra))
