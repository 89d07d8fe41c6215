"""Benchmark Region-R1's MLLM r-GRPO step: the host-driven step (sample, copy to the host,
parse, decode the whole batch again for the flipped slots, score, update; kept in
tests/helpers/mllm_host_step.py) against the compiled one (region_r1/mllm_step.make_step: one
program, one decoding pass), side by side in one process on the same data and seed.

    .venv/bin/python scripts/bench_mllm_step.py --out docs/bench/mllm_step.json
    .venv/bin/python scripts/bench_mllm_step.py --devices 8 --out docs/bench/mllm_step_8dev.json

The setting is the demo's (configs/region_r1/mllm_synthetic.py): the tiny random Qwen2.5-VL
policy with its tokenizer trained on the recipe's texts, LoRA rank 8 on every linear, 96-pixel
queries of the synthetic world, G = 8 balanced, 40 new tokens at temperature 1, the scorer's
image tower at the config's sizes (random weights: what a step costs does not depend on them),
K = 20 candidates per query. The policy is random, so every group comes out all FULL and
every step flips one slot per group: the host-driven step decodes twice in every step, as in
the demo's early steps. ``--devices 8`` runs on 8 virtual CPU devices (data axis 8).

Steps alternate (old, new, old, ...) so both see the same machine load; the first ``--warmup``
steps of each (compilation) are dropped; the table gives median step seconds, steps/s and the
decoding passes per step (the host-driven step counts its sampler calls; the compiled one counts
the decoding loops traced into its program).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16, help="queries per step (demo: 16)")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new", type=int, default=40, help="max new tokens (demo: 40)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def main() -> None:
    args = _args()
    if args.devices > 1:
        flag = f"--xla_force_host_platform_device_count={args.devices}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    import tempfile

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from bench_machine import contention, cpu_model, cpu_seconds
    from flax import nnx
    from mllm_host_step import GRPOStep
    from tabulate import tabulate

    from jaxrank import parallel
    from jaxrank.configs import apply_overrides, load_config_file
    from jaxrank.contrastive.encoder import build_world
    from jaxrank.data.synthetic import query_preset
    from jaxrank.region_r1 import mllm_step
    from jaxrank.region_r1.mllm_policy import build_base
    from jaxrank.region_r1.mllm_recipe import place_step_batch
    from jaxrank.region_r1.scorer import untrained_scorer
    from jaxrank.train.step import TrainState
    from jaxrank.vlm.finetune import with_adapters

    config = Path(__file__).resolve().parents[1] / "configs" / "region_r1" / "mllm_synthetic.py"
    cfg = apply_overrides(
        load_config_file(config),
        [
            f"rl.num_generations={args.group}",
            f"policy.max_new_tokens={args.new}",
            f"train.batch_size={args.batch}",
            f"seed={args.seed}",
        ],
    )
    mesh = parallel.make_mesh(data=args.devices, devices=jax.devices()[: args.devices])
    world = build_world(cfg.scorer)
    queries = world.queries("train", 4 * args.batch, query_preset("default"))
    questions = queries["questions"]
    with tempfile.TemporaryDirectory() as folder:
        base = build_base(cfg, Path(folder), questions, mesh)
    graphdef, params = nnx.split(base.model, nnx.Param)
    graphdef, adapters, rest = with_adapters(cfg.lora, graphdef, params, cfg.seed)
    scorer, scorer_params = untrained_scorer(cfg, mesh)

    # The first stage's pools: K random rows of a random knowledge base (the step's cost does
    # not depend on which), scored by the full image as the first stage scores them.
    rng = np.random.default_rng(args.seed)
    pixels = jax.ShapeDtypeStruct((1, scorer.input_size, scorer.input_size, 3), jnp.float32)
    dim = jax.eval_shape(scorer.embed, scorer_params, pixels).shape[-1]
    kb = rng.standard_normal((256, dim)).astype(np.float32)
    kb /= np.linalg.norm(kb, axis=1, keepdims=True)
    k = cfg.data.pool_size
    pool_ids = np.stack([rng.choice(len(kb), k, replace=False) for _ in questions]).astype(np.int32)
    full = mllm_step.full_image_scores(
        lambda x: scorer.embed(scorer_params, x),
        jnp.asarray(queries["images"]),
        jnp.asarray(kb)[pool_ids],
        scorer.input_size,
    )
    data = {
        "images": queries["images"],
        "boxes": queries["boxes"].astype(np.float32),
        "pool_ids": pool_ids,
        "labels": (np.arange(k) == 0)[None].repeat(len(questions), 0).astype(np.float32),
        "pool_valid": np.ones((len(questions), k), bool),
        "pool_scores": np.asarray(full),
        "rows": np.arange(len(questions), dtype=np.int32),
    }
    frozen = parallel.put_replicated(
        {"kb": jnp.asarray(kb), "scorer": scorer_params, "base": rest}, mesh
    )
    optimizer = optax.adamw(1e-3)
    old = GRPOStep(cfg, base, graphdef, scorer, optimizer, questions, mesh)

    traced = []
    sampler_fn = mllm_step.sampler_fn
    mllm_step.sampler_fn = lambda *a, **kw: (
        lambda sample: lambda *x: (traced.append(1), sample(*x))[1]
    )(sampler_fn(*a, **kw))
    new_step = mllm_step.make_step(cfg, base, graphdef, scorer)(optimizer)
    state = jax.jit(lambda p: TrainState.create(p, optimizer, cfg.seed))(adapters)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    new = jax.jit(new_step, donate_argnums=0, out_shardings=(shardings, None))

    def batch(i):
        rows = np.arange(i * args.batch, (i + 1) * args.batch) % len(questions)
        return {key: value[rows] for key, value in data.items()}

    states = {"host-driven step": state, "compiled step": jax.tree.map(jnp.copy, state)}
    times = {name: [] for name in states}
    passes = {name: [] for name in states}
    before = cpu_seconds()
    started = time.perf_counter()
    with jax.set_mesh(mesh):
        for i in range(args.warmup + args.steps):
            host = batch(i)
            t = time.perf_counter()
            calls = old.decoding_passes
            states["host-driven step"], _ = old(states["host-driven step"], dict(host), frozen)
            jax.block_until_ready(states["host-driven step"])
            times["host-driven step"].append(time.perf_counter() - t)
            passes["host-driven step"].append(old.decoding_passes - calls)
            t = time.perf_counter()
            placed = place_step_batch(base, questions, mesh, dict(host))
            states["compiled step"], metrics = new(states["compiled step"], placed, frozen)
            jax.block_until_ready(states["compiled step"])
            times["compiled step"].append(time.perf_counter() - t)
            passes["compiled step"].append(len(traced))  # loops in the one traced program
    load = contention(before, cpu_seconds(), time.perf_counter() - started)
    rows, result = [], {}
    for name in states:
        timed = times[name][args.warmup :]
        median = float(np.median(timed))
        result[name] = {
            "step_s_median": median,
            "steps_per_s": 1 / median,
            "step_s": timed,
            "first_step_s": times[name][0],
            "decoding_passes_per_step": float(np.mean(passes[name][args.warmup :])),
        }
        rows.append(
            [
                name,
                f"{1 / median:.3f}",
                f"{median:.2f}",
                result[name]["decoding_passes_per_step"],
                f"{times[name][0]:.1f}",
            ]
        )
    speedup = result["host-driven step"]["step_s_median"] / result["compiled step"]["step_s_median"]
    print(tabulate(rows, ["step", "steps/s", "step s", "decoding passes/step", "first step s"]))
    print(f"speed-up over the host-driven step: {speedup:.2f}x")
    out = {
        "command": " ".join(sys.argv),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "jax": jax.__version__,
            "devices": args.devices,
        },
        "setting": {k: v for k, v in vars(args).items() if k != "out"},
        "forced_rate_last_step": float(metrics["forced_rate"]),
        "contention": load,
        "steps": result,
        "speedup_over_host_driven_step": speedup,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
