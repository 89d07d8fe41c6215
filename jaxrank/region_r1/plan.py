"""Does Region-R1's published setting fit, on what chip, with what mesh and batch: its three
programs compiled at the config's per-device batch (XLA's figures beside the analytic model's),
then per chip the step's verdict, the largest per-chip batch the analytic model allows
(confirmed by compiling the programs at it) and the smallest ``model`` axis that fits the
config's batch.

The step runs its programs one after another, so its peak on a device is what stays resident
(``Programs.resident``) plus the largest program's transient part: its peak less the resident
arguments it reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from jax.sharding import AbstractMesh

from jaxrank import parallel
from jaxrank.perf import plan
from jaxrank.perf.memory import tree_bytes
from jaxrank.region_r1.plan_programs import Programs
from jaxrank.region_r1.plan_setting import Setting, estimate, read_setting

PROGRAMS = ("update", "sampler", "judge")
MODEL_AXES = (1, 2, 4, 8)


def _batch_arguments(programs: Programs, name: str, b: int) -> int:
    """Bytes per device of ``name``'s arguments that are not resident (prompts, completions,
    images, ...)."""
    _, args = programs.program(name, b)
    resident = {
        "update": [programs.state, programs.base],
        "sampler": [programs.adapters, programs.base],
        "judge": [programs.kb, programs.scorer, programs.base],
    }[name]
    return tree_bytes(args) - tree_bytes(resident)


def _analytic(programs: Programs, name: str, b: int, model: int | None = None):
    """The analytic ``Estimate`` with ``model`` devices splitting the weights (default: the
    programs' mesh's)."""
    s = programs.setting
    arguments = dict(programs.persistent_arguments(name))
    arguments["batch"] = _batch_arguments(programs, name, b)
    model = model or programs.mesh.shape[parallel.MODEL]
    return estimate(s, name, b, arguments, model)


def _transient_analytic(programs: Programs, name: str, b: int, **mesh: int) -> float:
    e = _analytic(programs, name, b, **mesh)
    return e.peak - sum(v for k, v in e.arguments.items() if k != "batch")


def analytic_step_peak(programs: Programs, b: int, resident: dict[str, float], **mesh) -> float:
    """Resident bytes plus the largest program's transient part, analytic."""
    return sum(resident.values()) + max(
        _transient_analytic(programs, name, b, **mesh) for name in PROGRAMS
    )


def compiled_step(programs: Programs, b: int) -> dict[str, Any]:
    """Each program compiled at ``b`` queries per device, and the step's peak from them."""
    figures = {
        name: plan.compile_program(*programs.program(name, b), programs.mesh) for name in PROGRAMS
    }
    transient = {
        name: f.peak - f.arguments + _batch_arguments(programs, name, b)
        for name, f in figures.items()
    }
    peak = sum(programs.resident().values()) + max(transient.values())
    return {"programs": figures, "peak": peak}


def resident_on(programs: Programs, data: int, model: int) -> dict[str, float]:
    """``Programs.resident`` on a ``data`` x ``model`` mesh (shard shapes of the same specs)."""
    mesh = AbstractMesh((data, model), (parallel.DATA, parallel.MODEL))
    on = lambda tree: tree_bytes(plan.abstract(tree, mesh))
    return {
        "policy_base": on(programs.base),
        "train_state": on(programs.state),
        "scorer": on(programs.scorer),
        "knowledge_base": on(programs.kb),
    }


def recommend_mesh(programs: Programs, chips: int, capacity: float) -> dict[str, int] | None:
    """The smallest ``model`` axis (``data`` = chips / model) whose analytic step peak at the
    config's global batch fits ``capacity``; None when none does."""
    batch = programs.setting.batch
    for model in MODEL_AXES:
        data = chips // model
        if chips % model or batch % data:
            continue
        resident = resident_on(programs, data, model)
        peak = analytic_step_peak(programs, batch // data, resident, model=model)
        if peak <= capacity:
            return {"data": data, "model": model}
    return None


def _setting_summary(s: Setting) -> dict[str, Any]:
    lm, v = s.policy.lm, s.policy.vision
    return {
        "policy": f"LM {lm.depth} x {lm.width} (MLP {lm.mlp_dim}, vocab {lm.vocab_size}); "
        f"vision {v.depth} x {v.width}",
        "scorer": f"ViT {s.scorer.vision.depth} x {s.scorer.vision.width} at "
        f"{s.scorer.vision.image_size} px",
        "dtype": s.dtype.name,
        **{
            k: getattr(s, k)
            for k in ("group", "prompt_length", "new_tokens", "pool", "kb_rows", "batch")
        },
        "grid": list(s.grid),
        "lora_rank": s.lora.rank,
    }


def plan_setting(
    cfg: ml_collections.ConfigDict,
    chips: Sequence[str],
    *,
    depth: int | None = None,
    dtype: str | None = None,
    compile_programs: bool = True,
) -> dict[str, Any]:
    """The planner's answer for a Region-R1 MLLM config on this process's devices (the mesh
    its ``mesh`` block names), as a JSON-ready dict (bytes; GiB where the key says so).
    ``compile_programs=False`` answers from the analytic model alone (no XLA figures), for
    settings too deep to compile here."""
    mesh = parallel.mesh_from_config(cfg.mesh)
    setting = read_setting(cfg, depth, dtype)
    data = mesh.shape[parallel.DATA]
    if setting.batch % data:
        raise ValueError(f"train.batch_size={setting.batch} must split over {data} data devices")
    b = setting.batch // data
    programs = Programs(cfg, setting, mesh)
    resident = programs.resident()
    at_config = compiled_step(programs, b) if compile_programs else None
    rows = {}
    for name in PROGRAMS:
        analytic = _analytic(programs, name, b)
        rows[name] = {"analytic": analytic.as_dict()}
        if at_config:
            figures = at_config["programs"][name]
            rows[name]["xla"] = figures.as_dict()
            rows[name]["analytic_over_xla"] = analytic.peak / figures.peak
    step_analytic = analytic_step_peak(programs, b, resident)
    verdicts, confirmed = {}, {}
    for chip in chips:
        capacity = plan.chip_memory(chip)
        largest = plan.largest_batch(lambda n: analytic_step_peak(programs, n, resident), capacity)
        verdicts[chip] = {
            **plan.verdict(step_analytic, chip),
            "largest_batch": largest,
            "mesh": recommend_mesh(programs, len(mesh.devices.flat), capacity),
        }
        if at_config:
            if largest and largest not in confirmed:
                confirmed[largest] = compiled_step(programs, largest)["peak"]
            verdicts[chip]["xla_fits"] = at_config["peak"] <= capacity
            verdicts[chip]["xla_peak_at_largest_gib"] = confirmed.get(largest, 0.0) / plan.GIB
    step = {"analytic_peak": step_analytic}
    if at_config:
        step["xla_peak"] = at_config["peak"]
    return {
        "setting": _setting_summary(setting),
        "devices": f"{len(mesh.devices.flat)} x {jax.devices()[0].device_kind}",
        "mesh": dict(mesh.shape),
        "per_device_batch": b,
        "depth": depth,
        "resident": resident,
        "programs": rows,
        "step": step,
        "chips": verdicts,
    }
