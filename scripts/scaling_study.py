"""Scaling study on virtual CPU devices: the Region-R1 r-GRPO step against batch B, group G,
pool K and device count, and the sharded search against knowledge-base size N and device
count. Each row sets the measured step time beside the FLOPs and collective bytes the formulas
of docs/SCALING.md predict and what the compiled program really holds (the jaxpr's matmul
count, XLA's per-device cost analysis, the collectives in the partitioned HLO).

    .venv/bin/python scripts/scaling_study.py --out docs/bench/scaling.json

The 8 virtual devices share this machine's cores, so the times show how the work grows, not
how a pod would speed up: a device-count sweep moves the same FLOPs over the same cores.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import argparse
import functools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from bench_machine import machine_info
from flax import nnx
from tqdm.auto import tqdm

from jaxrank import parallel
from jaxrank.configs import apply_overrides, load_config_file
from jaxrank.contrastive.encoder import build_world
from jaxrank.data.synthetic import query_preset, world_vocabulary
from jaxrank.perf import profiling, step_costs
from jaxrank.perf.collectives import collective_payloads
from jaxrank.perf.flop_count import matmul_flops
from jaxrank.region_r1 import recipe as region_r1
from jaxrank.region_r1.scorer import untrained_scorer
from jaxrank.search import Index
from jaxrank.search.index import QUERY_BUCKETS
from jaxrank.search.topk import sharded_search
from jaxrank.train import report
from jaxrank.train.optim import adamw_warmup_cosine
from jaxrank.train.step import TrainState

CONFIG = Path(__file__).parents[1] / "configs" / "region_r1" / "synthetic.py"
BASE = {"batch": 16, "group": 4, "pool": 20, "devices": 8}
SWEEPS = {
    "batch": (8, 16, 32, 64),
    "group": (2, 4, 8, 16),
    "pool": (10, 20, 40, 80),
    "devices": (1, 2, 4, 8),
}


def _compiled_facts(compiled) -> dict[str, Any]:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    payloads = collective_payloads(compiled.as_text())
    return {"xla_flops_per_device": float(analysis["flops"]), "hlo_collectives": dict(payloads)}


class RegionR1World:
    """The synthetic recipe's policy and scorer at their configured sizes, random weights (the
    work of a step does not depend on their values), and rendered queries."""

    def __init__(self):
        self.cfg = load_config_file(CONFIG)
        self.world = build_world(self.cfg.scorer)
        largest = max(SWEEPS["batch"])
        self.queries = self.world.queries("train", largest, query_preset("moderate"))
        self.tokens = world_vocabulary().encode(self.queries["questions"], self.cfg.policy.max_len)
        rng = np.random.default_rng(0)
        kb = rng.standard_normal((self.world.num_entities, self.cfg.scorer.model.embed_dim))
        self.kb = (kb / np.linalg.norm(kb, axis=1, keepdims=True)).astype(np.float32)

    def batch(self, size: int, pool: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(1)
        pool_ids = rng.integers(0, len(self.kb), (size, pool)).astype(np.int32)
        return {
            "images": self.queries["images"][:size],
            "tokens": self.tokens[:size],
            "boxes": self.queries["boxes"][:size].astype(np.float32),
            "pool_ids": pool_ids,
            "labels": (pool_ids == self.queries["entity"][:size, None]).astype(np.float32),
            "pool_valid": np.ones((size, pool), bool),
        }

    def step_inputs(self, batch: int, group: int, pool: int, devices: int):
        cfg = apply_overrides(
            self.cfg.copy_and_resolve_references(),
            [f"train.batch_size={batch}", f"rl.num_generations={group}", f"data.pool_size={pool}"],
        )
        mesh = parallel.make_mesh(devices, 1, jax.devices()[:devices])
        scorer, scorer_params = untrained_scorer(cfg, mesh)
        graphdef, params = nnx.split(region_r1.build_policy(cfg, mesh), nnx.Param)
        optimizer = adamw_warmup_cosine(cfg.train)
        state = TrainState.create(params, optimizer, cfg.seed)
        frozen = region_r1.frozen_inputs(
            SimpleNamespace(kb=self.kb, params=scorer_params), params, mesh
        )
        step = region_r1.make_step(cfg, graphdef, scorer, optimizer)
        placed = parallel.shard_batch(self.batch(batch, pool), mesh)
        return cfg, mesh, scorer, scorer_params, graphdef, step, state, placed, frozen


def per_example_flops(world: RegionR1World) -> tuple[step_costs.PerExampleFlops, int]:
    """The formula's per-example terms, each counted from its own one-example program, and
    the policy's parameter count."""
    cfg, _, scorer, scorer_params, graphdef, _, state, _, _ = world.step_inputs(8, 1, 1, 1)
    params = state.params
    image = jnp.asarray(world.queries["images"][:1])
    tokens = jnp.asarray(world.tokens[:1])
    per_example = region_r1.per_example_flops(
        cfg, graphdef, params, scorer, scorer_params, image, tokens
    )
    return per_example, sum(x.size for x in jax.tree.leaves(params))


