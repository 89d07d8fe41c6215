"""Config checks that name the offending field, so a bad config fails at construction."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def require_positive(owner: str, **fields: float) -> None:
    for name, value in fields.items():
        if not value > 0:
            raise ValueError(f"{owner}.{name}={value!r} must be positive")


def require_choice(owner: str, name: str, value: Any, choices: Collection[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name}={value!r} must be one of {sorted(choices)}")


def require_divisible(owner: str, name: str, value: int, by_name: str, by: int) -> None:
    if value % by:
        raise ValueError(f"{owner}.{name}={value} must be divisible by {by_name}={by}")
