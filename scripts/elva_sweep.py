"""ELVA over several seeds: the full RL stage and the paper's ablations, side by side.

    .venv/bin/python scripts/elva_sweep.py --out docs/bench/elva_seeds.json

Per seed, one contrastive stage (``<root>/seed<S>_contrastive``) is shared by every variant's
RL stage, so variants differ only in the RL stage: ``full``; ``no_ranking`` (eps 0);
``no_margin`` (alpha 0); ``no_random_negatives`` (hard negatives only); ``control``, the
compute-matched control: no RL stage, the seed's contrastive stage continued (a copy of its
folder, resumed) for as many steps as the RL stage takes (``train.steps``; its schedule
stretched to the new length). Run ``full`` first: it trains the shared stage. Each run is an
ordinary run folder under --root, resumed if it exists and read back if it holds its report.
Works for both ELVA recipes (``configs/elva/synthetic.py``, ``generative_synthetic.py``).
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
    "control": [],  # see continue_contrastive
}
HEADLINE = (
    "standard/avg/recall@5",
    "multigrain/avg/recall@5",
    "standard/avg/recall@1",
    "multigrain/avg/recall@1",
    "gap/nearest",
)
GAPS = ("gap/shape", "gap/colour", "gap/pattern", "gap/pattern_colour", "gap/nearest")


def continue_contrastive(cfg, shared: Path, workdir: Path):
    """The control's config and folder: a copy of the seed's contrastive stage (``shared``) in
    ``<workdir>/contrastive``, trained on for ``train.steps`` more steps, and no RL stage."""
    if not (shared / "checkpoints").is_dir():
        raise SystemExit(f"{shared} holds no contrastive stage: run the full variant first")
    own = workdir / "contrastive"
    if not own.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(shared, own)
        (own / "config.json").unlink(missing_ok=True)  # its step count changes
    cfg.contrastive.steps += cfg.train.steps
    cfg.train.steps = 0
    cfg.contrastive_workdir = ""
    return cfg


def run_one(args, seed: int, variant: str) -> dict:
    root = Path(args.root)
    shared = root / f"seed{seed}_contrastive"
    shared.mkdir(exist_ok=True)  # a config's *_workdir must name a folder
    overrides = [f"seed={seed}", f"contrastive_workdir={shared}"]
    cfg = apply_overrides(
        load_config_file(args.config), [*overrides, *VARIANTS[variant], *args.override]
    )
    workdir = root / f"seed{seed}_{variant}"
    if variant == "control":
        cfg = continue_contrastive(cfg, shared, workdir)
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
            **{k: _mean_std([r["contrastive"][k] for r in full]) for k in (*HEADLINE, *GAPS)},
        }
    ]
    for variant in VARIANTS:
        chosen = [r for r in runs if r["variant"] == variant]
        if not chosen:
            continue
        if variant == "control":  # its step-0 evaluation is the continued contrastive model
            chosen = [{**r, "rl": r["contrastive"], "contrastive": _base(runs, r)} for r in chosen]
        key = "multigrain/avg/recall@5"
        relative = [_relative(r["rl"][key], r["contrastive"][key]) for r in chosen]
        standard = "standard/avg/recall@5"
        points = [100 * (r["rl"][standard] - r["contrastive"][standard]) for r in chosen]
        rows.append(
            {
                "model": "control" if variant == "control" else f"+ RL ({variant})",
                **{k: _mean_std([r["rl"][k] for r in chosen]) for k in (*HEADLINE, *GAPS)},
                "multigrain rel. %": " ".join(relative),
                "standard pts": " ".join(f"{v:+.1f}" for v in points),
            }
        )
    return rows


def _relative(after: float, before: float) -> str:
    return f"{100 * (after / before - 1):+.1f}" if before else "n/a"


def _base(runs: list[dict], control: dict) -> dict:
    """The contrastive model the control continued: its seed's full run's step 0."""
    return next(
        r["contrastive"] for r in runs if r["variant"] == "full" and r["seed"] == control["seed"]
    )


def print_tables(rows: list[dict], seeds: list[int]) -> None:
    print(f"\nover seeds {seeds} (mean ± std; per-seed changes against each seed's contrastive)")
    print(report.table(rows, ["model", *HEADLINE, "multigrain rel. %", "standard pts"], "simple"))
    print(
        "\ngrain sensitivity on the multi-grain set: s(positive) - s(nearest one-off), mean ± std"
    )
    print(report.table(rows, ["model", *GAPS], fmt="simple"))


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
    print_tables(rows, args.seeds)
    write_sweep(args.out, "elva_sweep.py", args, rows, runs)


if __name__ == "__main__":
    main()
