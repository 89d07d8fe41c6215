"""``jaxrank plan``: does a paper setting fit, on what chip, with what mesh and batch, answered
from XLA's own compiled programs (built from abstract parameters, nothing allocated) beside the
analytic memory model, before anyone rents a slice.

    jaxrank plan --config configs/region_r1/evqa.py --chip v5e --chips 8 --json plan.json
    jaxrank plan --config configs/region_r1/evqa.py --depth 2   # real widths, 2 layers
    jaxrank plan --config configs/region_r1/evqa.py --analytic  # nothing compiled, seconds
    jaxrank plan --config configs/region_r1/evqa.py --compiler tpu --chip v5e   # XLA:TPU

``--compiler cpu`` (the default) compiles for ``--chips`` virtual CPU devices. Their number is
fixed when JAX starts, so the command sets it before then (``jax_num_cpu_devices``); a process
whose JAX already runs (a test under tests/conftest.py) must have as many. XLA:CPU converts
bfloat16 matmul operands to float32, so there the verdicts use the analytic model, which
``--dtype float32`` checks against XLA where no conversion happens. ``--compiler tpu`` compiles
for each TPU chip kind's own slice of ``--chips`` chips with XLA's TPU compiler (libtpu,
``perf.tpu_target``), and its figures decide (docs/SCALING.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from jaxrank import parallel
from jaxrank.cli.arguments import CONFIG_HELP, load_config
from jaxrank.configs import ConfigError
from jaxrank.elva.plan import planned_setting as elva_setting
from jaxrank.perf import tpu_target
from jaxrank.perf.plan import CHIPS, GIB
from jaxrank.perf.planner import PlannedSetting, plan_setting
from jaxrank.rar.plan import planned_setting as rar_setting
from jaxrank.region_r1.plan import planned_setting as region_r1_setting
from jaxrank.train import report

# recipe -> its planned setting: (cfg, mesh, depth, dtype) -> PlannedSetting
PLANNERS: dict[str, Callable[..., PlannedSetting]] = {
    "region_r1_mllm": region_r1_setting,
    "elva_generative": elva_setting,
    "rar": rar_setting,
}


def _use_devices(chips: int) -> None:
    with contextlib.suppress(RuntimeError):  # JAX already started: it keeps its devices
        jax.config.update("jax_num_cpu_devices", chips)
    if jax.device_count() != chips:
        raise ConfigError(
            f"--chips {chips}, but JAX started with {jax.device_count()} devices; run in a "
            f"fresh process or with XLA_FLAGS=--xla_force_host_platform_device_count={chips}"
        )


def _mesh_shape(cfg: ml_collections.ConfigDict, chips: int) -> tuple[int, int]:
    """The config's ``data`` x ``model`` on ``chips`` devices (``data = -1``: the rest)."""
    data, model = int(cfg.mesh.get("data", -1)), int(cfg.mesh.get("model", 1))
    data = chips // model if data == -1 else data
    if data * model != chips:
        raise ConfigError(f"mesh {data} x {model} (config's mesh block) on --chips {chips}")
    return data, model


def program_rows(result: dict) -> list[dict]:
    """One row per program: XLA's figures (when compiled) and the analytic peak, GiB per
    device; then one row per stage."""
    rows = []
    for name, row in result["programs"].items():
        analytic = {"analytic peak": row["analytic"]["peak"] / GIB}
        head = {"program": name, "stage": row["stage"]}
        xla = row.get("xla")
        if xla is None:
            rows.append({**head, **analytic})
            continue
        rows.append(
            {
                **head,
                "arguments": xla["arguments"] / GIB,
                "outputs": xla["outputs"] / GIB,
                "aliased": xla["aliased"] / GIB,
                "temporaries": xla["temporaries"] / GIB,
                "XLA peak": xla["peak"] / GIB,
                **analytic,
                "analytic / XLA": row["analytic_over_xla"],
                "TFLOP": xla["flops"] / 1e12,
                "compile s": xla["compile_s"],
            }
        )
    for name, stage in result["stages"].items():
        peaks = {"analytic peak": stage["analytic_peak"] / GIB}
        if "xla_peak" in stage:
            peaks = {"XLA peak": stage["xla_peak"] / GIB, **peaks}
        rows.append({"program": f"{name} (stage)", "stage": name, **peaks})
    return rows


