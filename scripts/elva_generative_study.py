"""ELVA as published, CPU-sized: does the RL stage beat the compute-matched control?

    nohup nice -n 5 .venv/bin/python scripts/elva_generative_study.py --root /tmp/elva_study \\
        --out docs/bench/elva_generative_study.json > /tmp/elva_study.log 2>&1 &

The generative route (``configs/elva/generative_synthetic.py`` with ``STUDY``'s sizes) per
seed: the contrastive model, + the RL stage, and the control (``elva_sweep.py``'s: the same
contrastive stage continued for as many steps as the RL stage takes); the ablations (no ranking
reward, no margin reward, no random negatives) at one seed; the rollout sampler's tokens/s.
Then the fast path's control in its dense regime (``FAST``), seeds in ``--fast-seeds``, so the
two routes stand side by side. Every run is a resumable folder under --root; the JSON is
rewritten after each run, so a stopped study keeps what it measured, and a run already in
--out's JSON is taken from there (a fresh machine without the run folders finishes a study).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import elva_sweep
import jax
import numpy as np
from bench_machine import write_sweep
from flax import nnx

from jaxrank.configs import apply_overrides, load_config_file
from jaxrank.elva import generative_recipe
from jaxrank.elva.ret_rows import take_rows
from jaxrank.rl.sampler import generate
from jaxrank.train import report
from jaxrank.vlm.programs import vlm_prompt

GENERATIVE = "configs/elva/generative_synthetic.py"
# The config's benchmark (256 entities, marking 0.5): the tiny embedder's Recall@5 is far from
# 1 there, so it can fall for a look-alike. 200 contrastive steps; 100 RL steps at lr 1e-3 (at
# 1e-4 Recall@5 did not move in 40 steps); 64 queries per task and set.
STUDY = (
    "contrastive.steps=200",
    "train.steps=100",
    "train.eval_every=100",
    "train.learning_rate=1e-3",
    "eval.num_queries=64",
    "mining.depth=64",
)
FAST = "configs/elva/synthetic.py"
# docs/elva.md's dense regime, where Recall@5 sees the blind grain; its three-seed RL command.
FAST_STUDY = (
    "world.marking=0.3",
    "world.num_entities=1536",
    "benchmark.min_fine_neighbours=8",
    "rl.num_generations=512",
    "train.steps=600",
    "train.eval_every=600",
    "mining.depth=64",
)
ABLATIONS = ("no_ranking", "no_margin", "no_random_negatives")


def sampler_throughput(cfg, repeats: int = 3) -> dict[str, float]:
    """The RL stage's sampler alone (prefill, then up to ``summary_tokens + 1`` tokens for
    ``train.batch_size`` x pool prompts x G), jitted, timed over ``repeats`` calls after one
    to compile; the tiny embedder's random weights, so rows run to the cap."""
    with tempfile.TemporaryDirectory() as folder:
        _, source, embedder, (graphdef, params) = generative_recipe.setup(cfg, Path(folder))
    pool = 2 + cfg.mining.n_hard + cfg.mining.n_random
    rows = source.test_sets[("standard", 0)]
    prompts = cfg.train.batch_size * pool
    batch = embedder.batch(take_rows(rows, np.arange(prompts) % len(rows["entity"])), False)
    base, group = embedder.base, cfg.rl.num_generations
    settings = base.ret_sampling(cfg.embedder.summary_tokens + 1, cfg.sampling.temperature)

    @jax.jit
    def sample(params, batch, key):
        model = nnx.merge(graphdef, params)
        out = generate(
            model.language_model, vlm_prompt(model, batch, base.grid), key, settings, group
        )
        return out.mask.sum()

    jax.block_until_ready(sample(params, batch, jax.random.key(0)))
    started = time.perf_counter()
    tokens = sum(int(sample(params, batch, jax.random.key(i + 1))) for i in range(repeats))
    seconds = (time.perf_counter() - started) / repeats
    return {
        "rows": prompts * group,
        "max_new_tokens": settings.max_new_tokens,
        "seconds_per_call": seconds,
        "tokens_per_s": tokens / repeats / seconds,
    }


def _sweep(config: str, root: Path, overrides: tuple[str, ...]) -> argparse.Namespace:
    """``elva_sweep.run_one``'s arguments for one route."""
    root.mkdir(parents=True, exist_ok=True)
    return argparse.Namespace(config=config, root=str(root), override=list(overrides))


def compute_match(runs: list[dict]) -> list[dict]:
    """Per seed, the RL stage's seconds beside the control's continued contrastive stage's:
    the control is step-matched, and this says how far that is from wall-clock-matched."""
    rows = []
    for full in (r for r in runs if r["variant"] == "full"):
        control = [r for r in runs if r["variant"] == "control" and r["seed"] == full["seed"]]
        if control:
            rl, more = full["train"]["rl_seconds"], control[0]["train"]["contrastive_seconds"]
            rows.append(
                {
                    "seed": full["seed"],
                    "rl_steps": full["train"]["rl_steps"],
                    "rl_seconds": round(rl, 1),
                    "control_seconds": round(more, 1),
                    "control / rl": round(more / rl, 2),
                }
            )
    return rows


def recorded_runs(path: Path) -> dict[str, list[dict]]:
    """The runs an earlier, possibly stopped, study wrote to ``path``."""
    if not path.exists():
        return {"generative": [], "fast": []}
    return json.loads(path.read_text())["runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/elva_study", help="parent of the run folders")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ablation-seed", type=int, default=0)
    parser.add_argument("--fast-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--override", nargs="*", default=[], help="extra a.b=v (generative)")
    args = parser.parse_args()
    root = Path(args.root)
    generative = _sweep(GENERATIVE, root / "generative", (*STUDY, *args.override))
    fast = _sweep(FAST, root / "fast", FAST_STUDY)
    plan = [(generative, seed, variant) for seed in args.seeds for variant in ("full", "control")]
    plan += [(generative, args.ablation_seed, variant) for variant in ABLATIONS]
    plan += [(fast, seed, variant) for seed in args.fast_seeds for variant in ("full", "control")]

    study: dict = {}
    recorded = recorded_runs(Path(args.out))
    runs: dict[str, list[dict]] = {"generative": [], "fast": []}
    for sweep, seed, variant in plan:
        route = "generative" if sweep is generative else "fast"
        done = [r for r in recorded[route] if (r["seed"], r["variant"]) == (seed, variant)]
        runs[route].append(done[0] if done else elva_sweep.run_one(sweep, seed, variant))
        for name, done in runs.items():
            study[name] = elva_sweep.summary_rows(done) if done else []
            study[f"{name}_compute"] = compute_match(done)
        write_sweep(args.out, "elva_generative_study.py", args, study, runs)
    cfg = apply_overrides(load_config_file(GENERATIVE), generative.override)
    study["sampler"] = sampler_throughput(cfg)
    write_sweep(args.out, "elva_generative_study.py", args, study, runs)
    for name in runs:
        print(f"\n== {name} route")
        elva_sweep.print_tables(study[name], sorted({r["seed"] for r in runs[name]}))
        compute = study[f"{name}_compute"]
        print(report.table(compute, list(compute[0]) if compute else [], fmt="simple"))
    print(
        f"\nsampler (RL rollouts, {study['sampler']['rows']} rows): "
        f"{study['sampler']['tokens_per_s']:.0f} tokens/s"
    )


if __name__ == "__main__":
    main()
