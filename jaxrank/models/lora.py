"""Low-rank adapters (LoRA) for any nnx module tree that contains ``nnx.Linear`` layers.

``apply_lora`` wraps the targeted linears: each keeps its original ``nnx.Linear`` (the same
kernel and bias variables, so loaded or sharded weights stay where they are) and adds ``A``
[in, r] and ``B`` [r, out] as ``LoRAParam``s. ``split_lora`` then separates the adapters, which
a ``TrainState`` trains and checkpoints, from the base weights, which a recipe passes as
``frozen``. Conventions are PEFT's, so adapters move between the two: ``B`` starts at zero and
``A`` kaiming-uniform, the output is ``base(x) + dropout(x) A B * alpha / r``, and "all-linear"
means every linear except the output head ``lm_head``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, MutableMapping, MutableSequence, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxrank.models.validation import require_positive

ALL_LINEAR = "all-linear"
OUTPUT_HEAD = "lm_head"

# PEFT's default: torch's kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)).
_A_INIT = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

M = TypeVar("M", bound=nnx.Module)
S = TypeVar("S")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """``targets`` is "all-linear" or module names; a name matches a linear whose dotted path
    (``layers.0.self_attn.q_proj``) ends with it, as PEFT's ``target_modules`` do."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: str | tuple[str, ...] = ALL_LINEAR

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not isinstance(self.rank, int):
            raise ValueError(f"{owner}.rank={self.rank!r} must be an integer")
        require_positive(owner, rank=self.rank, alpha=self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{owner}.dropout={self.dropout!r} must be in [0, 1)")
        if isinstance(self.targets, str):
            if self.targets != ALL_LINEAR:
                raise ValueError(
                    f"{owner}.targets={self.targets!r} must be {ALL_LINEAR!r} or a tuple of "
                    "module names"
                )
            return
        object.__setattr__(self, "targets", tuple(self.targets))
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"{owner}.targets={self.targets!r} must be non-empty module names")


class LoRAParam(nnx.Param):
    """An adapter weight. Still an ``nnx.Param`` (``nnx.Param`` filters include it), and
    ``nnx.state(model, LoRAParam)`` selects the adapters alone."""


def _adapter_specs(spec: Sequence[Any] | None, ndim: int) -> tuple[tuple[Any, ...] | None, ...]:
    """A is split like the kernel's input dimension and B like its output dimension, so that a
    tensor-parallel layer's adapter needs no collective the base matmul does not already need;
    a stacked kernel's leading (layer) axes keep their spec."""
    if spec is None:
        return None, None
    *leading, rows, cols = (*spec, *(None,) * (ndim - len(spec)))
    return (*leading, rows, None), (*leading, None, cols)


class LoRALinear(nnx.Module):
    """``base(x) + dropout(x) @ A @ B * alpha / rank``, in ``base``'s compute dtype.

    The dropout follows nnx's train/eval switch (active by default, off in
    ``nnx.view(model, deterministic=True)``) and draws from the ``dropout`` stream of ``rngs``
    (``nnx.reseed(model, dropout=key)`` sets it, e.g. from a loss function's rng).
    """

    def __init__(
        self, base: nnx.Linear, rank: int, alpha: float, *, dropout: float = 0.0, rngs: nnx.Rngs
    ):
        self.base = base
        self.scale = alpha / rank
        kernel = base.kernel[...]
        # Scanned layers (models.layer_stack) stack their kernels on leading axes: so do A, B.
        leading = kernel.shape[:-2]
        init = _A_INIT if not leading else _stacked_a_init(len(leading))
        a = init(rngs.params(), (*leading, base.in_features, rank), kernel.dtype)
        b = jnp.zeros((*leading, rank, base.out_features), kernel.dtype)
        metadata = base.kernel.get_metadata("out_sharding", None)
        spec_a, spec_b = _adapter_specs(metadata, kernel.ndim)
        placed = getattr(kernel, "sharding", None)  # a tracer (nnx.eval_shape, jit) has none
        if isinstance(placed, NamedSharding):  # already on a mesh: put A and B beside it
            placed_a, placed_b = _adapter_specs(tuple(placed.spec), kernel.ndim)
            a = jax.device_put(a, NamedSharding(placed.mesh, PartitionSpec(*placed_a)))
            b = jax.device_put(b, NamedSharding(placed.mesh, PartitionSpec(*placed_b)))
        self.lora_a = LoRAParam(a, eager_sharding=False, **_sharding_metadata(spec_a))
        self.lora_b = LoRAParam(b, eager_sharding=False, **_sharding_metadata(spec_b))
        self.dropout = nnx.Dropout(dropout, rngs=rngs if dropout > 0 and not leading else None)
        if dropout > 0 and leading:  # one stream per stacked layer, scanned with it
            self.dropout.rngs = rngs["dropout"].split(leading)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        base = self.base
        x, a, b = base.promote_dtype(
            (self.dropout(inputs), self.lora_a[...], self.lora_b[...]), dtype=base.dtype
        )
        update = jnp.matmul(jnp.matmul(x, a, precision=base.precision), b, precision=base.precision)
        return base(inputs) + update * self.scale

    def merged(self) -> nnx.Linear:
        """``base`` with ``A B alpha / rank`` added into its kernel (the same variable, updated;
        summed in at least float32 at full matmul precision, stored in the kernel's dtype and
        sharding)."""
        kernel = self.base.kernel[...]
        wide = jnp.promote_types(kernel.dtype, jnp.float32)
        a, b = self.lora_a[...].astype(wide), self.lora_b[...].astype(wide)
        delta = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST) * self.scale
        merged = (kernel.astype(wide) + delta).astype(kernel.dtype)
        self.base.kernel.set_value(jax.device_put(merged, kernel.sharding))
        return self.base


