"""Region-R1 over several seeds, with decision-balanced group sampling on and off.

    .venv/bin/python scripts/region_r1_sweep.py --scorer runs/default/scorer \
        --out docs/bench/region_r1_seeds.json

    .venv/bin/python scripts/region_r1_sweep.py --config configs/region_r1/mllm_synthetic.py \
        --scorer runs/default/scorer --balanced true --root runs/mllm_sweep \
        --override warm_start_workdir=runs/mllm_warm --out docs/bench/region_r1_mllm_seeds.json

Every run shares one finished scorer (the main job's), so runs differ only in the policy's
seed (initialisation, grounding batches, sampling) and in balancing; the vision-language
recipe's runs also share one warm start (``warm_start_workdir``, trained by the first run if
it is not finished). Each run is an ordinary run folder under --root, resumed if it exists and
read back if it holds its report. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench_machine import write_sweep

from jaxrank.cli import main as cli
from jaxrank.configs import apply_overrides, load_config_file
from jaxrank.train import report
from jaxrank.train.workdir import prepare_workdir

STRATEGIES = (
    "full",
    "centre_crop",
    "random_crop",
    "oracle_crop",
    "grounded_policy",
    "warm_start_policy",
    "policy",
)


def run_one(args, seed: int, balanced: bool) -> dict:
    overrides = [
        f"seed={seed}",
        f"rl.balanced={balanced}",
        f"scorer_workdir={args.scorer}",
        *args.override,
    ]
    cfg = apply_overrides(load_config_file(args.config), overrides)
    workdir = Path(args.root) / f"seed{seed}_{'balanced' if balanced else 'unbalanced'}"
    started = time.perf_counter()
    if (workdir / "report.json").exists():  # written last: the run finished; read it back
        prepare_workdir(workdir, cfg)  # with this very config
        results = {
            preset: {"metrics": metrics}
            for preset, metrics in json.loads((workdir / "report.json").read_text())[
                "evaluation"
            ].items()
        }
    else:
        results = cli.recipe_module(cfg).train_and_evaluate(cfg, workdir)
    train = json.loads((workdir / "report.json").read_text())["train"]
    return {
        "seed": seed,
        "balanced": balanced,
        "workdir": str(workdir),
        "seconds": time.perf_counter() - started,
        "train_seconds": train.get("train_seconds"),
        "metrics": {
            preset: {name: r["metrics"][name] for name in STRATEGIES if name in r["metrics"]}
            for preset, r in results.items()
        },
    }


def pooled(metrics: dict[str, dict], name: str, key: str, weight: str) -> float:
    """``key`` of strategy ``name`` over the union of the presets' queries (each preset's
    value weighted by its ``weight`` count)."""
    total = sum(m[name][weight] for m in metrics.values())
    return sum(m[name][key] * m[name][weight] for m in metrics.values()) / total


def with_all_presets(run: dict) -> dict:
    """The run's metrics plus ``all``: CondR@1 and crop rate over every held-out query."""
    metrics = run["metrics"]
    union = {
        name: {
            "cond_recall@1": pooled(metrics, name, "cond_recall@1", "num_with_positive"),
            "crop_rate": pooled(metrics, name, "crop_rate", "num_queries"),
        }
        for name in next(iter(metrics.values()))
    }
    return dict(run, metrics={**metrics, "all": union})


def summary_rows(runs: list[dict], preset: str) -> list[dict]:
    rows = []
    for balanced in sorted({r["balanced"] for r in runs}, reverse=True):
        chosen = [r for r in runs if r["balanced"] == balanced]
        for name in (s for s in STRATEGIES if s in chosen[0]["metrics"][preset]):
            values = [r["metrics"][preset][name]["cond_recall@1"] for r in chosen]
            crops = [r["metrics"][preset][name]["crop_rate"] for r in chosen]
            rows.append(
                {
                    "balanced": balanced,
                    "strategy": name,
                    "CondR@1 mean": statistics.mean(values),
                    "CondR@1 std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "per seed": " ".join(f"{v:.3f}" for v in values),
                    "crop rate": statistics.mean(crops),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/region_r1/synthetic.py")
    parser.add_argument("--scorer", required=True, help="a finished contrastive scorer run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/sweep", help="parent of the run folders")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--override", nargs="*", default=[], help="extra a.b=v overrides")
    parser.add_argument(
        "--balanced", nargs="+", default=["true", "false"], choices=["true", "false"]
    )
    args = parser.parse_args()
    Path(args.root).mkdir(parents=True, exist_ok=True)

    modes = [value == "true" for value in args.balanced]
    runs = [run_one(args, seed, balanced) for balanced in modes for seed in args.seeds]
    runs = [with_all_presets(run) for run in runs]
    presets = list(runs[0]["metrics"])
    columns = ["balanced", "strategy", "CondR@1 mean", "CondR@1 std", "per seed", "crop rate"]
    for preset in presets:
        print(f"\n{preset}: CondR@1 over seeds {args.seeds}")
        print(report.table(summary_rows(runs, preset), columns, fmt="simple"))
    write_sweep(
        args.out,
        "region_r1_sweep.py",
        args,
        {preset: summary_rows(runs, preset) for preset in presets},
        runs,
    )


if __name__ == "__main__":
    main()
