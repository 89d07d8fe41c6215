"""Orbax checkpoints of a train state plus the data-iterator position, for exact resume.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact; the restored state is placed with the target
shardings of the live run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the run's state."""


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
                f"checkpoint {where} is unreadable ({type(e).__name__}: {e}); "
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
                f"checkpoint {where} is corrupt or incomplete ({type(e).__name__}: {e}); "
                "delete that folder to resume from an earlier step, or start a new workdir"
            ) from e
        return step, restored["state"], dict(restored["data"])

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
