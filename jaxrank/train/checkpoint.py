"""Orbax checkpoints of a train state plus the data-iterator position, for exact resume.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact; the restored state is placed with the target
shardings of the live run. A restored state holding NaN or inf is refused: nothing can be
evaluated or trained from it (the trainer never saves one, see ``trainer.fit``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

# TensorStore appends its whole JSON spec to every message; the reader needs the reason only.
_TENSORSTORE_SPEC = re.compile(r"\s*\[tensorstore_spec=.*")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the run's state. The message is
    short (the library's first line); the library's full error is the ``__cause__``."""


def _brief(error: BaseException, head: int = 120, tail: int = 240) -> str:
    """``Type: first line`` of a library error without TensorStore's spec dump; a long line
    keeps its start (what failed) and its end (the innermost reason)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    first = _TENSORSTORE_SPEC.sub("", lines[0]) if lines else ""
    if len(first) > head + tail:
        first = f"{first[:head]} ... {first[-tail:]}"
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def nonfinite_leaves(tree: Any) -> list[str]:
    """The dotted names of the floating-point leaves of ``tree`` that hold a NaN or inf."""
    named = [
        (".".join(_names(path)), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    if not named:
        return []
    flags = np.asarray(jax.device_get(_finite_flags([leaf for _, leaf in named])))
    return [name for (name, _), ok in zip(named, flags, strict=True) if not ok]


def describe_leaves(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _abstract(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


def _names(path: tuple) -> tuple[str, ...]:
    """A key path as plain names, so a dataclass field and the dict key it was saved as agree."""
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _shape_mismatches(saved: Any, target: Any) -> list[str]:
    saved_flat = {_names(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]}
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
        name = ".".join(_names(path))
        got = saved_flat.get(_names(path))
        if got is None:
            out.append(f"{name}: missing from the checkpoint")
        elif tuple(got.shape) != tuple(leaf.shape) or got.dtype != leaf.dtype:
            out.append(
                f"{name}: checkpoint has {got.dtype}{list(got.shape)}, "
                f"run expects {leaf.dtype}{list(leaf.shape)}"
            )
    return out


class Checkpointer:
    """Saves ``state`` (a pytree of arrays) and ``data`` (a JSON-able dict) every few steps."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        # Handlers named up front, so a fresh manager can read an old checkpoint's metadata.
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data: dict[str, Any]) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[int, Any, dict[str, Any]]:
        """Restore onto the shapes, dtypes and shardings of ``like``; refuse a mismatch by name."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        where = self.directory / str(step)
        try:
            saved_meta = self._manager.item_metadata(step)["state"]
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {where} is unreadable ({_brief(e)}); "
                "delete that folder to resume from an earlier step, or start a new workdir"
            ) from e
        if saved_meta is not None:
            mismatches = _shape_mismatches(saved_meta, like)
            if mismatches:
                raise CheckpointError(
                    f"checkpoint {where} does not match this run's state:\n  "
                    + "\n  ".join(mismatches)
                )
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(like)), data=ocp.args.JsonRestore()
        )
        try:
            restored = self._manager.restore(step, args=args)
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {where} is corrupt or incomplete ({_brief(e)}); "
                "delete that folder to resume from an earlier step, or start a new workdir"
            ) from e
        bad = nonfinite_leaves(restored["state"])
        if bad:
            raise CheckpointError(
                f"checkpoint {where} holds NaN/inf values in {describe_leaves(bad)}; nothing can "
                "be evaluated or trained from it. Delete that folder to use an earlier step"
            )
        return step, restored["state"], dict(restored["data"])

    def set_aside(self, step: int, destination: str | Path) -> Path:
        """Move checkpoint ``step`` out of the managed folder to ``destination`` (replacing
        what is there), so that resuming and evaluating no longer see it; kept for inspection."""
        destination = Path(destination)
        if destination.exists():
            shutil.rmtree(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        (self.directory / str(step)).rename(destination)
        self._manager.reload()
        return destination

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
