"""``jaxrank plan``: does a paper setting fit, on what chip, with what mesh and batch, answered
from XLA's own compiled programs (built from abstract parameters, nothing allocated) beside the
analytic memory model, before anyone rents a slice.

    jaxrank plan --config configs/region_r1/evqa.py --chip v5e --chips 8 --json plan.json
    jaxrank plan --config configs/region_r1/evqa.py --depth 2   # real widths, 2 layers: CI time
    jaxrank plan --config configs/region_r1/evqa.py --analytic  # real depth, nothing compiled

The programs compile for ``--chips`` virtual CPU devices. Their number is fixed when JAX starts,
so the command sets it before then (``jax_num_cpu_devices``); a process whose JAX already runs
(a test under tests/conftest.py) must have as many. XLA:CPU converts bfloat16 matmul operands
to float32, so a bfloat16 setting's XLA figures overstate a TPU's or GPU's: the verdicts use
the analytic model, which ``--dtype float32`` checks against XLA where no conversion happens
(docs/SCALING.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import jax

from jaxrank.cli.arguments import CONFIG_HELP, load_config
from jaxrank.configs import ConfigError
from jaxrank.perf.plan import CHIPS, GIB
from jaxrank.region_r1.plan import plan_setting
from jaxrank.train import report

PLANNED_RECIPES = ("region_r1_mllm",)


def _use_devices(chips: int) -> None:
    with contextlib.suppress(RuntimeError):  # JAX already started: it keeps its devices
        jax.config.update("jax_num_cpu_devices", chips)
    if jax.device_count() != chips:
        raise ConfigError(
            f"--chips {chips}, but JAX started with {jax.device_count()} devices; run in a "
            f"fresh process or with XLA_FLAGS=--xla_force_host_platform_device_count={chips}"
        )


def program_rows(result: dict) -> list[dict]:
    """One row per program: XLA's figures (when compiled) and the analytic peak, GiB per
    device."""
    rows = []
    for name, row in result["programs"].items():
        analytic = {"analytic peak": row["analytic"]["peak"] / GIB}
        xla = row.get("xla")
        if xla is None:
            rows.append({"program": name, **analytic})
            continue
        rows.append(
            {
                "program": name,
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
    step = result["step"]
    peaks = {"analytic peak": step["analytic_peak"] / GIB}
    if "xla_peak" in step:
        peaks = {"XLA peak": step["xla_peak"] / GIB, **peaks}
    return [*rows, {"program": "step", **peaks}]


def chip_rows(result: dict) -> list[dict]:
    """One row per chip: the step's verdict (analytic), XLA's when compiled, the largest
    per-chip batch and the recommended mesh."""
    rows = []
    for chip, v in result["chips"].items():
        mesh = v["mesh"]
        row = {
            "chip": chip,
            "GiB": v["memory_gib"],
            "fits": "yes" if v["fits"] else "no",
            "headroom GiB": v["headroom_gib"],
            "largest batch": v["largest_batch"],
            "mesh": f"{mesh['data']} x {mesh['model']}" if mesh else "none fits",
        }
        if "xla_fits" in v:
            row["XLA:CPU fits"] = "yes" if v["xla_fits"] else "no"
            row["XLA peak there GiB"] = v["xla_peak_at_largest_gib"]
        rows.append(row)
    return rows


def _run(args: argparse.Namespace, extra) -> None:
    _use_devices(args.chips)
    cfg = load_config(args, extra)
    if cfg.get("recipe") not in PLANNED_RECIPES:
        raise ConfigError(f"recipe {cfg.get('recipe')!r}: the planner knows {PLANNED_RECIPES}")
    chips = args.chip or list(CHIPS)
    result = plan_setting(
        cfg, chips, depth=args.depth, dtype=args.dtype, compile_programs=not args.analytic
    )
    result["command"] = {
        "config": args.config,
        "chips": args.chips,
        "depth": args.depth,
        "analytic": args.analytic,
    }
    s = result["setting"]
    print(f"{args.config}: {s['policy']}; scorer {s['scorer']}; {s['dtype']}")
    print(
        f"mesh {result['mesh']} on {result['devices']}, {result['per_device_batch']} queries "
        f"per device, G {s['group']}, prompt {s['prompt_length']} + {s['new_tokens']} tokens"
    )
    columns = list(program_rows(result)[0])
    print(report.table(program_rows(result), columns))
    print(report.table(chip_rows(result), list(chip_rows(result)[0])))
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
    command.add_argument("--json", default="", help="write the full result here")
    command.set_defaults(run=_run)
