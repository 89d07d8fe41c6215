"""The rules every experiment config obeys, checked before a run writes anything.

A value that can never work (a batch of 0 rows, a negative step count, a data folder that is
not there) fails here with the key and what was expected, instead of deep inside a recipe after
the run folder was already written. Keys are matched by their last name wherever they sit, so
``train.batch_size``, ``contrastive.batch_size`` and ``eval.batch_size`` obey one rule.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import ml_collections

from jaxrank.configs import ConfigError
from jaxrank.parallel import resolve_mesh

POSITIVE = ("batch_size", "log_every", "checkpoint_every", "eval_every", "num_generations")
"""Counts that must be at least 1 (an interval or a batch of 0 can never run)."""
NON_NEGATIVE = ("steps", "warmup_steps", "num_queries", "data_threads", "logit_chunk")
"""Counts where 0 means "none" or "all" (a pretrained model used as is, every test query)."""
DATA_PATH_SUFFIXES = ("root", "_dir", "_csv", "kb", "id2name")
"""Keys of the ``data`` section that name files or folders the run reads."""


def _leaves(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for name, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.extend(_leaves(value, f"{prefix}{name}."))
        else:
            out.append((f"{prefix}{name}", value))
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_values(cfg: ml_collections.ConfigDict) -> None:
    """Counts in range (``POSITIVE``, ``NON_NEGATIVE``), learning rates finite and >= 0, and
    ``profile_steps`` either empty or ``(first, last)`` within the section's steps."""
    for key, value in _leaves(cfg):
        name = key.rsplit(".", 1)[-1]
        if name in POSITIVE and not (_is_int(value) and value >= 1):
            raise ConfigError(f"config key {key!r} is {value!r}; expected an integer >= 1")
        if name in NON_NEGATIVE and not (_is_int(value) and value >= 0):
            raise ConfigError(f"config key {key!r} is {value!r}; expected an integer >= 0")
        if name == "learning_rate" and not (
            isinstance(value, int | float) and math.isfinite(value) and value >= 0
        ):
            raise ConfigError(f"config key {key!r} is {value!r}; expected a finite number >= 0")
    for key, value in _leaves(cfg):
        if key.rsplit(".", 1)[-1] == "profile_steps" and value:
            section = key.rpartition(".")[0]
            steps = cfg[section].get("steps", None) if section else cfg.get("steps", None)
            if not (
                len(value) == 2
                and all(_is_int(v) for v in value)
                and 1 <= value[0] <= value[1]
                and (steps is None or value[1] <= steps)
            ):
                raise ConfigError(
                    f"config key {key!r} is {value!r}; expected () or (first, last) with "
                    f"1 <= first <= last <= {section or 'the'} steps ({steps})"
                )


def check_paths(cfg: ml_collections.ConfigDict) -> None:
    """Every data file or folder the config names exists (``data.*`` keys ending in
    ``DATA_PATH_SUFFIXES``), and a shared stage's run folder (``*_workdir``: trained there
    when absent, so only its parent must exist) can be made; "" means unused."""
    for key, value in _leaves(cfg):
        name = key.rsplit(".", 1)[-1]
        is_data = key.startswith("data.") and name.endswith(DATA_PATH_SUFFIXES)
        is_run = name.endswith("_workdir")
        if not (is_data or is_run) or not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        unusable_run = path.is_file() or not path.absolute().parent.is_dir()
        if is_run and unusable_run:
            raise ConfigError(
                f"config key {key!r} names {value}; expected a run folder (or a new one in an "
                "existing folder)"
            )
        if is_data and not path.exists():
            raise ConfigError(
                f"config key {key!r} names {value}, which does not exist; set --config.{key}=<path>"
            )


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Every rule above, and the mesh resolved against this machine's devices and recorded in
    ``cfg`` (``parallel.resolve_mesh``): the one check each run's config passes before it
    writes anything."""
    check_values(cfg)
    resolve_mesh(cfg)
    check_paths(cfg)
