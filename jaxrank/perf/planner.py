"""The planner's driver, one for every paper: a setting's programs compiled from abstract
arguments at the config's batches, XLA's figures beside the analytic model's, and per chip
whether each stage fits, the largest per-chip batch and the smallest ``model`` axis that fits.

A paper supplies a ``PlannedSetting`` (``region_r1/plan.py``, ``elva/plan.py``,
``rar/plan.py``). Its programs run in ``Stage``s: programs that follow one another at one batch
(a training step, an evaluation pass). A stage's peak on a device is what stays resident
through it plus its largest program's transient part (the program's peak less the resident
arguments it reads); the setting fits a chip when every stage does. Per chip each stage also
gets the seconds a step should take (``step_time``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from jax.sharding import AbstractMesh, Mesh

from jaxrank import parallel
from jaxrank.perf import plan, step_time
from jaxrank.perf.memory import Estimate, tree_bytes

Program = tuple[Callable, tuple[Any, ...]]  # a jitted function and its abstract arguments
MODEL_AXES = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Stage:
    """Programs run one after another at one batch: ``batch`` rows per step over all data
    shards (the config's)."""

    name: str
    programs: tuple[str, ...]
    batch: int


class PlannedSetting(Protocol):
    """A paper's setting at its real size on ``mesh``, as the planner needs it."""

    mesh: Mesh
    stages: tuple[Stage, ...]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the architectures, dtype and shapes."""

    def program(self, name: str, b: int) -> Program:
        """Program ``name`` at ``b`` rows per data shard."""

    def resident(self, stage: str) -> dict[str, Any]:
        """Named abstract trees that stay on a device through ``stage``."""

    def resident_trees(self, name: str) -> list[Any]:
        """The resident trees among program ``name``'s arguments (the rest is its batch)."""

    def estimate(self, name: str, b: int, model: int) -> Estimate:
        """The analytic model of ``name`` at ``b`` rows per data shard, weights split over
        ``model`` devices; its ``arguments`` are the resident trees it reads and ``batch``."""


def bytes_on(tree: Any, mesh: Mesh | AbstractMesh) -> int:
    """Bytes per device of ``tree``'s leaves laid out with the same specs on ``mesh``."""
    return tree_bytes(plan.abstract(tree, mesh))


def resident_bytes(
    setting: PlannedSetting, stage: str, mesh: Mesh | AbstractMesh | None = None
) -> dict[str, int]:
    """``resident(stage)``'s bytes per device on ``mesh`` (default: the setting's)."""
    mesh = setting.mesh if mesh is None else mesh
    return {name: bytes_on(tree, mesh) for name, tree in setting.resident(stage).items()}


def batch_arguments(setting: PlannedSetting, name: str, b: int) -> int:
    """Bytes per device of ``name``'s arguments that are not resident."""
    _, args = setting.program(name, b)
    return tree_bytes(args) - tree_bytes(setting.resident_trees(name))


def _transient(setting: PlannedSetting, name: str, b: int, model: int) -> float:
    e = setting.estimate(name, b, model)
    return e.peak - sum(v for k, v in e.arguments.items() if k != "batch")


def analytic_stage_peak(
    setting: PlannedSetting, stage: Stage, b: int, resident: dict[str, int], model: int
) -> float:
    """Resident bytes plus the stage's largest transient part, analytic."""
    return sum(resident.values()) + max(_transient(setting, n, b, model) for n in stage.programs)


def compiled_stage(setting: PlannedSetting, stage: Stage, b: int) -> dict[str, Any]:
    """Each of ``stage``'s programs compiled at ``b``, and the stage's peak from them."""
    figures = {
        name: plan.compile_program(*setting.program(name, b), setting.mesh)
        for name in stage.programs
    }
    transient = {
        name: f.peak - f.arguments + batch_arguments(setting, name, b)
        for name, f in figures.items()
    }
    peak = sum(resident_bytes(setting, stage.name).values()) + max(transient.values())
    return {"programs": figures, "peak": peak}


def per_device(stage: Stage, data: int) -> int:
    if stage.batch % data:
        raise ValueError(f"stage {stage.name}: batch {stage.batch} must split over {data} data")
    return stage.batch // data


def recommend_mesh(setting: PlannedSetting, chips: int, capacity: float) -> dict[str, int] | None:
    """The smallest ``model`` axis (``data`` = chips / model) at which every stage's analytic
    peak at the config's batch fits ``capacity``; None when none does."""
    for model in MODEL_AXES:
        data = chips // model
        if chips % model or any(stage.batch % data for stage in setting.stages):
            continue
        mesh = AbstractMesh((data, model), (parallel.DATA, parallel.MODEL))
        if all(
            analytic_stage_peak(
                setting, s, s.batch // data, resident_bytes(setting, s.name, mesh), model
            )
            <= capacity
            for s in setting.stages
        ):
            return {"data": data, "model": model}
    return None


def _largest_compiled(
    setting: PlannedSetting, stage: Stage, known: dict[int, float], guess: int, capacity: float
) -> tuple[int, float]:
    """The largest batch whose compiled stage fits ``capacity``, and its compiled peak, with
    few compiles (a TPU's take minutes): ``guess`` (the analytic largest) is compiled; when
    it does not fit, a stage's peak being affine in the batch, the line through it and the
    config's batch (``known``: batch -> compiled peak) names the next to try, one below each
    time that still does not fit (at most three more)."""
    peaks = dict(known)

    def peak_of(b: int) -> float:
        if b not in peaks:
            peaks[b] = compiled_stage(setting, stage, b)["peak"]
        return peaks[b]

    if peak_of(guess) <= capacity:
        return guess, peaks[guess]
    [(b0, p0)] = known.items()
    # through the origin when the config's batch is the guess: steeper, so a smaller try
    slope = (peaks[guess] - p0) / (guess - b0) if guess != b0 else p0 / b0
    b = min(guess - 1, int(b0 + (capacity - p0) // slope)) if slope > 0 else guess - 1
    for _ in range(3):
        if b < 1:
            return 0, 0.0
        if peak_of(b) <= capacity:
            return b, peaks[b]
        b -= 1
    return 0, 0.0


def _stage_verdict(
    setting: PlannedSetting,
    stage: Stage,
    chip: str,
    analytic_peak: float,
    compiled_peak: float | None,
    judge_by_xla: bool,
    confirmed: dict[tuple[str, int], float],
) -> dict[str, Any]:
    """``stage``'s verdict on ``chip``: from the analytic model, or from the compiled peak
    when ``judge_by_xla`` (then the largest batch is the compiled programs' too).
    ``confirmed`` keeps the stage's compiled peak by batch across chips that share one."""
    capacity = plan.chip_memory(chip)
    model = setting.mesh.shape[parallel.MODEL]
    resident = resident_bytes(setting, stage.name)
    largest = plan.largest_batch(
        lambda n: analytic_stage_peak(setting, stage, n, resident, model), capacity
    )
    row: dict[str, Any] = {**plan.verdict(analytic_peak, chip), "largest_batch": largest}
    if compiled_peak is None:
        return row
    row["xla_fits"] = compiled_peak <= capacity
    if judge_by_xla:  # XLA's own figures for this chip: they decide
        row.update(plan.verdict(compiled_peak, chip), analytic_largest_batch=largest)
        b = per_device(stage, setting.mesh.shape[parallel.DATA])
        row["largest_batch"], at = _largest_compiled(
            setting, stage, {b: compiled_peak}, max(largest, 1), capacity
        )
    else:
        key = (stage.name, largest)
        if largest and key not in confirmed:
            confirmed[key] = compiled_stage(setting, stage, largest)["peak"]
        at = confirmed.get(key, 0.0)
    row["xla_peak_at_largest_gib"] = at / plan.GIB
    return row


def plan_setting(
    setting: PlannedSetting,
    chips: Sequence[str],
    *,
    compile_programs: bool = True,
    judge_by_xla: bool = False,
) -> dict[str, Any]:
    """The planner's answer for ``setting`` as a JSON-ready dict (bytes; GiB where the key
    says so). ``compile_programs=False`` answers from the analytic model alone;
    ``judge_by_xla`` takes each chip's verdict and largest batch from the compiled programs
    (their compiler is the chip's own) rather than the analytic model."""
    data = setting.mesh.shape[parallel.DATA]
    model = setting.mesh.shape[parallel.MODEL]
    programs, stages = {}, {}
    for stage in setting.stages:
        b = per_device(stage, data)
        resident = resident_bytes(setting, stage.name)
        compiled = compiled_stage(setting, stage, b) if compile_programs else None
        for name in stage.programs:
            analytic = setting.estimate(name, b, model)
            programs[name] = {
                "stage": stage.name,
                "analytic": analytic.as_dict(),
                "matmul_flops_per_device": step_time.program_flops(setting, name, b),
            }
            if compiled:
                figures = compiled["programs"][name]
                programs[name]["xla"] = figures.as_dict()
                programs[name]["analytic_over_xla"] = analytic.peak / figures.peak
        stages[stage.name] = {
            "programs": list(stage.programs),
            "batch": stage.batch,
            "per_device_batch": b,
            "resident": resident,
            "analytic_peak": analytic_stage_peak(setting, stage, b, resident, model),
        }
        if compiled:
            stages[stage.name]["xla_peak"] = compiled["peak"]
    verdicts, confirmed = {}, {}
    for chip in chips:
        per_stage = {
            s.name: _stage_verdict(
                setting,
                s,
                chip,
                stages[s.name]["analytic_peak"],
                stages[s.name].get("xla_peak"),
                judge_by_xla,
                confirmed,
            )
            for s in setting.stages
        }
        for s in setting.stages:
            b = per_device(s, data)
            seconds = {
                name: step_time.program_seconds(
                    setting, name, b, programs[name]["matmul_flops_per_device"], chip
                )
                for name in s.programs
            }
            per_stage[s.name]["programs_s"] = seconds
            per_stage[s.name]["projected_step_s"] = sum(v["seconds"] for v in seconds.values())
        verdicts[chip] = {
            "memory_gib": plan.chip_memory(chip) / plan.GIB,
            "fits": all(v["fits"] for v in per_stage.values()),
            "headroom_gib": min(v["headroom_gib"] for v in per_stage.values()),
            "stages": per_stage,
            "mesh": recommend_mesh(setting, data * model, plan.chip_memory(chip)),
        }
    return {
        "setting": setting.summary(),
        "mesh": dict(setting.mesh.shape),
        "programs": programs,
        "stages": stages,
        "chips": verdicts,
    }