def chip_rows(result: dict) -> list[dict]:
    """One row per chip and stage: the verdict, the largest per-chip batch, the mesh
    recommended for the whole setting, the seconds a step should take (``perf.step_time``)."""
    rows = []
    for chip, v in result["chips"].items():
        mesh = v["mesh"]
        for stage, s in v["stages"].items():
            row = {
                "chip": chip,
                "GiB": v["memory_gib"],
                "stage": stage,
                "fits": "yes" if s["fits"] else "no",
                "headroom GiB": s["headroom_gib"],
                "largest batch": s["largest_batch"],
                "mesh": f"{mesh['data']} x {mesh['model']}" if mesh else "none fits",
                "projected step s": s["projected_step_s"],
            }
            if "xla_fits" in s:
                row["XLA fits"] = "yes" if s["xla_fits"] else "no"
                row["XLA peak at largest GiB"] = s["xla_peak_at_largest_gib"]
            rows.append(row)
    return rows


def _print(result: dict, config: str) -> None:
    print(f"{config} on {result['devices']}, mesh {result['mesh']}")
    print("  " + "; ".join(f"{k} {v}" for k, v in result["setting"].items()))
    print(report.table(program_rows(result), list(program_rows(result)[0])))
    for name, row in result["programs"].items():
        if row.get("xla", {}).get("refusal"):
            print(
                f"{name}: the compiler refused it (its XLA peak is a lower bound): "
                f"{row['xla']['refusal']}"
            )
    if result["chips"]:
        print(report.table(chip_rows(result), list(chip_rows(result)[0])))


def _plan_on(
    args: argparse.Namespace, cfg: ml_collections.ConfigDict, mesh: Mesh, chips: list[str]
) -> dict[str, Any]:
    setting = PLANNERS[cfg.recipe](cfg, mesh, args.depth, args.dtype)
    tpu = args.compiler == "tpu"
    result = plan_setting(setting, chips, compile_programs=not args.analytic, judge_by_xla=tpu)
    result["devices"] = f"{mesh.devices.size} x {mesh.devices.flat[0].device_kind}"
    _print(result, args.config)
    return result


def _run(args: argparse.Namespace, extra) -> None:
    if args.compiler == "tpu" and args.analytic:
        raise ConfigError("--analytic compiles nothing; --compiler tpu needs compiling")
    if args.compiler == "cpu":
        _use_devices(args.chips)
    cfg = load_config(args, extra)
    if cfg.get("recipe") not in PLANNERS:
        raise ConfigError(f"recipe {cfg.get('recipe')!r}: the planner knows {sorted(PLANNERS)}")
    data, model = _mesh_shape(cfg, args.chips)
    command = {k: getattr(args, k) for k in ("config", "chips", "depth", "analytic", "compiler")}
    if args.compiler == "cpu":
        mesh = parallel.mesh_from_config(cfg.mesh)
        result = {**_plan_on(args, cfg, mesh, args.chip or list(CHIPS)), "command": command}
    else:
        try:
            meshes = {
                chip: tpu_target.tpu_mesh(chip, data, model)
                for chip in args.chip or list(tpu_target.TPU_CHIPS)
            }
        except (tpu_target.TPUCompilerMissing, ValueError) as error:
            raise ConfigError(str(error)) from None  # the message says it all
        per_chip = {chip: _plan_on(args, cfg, mesh, [chip]) for chip, mesh in meshes.items()}
        result = {"compiler": "tpu", "per_chip": per_chip, "command": command}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}")


def add_command(sub) -> None:
    """``jaxrank plan``."""
    command = sub.add_parser("plan", help="compile a setting's programs; fits on which chips")
    command.add_argument("--config", required=True, help=CONFIG_HELP)
    command.add_argument(
        "--chip", action="append", choices=sorted(CHIPS), help="chip kinds (default: all)"
    )
    command.add_argument("--chips", type=int, default=8, help="devices of the mesh (default 8)")
    command.add_argument("--depth", type=int, default=None, help="layers per tower (real widths)")
    command.add_argument("--dtype", default=None, help="override the compute dtype (float32)")
    command.add_argument(
        "--analytic",
        action="store_true",
        help="the analytic memory model only, nothing compiled (any depth in seconds)",
    )
    command.add_argument(
        "--compiler",
        choices=("cpu", "tpu"),
        default="cpu",
        help="cpu: virtual CPU devices, verdicts from the analytic model; tpu: each TPU chip's "
        "own slice compiled by XLA's TPU compiler (needs libtpu), its figures decide",
    )
    command.add_argument("--json", default="", help="write the full result here")
    command.set_defaults(run=_run)