def region_r1_rows(repeats: int) -> tuple[dict[str, int], list[dict]]:
    world = RegionR1World()
    terms, policy_params = per_example_flops(world)
    points = [dict(BASE, **{axis: v}) for axis, values in SWEEPS.items() for v in values]
    points = list({tuple(p.items()): p for p in points}.values())  # the base point once
    rows = []
    for point in tqdm(points, desc="r-GRPO step"):
        cfg, mesh, _, _, _, step, state, batch, frozen = world.step_inputs(
            point["batch"], point["group"], point["pool"], point["devices"]
        )
        updates = cfg.rl.updates_per_batch
        with jax.set_mesh(mesh):
            compiled = jax.jit(step).lower(state, batch, frozen).compile()
            row = dict(
                point,
                step_ms=profiling.milliseconds(compiled, state, batch, frozen, repeats=repeats),
                jaxpr_flops=matmul_flops(step, state, batch, frozen),
                formula_flops=step_costs.region_grpo_step_flops(
                    terms, point["batch"], point["group"], point["pool"], updates
                ),
                formula_allreduce_bytes=step_costs.gradient_all_reduce_bytes(
                    policy_params, point["devices"], updates
                ),
                **_compiled_facts(compiled),
            )
        rows.append(row)
    return {**terms._asdict(), "policy_params": policy_params}, rows


def _search(queries, database, *, mesh, k, block):
    return sharded_search(queries, *database, mesh=mesh, k=k, metric="ip", block=block)


