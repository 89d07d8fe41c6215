"""RAR on the digits over several seeds: kNN against retrieve-and-rank at each shot count.

    .venv/bin/python scripts/rar_sweep.py --out docs/bench/rar_digits.json

Each seed is an ordinary run folder under --root (resumed if it exists, read back if it holds
its report); seeds change the ranker's initialisation and fine-tuning data and the shots
drawn, on the same test queries. Prints a table (mean ± std over seeds), writes JSON and a plot
beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from bench_machine import write_sweep
from matplotlib.figure import Figure

from jaxrank.cli import main as cli
from jaxrank.configs import apply_overrides, load_config_file
from jaxrank.rar.recipe import STRATEGIES
from jaxrank.train import report
from jaxrank.train.workdir import prepare_workdir


def run_one(args, seed: int) -> dict:
    cfg = apply_overrides(load_config_file(args.config), [f"seed={seed}", *args.override])
    workdir = Path(args.root) / f"seed{seed}"
    if (workdir / "report.json").exists():  # written last: the run finished; read it back
        prepare_workdir(workdir, cfg)  # with this very config
    else:
        cli.recipe_module(cfg).train_and_evaluate(cfg, workdir)
    return {
        "seed": seed,
        "workdir": str(workdir),
        **json.loads((workdir / "report.json").read_text()),
    }


def summary_rows(runs: list[dict]) -> list[dict]:
    """Per shot count, each strategy's accuracy as mean ± std over seeds."""
    rows = []
    for i, first in enumerate(runs[0]["rows"]):
        row = {"shots": first["shots"], "k": first["k"]}
        for strategy in STRATEGIES:
            values = [r["rows"][i][strategy] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            row[strategy] = f"{statistics.mean(values):.3f} ± {spread:.3f}"
        rows.append(row)
    return rows


def plot(runs: list[dict], out: Path) -> None:
    shots = [r["shots"] for r in runs[0]["rows"]]
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    for strategy in STRATEGIES:
        values = np.array([[row[strategy] for row in r["rows"]] for r in runs])
        ax.errorbar(shots, values.mean(0), values.std(0), marker="o", capsize=3, label=strategy)
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(f"RAR on scikit-learn digits ({len(runs)} seeds)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/rar/digits.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/rar_sweep", help="parent of the run folders")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--override", nargs="*", default=[], help="extra a.b=v overrides")
    args = parser.parse_args()
    Path(args.root).mkdir(parents=True, exist_ok=True)
    runs = [run_one(args, seed) for seed in args.seeds]
    rows = summary_rows(runs)
    print(f"\ntop-1 accuracy over seeds {args.seeds} (mean ± std)")
    print(report.table(rows, ["shots", "k", *STRATEGIES], fmt="simple"))
    write_sweep(args.out, "rar_sweep.py", args, rows, runs)
    plot(runs, Path(args.out).with_suffix(".png"))


if __name__ == "__main__":
    main()
