"""``jaxrank reproduce NAME``: check that a paper setting's data and weights are present
(listing what is missing and where to get it, exit status 1 when anything is), run it, and
print the paper's numbers next to the achieved ones. docs/REPRODUCE.md lists the targets.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxrank.cli.arguments import split_overrides
from jaxrank.cli.data_check import check_data, print_missing
from jaxrank.cli.recipes import recipe_module
from jaxrank.cli.run_folder import held_run
from jaxrank.configs import ConfigError, apply_overrides, load_config_file
from jaxrank.train import report

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _region_r1(name: str) -> Callable[[dict], dict[str, float]]:
    def achieved(results: dict) -> dict[str, float]:
        policy = results["evaluation"][name]["policy"]
        return {
            "MRR": policy["mrr"],
            "R@1": 100 * policy["recall@1"],
            "CondR@1": policy["cond_recall@1"],
        }

    return achieved


def _rar(results: dict) -> dict[str, float]:
    rows = {row["shots"]: row for row in results["rows"]}
    return {
        f"{s}-shot {m}": 100 * rows[s][key]
        for s in (4, 8)
        if s in rows
        for m, key in (("kNN", "knn"), ("RAR", "rar_generate"))
    }


def _elva_mbeir(results: dict) -> dict[str, float]:
    return {"M-BEIR avg": 100 * results["rl"]["mbeir/avg/recall@headline"]}


@dataclasses.dataclass(frozen=True)
class Target:
    config: str  # under configs/
    paper: dict[str, float]
    source: str  # where the paper's numbers come from
    achieved: Callable[[dict], dict[str, float]] | None  # None: the recipe cannot run it yet
    note: str = ""


TARGETS = {
    "region_r1_evqa": Target(
        "region_r1/evqa.py",
        {"MRR": 0.473, "R@1": 44.7, "CondR@1": 0.90},
        "Region-R1, main results table (PAPERS.md §1), E-VQA single-hop test",
        _region_r1("evqa"),
        "scorer: CLIP ViT-L/14-336 (the paper's EVA-CLIP-8B is not loadable yet)",
    ),
    "region_r1_infoseek": Target(
        "region_r1/infoseek.py",
        {"MRR": 0.706, "R@1": 66.5, "CondR@1": 0.81},
        "Region-R1, main results table (PAPERS.md §1), InfoSeek validation",
        _region_r1("infoseek"),
        "InfoSeek as EchoSight converted it (E-VQA-format CSVs, the 100K KB); scorer as E-VQA's",
    ),
    "elva_mbeir": Target(
        "elva/mbeir.py",
        {"M-BEIR avg": 58.7},
        "ELVA, main table (PAPERS.md §2), ELVA-7B, M-BEIR local pools",
        _elva_mbeir,
        "MRBench (the paper's 43.2) is not released, so only M-BEIR is reproduced",
    ),
    "rar_fewshot": Target(
        "rar/fewshot.py",
        {"4-shot kNN": 57.0, "4-shot RAR": 63.2, "8-shot kNN": 63.0, "8-shot RAR": 69.8},
        "RAR, few-shot table (PAPERS.md §3), averages over 11 datasets; one dataset per run",
        _rar,
        "one dataset per run (--config.data.name); the paper averages 11",
    ),
    "rar_fewshot_coop": Target(
        "rar/fewshot_coop.py",
        {"4-shot kNN": 57.0, "4-shot RAR": 63.2, "8-shot kNN": 63.0, "8-shot RAR": 69.8},
        "RAR, few-shot table (PAPERS.md §3), averages over 11 datasets; one dataset per run",
        _rar,
        "CoOp's splits and pickled shots (--config.data.coop_root, --config.data.name); "
        "one dataset and seed per run, the paper averages 11 datasets",
    ),
}


def reproduce(name: str, workdir: str | Path, overrides: list[str]) -> dict[str, Any] | None:
    """Check, run, compare; None (after printing what is missing) when data or weights are
    absent."""
    if name not in TARGETS:
        raise ConfigError(f"unknown target {name!r}; expected one of {sorted(TARGETS)}")
    target = TARGETS[name]
    cfg = apply_overrides(load_config_file(CONFIGS / target.config), overrides)
    print(f"{name}: configs/{target.config}; paper: {target.source}")
    if target.note:
        print(f"note: {target.note}")
    check = check_data(cfg, samples=0)
    if check.missing:
        print_missing(check)
        return None
    if target.achieved is None:
        raise ConfigError(f"{name}: the data is present, but {target.note}")
    with held_run(cfg, workdir) as workdir:
        recipe_module(cfg).train_and_evaluate(cfg, workdir)
    results = json.loads((Path(workdir) / "report.json").read_text())
    achieved = target.achieved(results)
    rows = [
        {"metric": m, "paper": v, "jaxrank": achieved.get(m, float("nan"))}
        for m, v in target.paper.items()
    ]
    print(report.table(rows, ["metric", "paper", "jaxrank"], fmt="simple"))
    return {"paper": target.paper, "achieved": achieved}


def _run(args, extra) -> None:
    args.workdir = args.workdir or f"runs/{args.name}"
    Path(args.workdir).parent.mkdir(parents=True, exist_ok=True)
    if reproduce(args.name, args.workdir, split_overrides(extra)) is None:
        raise SystemExit(1)


def add_command(sub) -> None:
    """``jaxrank reproduce``."""
    command = sub.add_parser("reproduce", help="check the data, run a paper setting, compare")
    command.add_argument("name", help=f"one of {', '.join(TARGETS)}")
    command.add_argument("--workdir", default="", help="run folder (default runs/<name>)")
    command.set_defaults(run=_run)