def search_rows(repeats: int, dim: int, queries: int, k: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    grid = [(n, d) for n in (1 << 14, 1 << 16, 1 << 18) for d in (1, 2, 4, 8)]
    for n, devices in tqdm(grid, desc="sharded search"):
        mesh = parallel.make_mesh(devices, 1, jax.devices()[:devices])
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        index = Index.from_array(vectors, metric="ip", mesh=mesh)
        bucket = next(b for b in QUERY_BUCKETS if b >= queries)
        placed = jax.device_put(
            np.pad(q, ((0, bucket - queries), (0, 0))), parallel.replicated(mesh)
        )
        block = index._layout.block
        search = functools.partial(_search, mesh=mesh, k=k, block=block)
        stored_rows = index.database.vectors.shape[0]
        # The block loop's trip count is the valid rows' blocks: a while loop to the counters.
        blocks = -(-(stored_rows // devices) // block)
        rows.append(
            {
                "kb_size": n,
                "devices": devices,
                "search_ms": profiling.milliseconds(index.search, q, k, repeats=repeats),
                "stored_rows": stored_rows,
                "blocks_per_device": blocks,
                "jaxpr_flops": matmul_flops(search, placed, index.database, while_trips=blocks),
                "formula_flops_per_device": step_costs.search_flops_per_device(
                    bucket, stored_rows, devices, dim
                ),
                "formula_gather_bytes": step_costs.search_gather_bytes(bucket, k, devices),
                **_compiled_facts(jax.jit(search).lower(placed, index.database).compile()),
            }
        )
    return rows


def fixed_cost_and_rate(ms: list[float], flops: list[float]) -> dict[str, float]:
    """Least-squares ``ms = fixed + flops / rate``: the per-call cost that does not grow with
    the work, and the rate at which the work runs."""
    slope, fixed = np.polyfit(np.asarray(flops) / 1e9, np.asarray(ms) / 1e3, 1)
    return {"fixed_ms": 1e3 * float(fixed), "gflops_per_s": float(1 / slope)}


def summarise(out: dict) -> dict:
    """The fits over the rows at each device count, and the formulas' worst deviation."""
    r1, search = out["region_r1_step"], out["search"]
    eight = [r for r in r1 if r["devices"] == max(SWEEPS["devices"])]
    fits = {
        "region_r1_at_8_devices": fixed_cost_and_rate(
            [r["step_ms"] for r in eight], [r["jaxpr_flops"] for r in eight]
        )
    }
    for d in sorted({r["devices"] for r in search}):
        rows = [r for r in search if r["devices"] == d]
        fits[f"search_at_{d}_devices"] = fixed_cost_and_rate(
            [r["search_ms"] for r in rows], [r["jaxpr_flops"] for r in rows]
        )
    deviation = lambda pairs: max(abs(a / b - 1) for a, b in pairs)
    return {
        "fits": fits,
        "region_r1_formula_vs_jaxpr": deviation((r["formula_flops"], r["jaxpr_flops"]) for r in r1),
        "search_formula_vs_jaxpr": deviation(
            (r["formula_flops_per_device"] * r["devices"], r["jaxpr_flops"]) for r in search
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/bench/scaling.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--show", help="print the tables of an earlier run's JSON; measure nothing")
    args = parser.parse_args()
    if args.show:
        _print(json.loads(Path(args.show).read_text()))
        return
    terms, r1 = region_r1_rows(args.repeats)
    search = search_rows(args.repeats, args.dim, args.queries, args.k)
    out = {
        "command": "python scripts/scaling_study.py " + f"--out {args.out}",
        "machine": machine_info(),
        "virtual_devices": jax.device_count(),
        "per_example_flops": terms,
        "region_r1_step": r1,
        "search": search,
    }
    out["summary"] = summarise(out)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    _print(out)


def _print(out: dict) -> None:
    giga, kilo = 1e-9, 1e-3
    r1 = [
        {
            "B": r["batch"],
            "G": r["group"],
            "K": r["pool"],
            "devices": r["devices"],
            "step ms": r["step_ms"],
            "formula GFLOP": r["formula_flops"] * giga,
            "jaxpr GFLOP": r["jaxpr_flops"] * giga,
            "XLA GFLOP/device x n": r["xla_flops_per_device"] * r["devices"] * giga,
            "all-reduce KB (formula)": r["formula_allreduce_bytes"] * kilo,
            "HLO collectives KB": sum(r["hlo_collectives"].values()) * kilo,
        }
        for r in out["region_r1_step"]
    ]
    search = [
        {
            "N": r["kb_size"],
            "devices": r["devices"],
            "search ms": r["search_ms"],
            "formula GFLOP/device": r["formula_flops_per_device"] * giga,
            "jaxpr GFLOP / n": r["jaxpr_flops"] / r["devices"] * giga,
            "gather KB (formula)": r["formula_gather_bytes"] * kilo,
            "HLO collectives KB": sum(r["hlo_collectives"].values()) * kilo,
        }
        for r in out["search"]
    ]
    fits = [
        {
            "fit of ms = fixed + FLOPs / rate": name,
            "fixed ms": f["fixed_ms"],
            "GFLOP/s": f["gflops_per_s"],
        }
        for name, f in out["summary"]["fits"].items()
    ]
    for rows in (r1, search, fits):
        print("\n" + report.table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
