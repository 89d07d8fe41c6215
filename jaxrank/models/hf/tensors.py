"""Where each jaxrank parameter lives in a Hugging Face checkpoint, and how its layout differs.

A name map takes a jaxrank parameter path (the keys of ``nnx.to_pure_dict``, flattened) to a
``Tensor`` rule. The same map serves loading (checkpoint -> parameter, one device's slice at a
time) and export (parameter -> checkpoint), so the two directions cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping

import numpy as np

Path = tuple[str | int, ...]

LINEAR = (1, 0)  # torch Linear [out, in] -> flax kernel [in, out]
CONV = (2, 3, 1, 0)  # torch Conv2d [out, in, kh, kw] -> flax kernel [kh, kw, in, out]


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One parameter's source: checkpoint tensor ``name``; ``rows`` [a, b) of its first axis when
    several parameters are packed into one tensor (PyTorch's fused q/k/v); then ``permutation``
    (jaxrank = checkpoint.transpose(permutation)); ``checkpoint_shape`` when only the rank
    differs (SigLIP's probe is [1, 1, W] in the checkpoint, [W] here)."""

    name: str
    permutation: tuple[int, ...] | None = None
    rows: tuple[int, int] | None = None
    checkpoint_shape: tuple[int, ...] | None = None

    def fits(self, checkpoint_shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
        """Whether a checkpoint tensor of ``checkpoint_shape`` becomes a parameter of ``target``."""
        if self.checkpoint_shape is not None:
            return checkpoint_shape == self.checkpoint_shape
        if self.rows is not None and not (checkpoint_shape and self.rows[1] <= checkpoint_shape[0]):
            return False
        shape = list(checkpoint_shape)
        if self.rows is not None:
            shape[0] = self.rows[1] - self.rows[0]
        if self.permutation is not None:
            shape = [shape[axis] for axis in self.permutation]
        return tuple(shape) == target

    def source_index(self, index: tuple[slice, ...]) -> tuple[slice, ...]:
        """The checkpoint slice that holds jaxrank slice ``index`` (no reshape rules)."""
        source = list(index)
        if self.permutation is not None:
            source = [slice(None)] * len(index)
            for target_axis, source_axis in enumerate(self.permutation):
                source[source_axis] = index[target_axis]
        if self.rows is not None:
            start, stop, _ = source[0].indices(self.rows[1] - self.rows[0])
            source[0] = slice(self.rows[0] + start, self.rows[0] + stop)
        return tuple(source)

    def to_checkpoint_layout(self, value: np.ndarray) -> np.ndarray:
        """A jaxrank parameter laid out as (its rows of) the checkpoint tensor."""
        if self.checkpoint_shape is not None:
            return value.reshape(self.checkpoint_shape)
        if self.permutation is not None:
            value = value.transpose(np.argsort(self.permutation))
        return value


@dataclasses.dataclass(frozen=True)
class Stacked:
    """A parameter of scanned layers (``models.layer_stack``): its leading axis runs over the
    layers, layer i read through ``layers[i]``."""

    layers: tuple[Tensor, ...]


Rule = Tensor | Stacked


def stacked_rules(rules: Mapping[Path, Tensor], paths: Iterable[Path]) -> dict[Path, Rule]:
    """``rules`` for a module whose ``paths`` include scanned layers: a path that ``rules``
    lack but hold with a layer index inserted (``layers.self_attn...`` for ``layers.0.self_attn
    ...``) becomes a ``Stacked`` rule over indices 0, 1, ... Paths ``rules`` hold stay."""
    out: dict[Path, Rule] = {}
    for path in paths:
        if path in rules:
            out[path] = rules[path]
            continue
        for cut in range(len(path)):
            head, tail = path[:cut], path[cut:]
            if (*head, 0, *tail) in rules:
                count = next(i for i in itertools.count() if (*head, i, *tail) not in rules)
                out[path] = Stacked(tuple(rules[(*head, i, *tail)] for i in range(count)))
                break
    return out


def unstacked(rules: Mapping[Path, Rule], params: Mapping[Path, np.ndarray]):
    """Per-layer ``(rules, params)`` from ``stacked_rules``' and a scanned module's flat
    parameters, for export."""
    flat_rules: dict[Path, Tensor] = {}
    flat_params: dict[Path, np.ndarray] = {}
    for path, rule in rules.items():
        if isinstance(rule, Stacked):
            for i, tensor in enumerate(rule.layers):
                flat_rules[(*path, i)] = tensor
                flat_params[(*path, i)] = np.asarray(params[path])[i]
        else:
            flat_rules[path], flat_params[path] = rule, params[path]
    return flat_rules, flat_params


def nest(prefix: Path, rules: Mapping[Path, Tensor]) -> dict[Path, Tensor]:
    """``rules`` moved under the jaxrank path ``prefix``."""
    return {(*prefix, *path): tensor for path, tensor in rules.items()}


def linear(name: str, bias: bool = True) -> dict[Path, Tensor]:
    rules = {("kernel",): Tensor(f"{name}.weight", LINEAR)}
    if bias:
        rules[("bias",)] = Tensor(f"{name}.bias")
    return rules


def layer_norm(name: str) -> dict[Path, Tensor]:
    return {("scale",): Tensor(f"{name}.weight"), ("bias",): Tensor(f"{name}.bias")}


def encoder_blocks(name: str, depth: int) -> dict[Path, Tensor]:
    """``jaxrank.models.transformer.Encoder`` from the ``encoder.layers.{i}`` blocks that CLIP and
    SigLIP checkpoints share."""
    rules: dict[Path, Tensor] = {}
    for i in range(depth):
        layer = f"{name}.layers.{i}"
        block: dict[Path, Tensor] = {
            **nest(("attn_norm",), layer_norm(f"{layer}.layer_norm1")),
            **nest(("mlp_norm",), layer_norm(f"{layer}.layer_norm2")),
            **nest(("mlp", "fc1"), linear(f"{layer}.mlp.fc1")),
            **nest(("mlp", "fc2"), linear(f"{layer}.mlp.fc2")),
        }
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            block |= nest(("attn", projection), linear(f"{layer}.self_attn.{projection}"))
        rules |= nest(("blocks", i), block)
    return rules


def packed_attention(name: str, width: int) -> dict[Path, Tensor]:
    """``MultiHeadAttention`` from ``torch.nn.MultiheadAttention``'s packed ``in_proj``."""
    rules = nest(("out_proj",), linear(f"{name}.out_proj"))
    for i, projection in enumerate(("q_proj", "k_proj", "v_proj")):
        rows = (i * width, (i + 1) * width)
        rules[(projection, "kernel")] = Tensor(f"{name}.in_proj_weight", LINEAR, rows)
        rules[(projection, "bias")] = Tensor(f"{name}.in_proj_bias", rows=rows)
    return rules


def to_checkpoint(params: Mapping[Path, np.ndarray], rules: Mapping[Path, Tensor]) -> dict:
    """Checkpoint tensors (name -> array) from flat jaxrank parameters; packed tensors are
    reassembled from their rows."""
    pieces: dict[str, list[tuple[int, np.ndarray]]] = {}
    for path, tensor in rules.items():
        value = tensor.to_checkpoint_layout(np.asarray(params[path]))
        start = 0 if tensor.rows is None else tensor.rows[0]
        pieces.setdefault(tensor.name, []).append((start, value))
    return {
        name: parts[0][1] if len(parts) == 1 else np.concatenate([v for _, v in sorted(parts)])
        for name, parts in pieces.items()
    }
