"""Write a model's LoRA adapters (``jaxrank.models.lora``) as a PEFT adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``) that ``peft.PeftModel.from_pretrained``
applies to the transformers model of the base checkpoint.

Each adapted linear becomes PEFT's ``<module>.lora_A.weight`` [r, in] and ``lora_B.weight``
[out, r], named by the module transformers builds for the checkpoint tensor the base linear was
loaded from. Where several jaxrank linears are rows of one packed tensor (Qwen's fused vision
``qkv``), their adapters stack into one adapter of rank r x parts whose B is block-diagonal
(``rank_pattern`` / ``alpha_pattern`` keep the scale alpha / r): the same update, exactly.
A scanned stack's adapted linear (one module, A and B with a leading layer axis) becomes one
PEFT module per layer, named by the checkpoint tensor of that layer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from jaxrank.models.hf.errors import UnsupportedCheckpoint
from jaxrank.models.hf.tensors import Stacked, Tensor, stacked_rules
from jaxrank.models.lora import LoRALinear

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


def _dotted(path: tuple) -> str:
    return ".".join(map(str, path))


def _layers(
    path: tuple, module: LoRALinear, rules: dict
) -> list[tuple[Tensor, np.ndarray, np.ndarray]]:
    """``(checkpoint tensor rule, A [in, r], B [r, out])`` for each checkpoint linear that one
    adapted linear holds: itself, or each layer of a scanned stack (``models.layer_stack``:
    A and B stacked on a leading layer axis, as the kernel is)."""
    a, b = (np.asarray(v[...]) for v in (module.lora_a, module.lora_b))
    key = (*path, "kernel")
    rule = stacked_rules(rules, [key]).get(key)
    if isinstance(rule, Tensor) and a.ndim == 2:
        return [(rule, a, b)]
    if isinstance(rule, Stacked) and a.shape[:1] == (len(rule.layers),) and a.ndim == 3:
        return [(tensor, a[i], b[i]) for i, tensor in enumerate(rule.layers)]
    raise UnsupportedCheckpoint(
        f"{_dotted(path)}: adapters of shape {a.shape} match no checkpoint tensor; export the "
        "merged checkpoint instead"
    )


def _adapters_by_module(model: nnx.Module, rules: dict) -> dict[str, list]:
    """Checkpoint module name -> [(Tensor rule, A [in, r], B [r, out], scale)] of its parts."""
    modules: dict[str, list] = {}
    for path, module in nnx.iter_modules(model):
        if not isinstance(module, LoRALinear):
            continue
        for rule, a, b in _layers(path, module, rules):
            name = rule.name.removesuffix(".weight")
            modules.setdefault(name, []).append((rule, a, b, module.scale))
    return modules


def peft_tensors(
    model: nnx.Module, rules: dict, module_name: Callable[[str], str] = str
) -> tuple[dict[str, np.ndarray], dict[str, int], float, int]:
    """``(tensors, ranks of packed modules, scale, rank)`` of ``model``'s adapters, named for
    PEFT; ``module_name`` maps a checkpoint module name to transformers' module path."""
    tensors: dict[str, np.ndarray] = {}
    packed: dict[str, int] = {}
    scales, ranks = set(), set()
    for name, parts in _adapters_by_module(model, rules).items():
        key = _PEFT_PREFIX + module_name(name)
        rank = parts[0][1].shape[1]
        scales |= {scale for *_, scale in parts}
        ranks |= {a.shape[1] for _, a, _, _ in parts}
        if parts[0][0].rows is None:
            ((_, a, b, _),) = parts
            tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(a.T)
            tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(b.T)
            continue
        parts = sorted(parts, key=lambda part: part[0].rows)
        rows = max(rule.rows[1] for rule, *_ in parts)
        lora_a = np.concatenate([a.T for _, a, _, _ in parts])
        lora_b = np.zeros((rows, rank * len(parts)), lora_a.dtype)
        for i, (rule, _, b, _) in enumerate(parts):
            lora_b[rule.rows[0] : rule.rows[1], i * rank : (i + 1) * rank] = b.T
        # concatenating transposes gives a Fortran-ordered array; safetensors writes raw bytes
        tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(lora_a)
        tensors[f"{key}.lora_B.weight"] = lora_b
        packed[module_name(name)] = rank * len(parts)
    if len(scales) != 1 or len(ranks) != 1:
        raise ValueError(f"adapters of several ranks {ranks} or scales {scales}; PEFT needs one")
    return tensors, packed, scales.pop(), ranks.pop()


def save_adapter(
    model: nnx.Module,
    folder: str | Path,
    rules: dict,
    *,
    base_model: str,
    module_name: Callable[[str], str] = str,
    dropout: float = 0.0,
) -> Path:
    """Write ``model``'s adapters to ``folder`` as PEFT's LoRA folder; ``rules`` is the base
    checkpoint's name map (``decoder_rules``), ``base_model`` the checkpoint they apply to."""
    tensors, packed, scale, rank = peft_tensors(model, rules, module_name)
    if not tensors:
        raise ValueError(f"{type(model).__name__} has no LoRA adapters to export")
    targets = sorted({k[len(_PEFT_PREFIX) :].rsplit(".lora_", 1)[0] for k in tensors})
    alpha = scale * rank
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": targets,
        "rank_pattern": packed,
        "alpha_pattern": {name: scale * r for name, r in packed.items()},
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, folder / ADAPTER_WEIGHTS, {"format": "pt"})
    return folder
