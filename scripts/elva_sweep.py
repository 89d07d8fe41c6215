"""ELVA over several seeds: the full RL stage and the paper's ablations, side by side.

    .venv/bin/python scripts/elva_sweep.py --out docs/bench/elva_seeds.json

Per seed, one contrastive stage (``<root>/seed<S>_contrastive``) is shared by every variant's
RL stage, so variants differ only in the RL stage: ``full``; ``no_ranking`` (eps 0);
``no_margin`` (alpha 0); ``no_random_negatives`` (hard negatives only). Each run is an ordinary
run folder under --root, resumed if it exists and read back if it holds its report. Prints a
table and writes JSON.
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

VARIANTS = {
    "full": [],
    "no_ranking": ["reward.eps=0.0"],
    "no_margin": ["reward.alpha=0.0"],
    "no_random_negatives": ["mining.n_random=0"],
}
HEADLINE = (
    "standard/avg/recall@5",
    "multigrain/avg/recall@5",
    "standard/avg/recall@1",
    "multigrain/avg/recall@1",
    "gap/nearest",
)


def run_one(args, seed: int, variant: str) -> dict:
    root = Path(args.root)
    overrides = [f"seed={seed}", f"contrastive_workdir={root / f'seed{seed}_contrastive'}"]
    cfg = apply_overrides(
        load_config_file(args.config), [*overrides, *VARIANTS[variant], *args.override]
    )
    workdir = root / f"seed{seed}_{variant}"
    started = time.perf_counter()
    if (workdir / "report.json").exists():  # written last: the run finished; read it back
        prepare_workdir(workdir, cfg)  # with this very config
    else:
        cli.recipe_module(cfg).train_and_evaluate(cfg, workdir)
    results = json.loads((workdir / "report.json").read_text())
    return {
        "seed": seed,
        "variant": variant,
        "workdir": str(workdir),
        "seconds": time.perf_counter() - started,
        "train": results["train"],
        "contrastive": results["contrastive"],
        "rl": results["rl"],
    }


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def summary_rows(runs: list[dict]) -> list[dict]:
    """Contrastive (from the full variant's runs), then each variant's RL stage: mean ± std
    over seeds of the headline metrics, and the relative multi-grain change per seed."""
    full = [r for r in runs if r["variant"] == "full"]
    rows = [
        {
            "model": "contrastive",
            **{k: _mean_std([r["contrastive"][k] for r in full]) for k in HEADLINE},
        }
    ]
    for variant in VARIANTS:
        chosen = [r for r in runs if r["variant"] == variant]
        if not chosen:
            continue
        key = "multigrain/avg/recall@5"
        relative = [100 * (r["rl"][key] / r["contrastive"][key] - 1) for r in chosen]
        standard = "standard/avg/recall@5"
        points = [100 * (r["rl"][standard] - r["contrastive"][standard]) for r in chosen]
        rows.append(
            {
                "model": f"+ RL ({variant})",
                **{k: _mean_std([r["rl"][k] for r in chosen]) for k in HEADLINE},
                "multigrain rel. %": " ".join(f"{v:+.1f}" for v in relative),
                "standard pts": " ".join(f"{v:+.1f}" for v in points),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/elva/synthetic.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--root", default="runs/elva_sweep", help="parent of the run folders")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--override", nargs="*", default=[], help="extra a.b=v overrides")
    args = parser.parse_args()
    Path(args.root).mkdir(parents=True, exist_ok=True)

    runs = [run_one(args, seed, variant) for variant in args.variants for seed in args.seeds]
    rows = summary_rows(runs)
    columns = ["model", *HEADLINE, "multigrain rel. %", "standard pts"]
    print(
        f"\nover seeds {args.seeds} (mean ± std; per-seed changes against each seed's contrastive)"
    )
    print(report.table(rows, columns, fmt="simple"))
    write_sweep(args.out, "elva_sweep.py", args, rows, runs)


if __name__ == "__main__":
    main()