def _stacked_a_init(axes: int) -> nnx.Initializer:
    """``_A_INIT`` for each layer of a stacked kernel (the leading axes are not fan-in)."""
    return nnx.initializers.variance_scaling(
        1 / 3, "fan_in", "uniform", batch_axis=tuple(range(axes))
    )


def _sharding_metadata(spec: tuple[Any, Any] | None) -> dict[str, Any]:
    return {} if spec is None else {"out_sharding": spec}


def _child(node: Any, key: Any) -> Any:
    return node[key] if isinstance(node, Sequence | Mapping) else getattr(node, key)


def _replace(model: nnx.Module, path: tuple[Any, ...], new: nnx.Module) -> None:
    if not path:
        raise ValueError(
            f"the model itself is a {type(model).__name__}: LoRA adapts the linears inside a "
            "model; wrap a bare nnx.Linear with LoRALinear directly"
        )
    parent = model
    for key in path[:-1]:
        parent = _child(parent, key)
    if isinstance(parent, MutableSequence | MutableMapping):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(map(str, path))


def _targeted(paths: list[tuple[Any, ...]], targets: str | tuple[str, ...]) -> list[tuple]:
    if targets == ALL_LINEAR:
        return [p for p in paths if not p or p[-1] != OUTPUT_HEAD]
    matches = lambda path, t: _dotted(path) == t or _dotted(path).endswith("." + t)
    unmatched = [t for t in targets if not any(matches(p, t) for p in paths)]
    if unmatched:
        names = sorted({str(p[-1]) for p in paths if p})
        raise ValueError(f"LoRA targets {unmatched} match no nnx.Linear; the linears are {names}")
    return [p for p in paths if any(matches(p, t) for t in targets)]


def apply_lora(model: M, config: LoRAConfig, rngs: nnx.Rngs) -> M:
    """Wrap ``model``'s targeted ``nnx.Linear``s in ``LoRALinear``s, in place, and return
    ``model``. ``rngs`` gives A's initialisation (``params``) and the dropout (``dropout``)."""
    modules = list(nnx.iter_modules(model))
    if any(isinstance(m, LoRALinear) for _, m in modules):
        raise ValueError("the model already has LoRA adapters; merge_lora it first")
    linears = {path: m for path, m in modules if isinstance(m, nnx.Linear)}
    if not linears:
        raise ValueError(f"{type(model).__name__} contains no nnx.Linear to adapt")
    for path in _targeted(list(linears), config.targets):
        adapted = LoRALinear(
            linears[path], config.rank, config.alpha, dropout=config.dropout, rngs=rngs
        )
        _replace(model, path, adapted)
    return model


def merge_lora(model: M) -> M:
    """Fold every adapter into its base kernel (``W + A B alpha / r``) and put the plain
    ``nnx.Linear`` back at its path, in place; returns ``model``, ready for the checkpoint
    exporters. ``nnx.clone`` the model first to keep training the adapters."""
    for path, module in list(nnx.iter_modules(model)):
        if isinstance(module, LoRALinear):
            _replace(model, path, module.merged())
    return model


def split_lora(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, adapters, rest)``: a ``TrainState`` holds ``adapters``, a recipe passes
    ``rest`` (base weights, the dropout's RNG state) as ``frozen``, and
    ``nnx.merge(graphdef, adapters, rest)`` (``join_lora`` inside a loss) is the model again."""
    graphdef, adapters, rest = nnx.split(model, LoRAParam, ...)
    if not jax.tree.leaves(adapters):
        raise ValueError(f"{type(model).__name__} has no LoRA adapters; apply_lora it first")
    return graphdef, adapters, rest


def join_lora(
    graphdef: nnx.GraphDef,
    adapters: nnx.State,
    rest: nnx.State,
    *,
    dropout_key: jax.Array | None = None,
) -> nnx.Module:
    """The model inside a pure function (a loss, a rollout): ``nnx.merge`` with fresh variables,
    so that the dropout's RNG stream may advance under ``jax.grad`` (variables that came in
    through an outer ``jax.jit`` may not be mutated there), reseeded from ``dropout_key``."""
    model = nnx.merge(graphdef, adapters, rest, copy=True)
    if dropout_key is not None:  # a scanned stack's streams get one key per layer
        nnx.reseed(model, dropout=dropout_key, policy="match_shape")
    return model


def adapters_off(adapters: S) -> S:
    """``adapters`` zeroed: ``join_lora(graphdef, adapters_off(adapters), rest)`` computes the
    base model exactly (GRPO's reference policy) without a second copy of the base weights.
    A pure function of arrays, so it runs inside ``jax.jit``; no gradient flows through it."""
    return jax.tree.map(jnp.zeros_like, adapters)
