"""Benchmark ViT-B/16 image throughput on CPU: jaxrank's image tower vs transformers' PyTorch
``CLIPVisionModel`` with the same random weights.

    .venv/bin/python scripts/bench_encoder.py --out docs/bench/encoder.json

One process, one CPU device, float32, 224 px. A ``CLIPVisionModel`` with
openai/clip-vit-base-patch16's vision config is built from ``torch.manual_seed``, written with
``save_pretrained`` and read back by ``jaxrank.models.hf.load_pretrained``; the pooled outputs of
both are compared once, so the timings are of the same computation. jaxrank runs as a user runs
it: ``nnx.split`` the module and ``jax.jit`` a pure function of (state, pixels), compiled ahead of
the timing (compile time reported separately). PyTorch runs eager under ``inference_mode`` and,
if it works here, ``torch.compile``d (its compile time is the first call). Every method is
warmed up, then timed ``--repeats`` times round robin across the methods (a neighbour's job
slows all alike), and the median is reported as images/s. Both frameworks use all cores by
default; their thread settings are recorded. Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_machine import contention as measured_contention
from bench_machine import cpu_seconds, machine_info
from tabulate import tabulate

# openai/clip-vit-base-patch16's vision config (CLIPVisionConfig's defaults are B/32).
VIT_B16 = {
    "image_size": 224,
    "patch_size": 16,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "num_channels": 3,
}
MAX_POOLED_DIFF = 1e-4
JAXRANK = "jaxrank (jax.jit)"
EAGER = "torch eager"
COMPILED = "torch.compile"


def build_models(folder: Path, seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """The torch model from the seed and jaxrank's load of its saved folder: same weights."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from jaxrank.models.hf import load_pretrained

    torch.manual_seed(seed)
    torch_model = CLIPVisionModel(CLIPVisionConfig(**VIT_B16)).eval()
    torch_model.save_pretrained(folder)
    pretrained = load_pretrained(folder)
    info = {
        "torch_attn_implementation": torch_model.config._attn_implementation,
        "parameters": sum(p.numel() for p in torch_model.parameters()),
        "jaxrank_load": pretrained.summary(),
    }
    return torch_model, pretrained.model, info


def jaxrank_forward(model: Any, pixels: np.ndarray) -> tuple[Callable[[], Any], dict[str, float]]:
    """A compiled pure function of (state, pixels) running the tower, and its compile times.

    It returns the pooled vector and all tokens, as ``CLIPVisionModel`` does, so neither side
    gets to drop work the other does."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model.tower)

    def forward(state: nnx.State, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        return nnx.merge(graphdef, state)(pixels)

    x = jax.device_put(pixels)
    start = time.perf_counter()
    lowered = jax.jit(forward).lower(state, x)
    lowered_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lowered_s
    return (lambda: jax.block_until_ready(compiled(state, x))), {
        "trace_lower_s": lowered_s,
        "compile_s": compile_s,
    }


def check_agreement(model: Any, torch_model: Any, pixels: np.ndarray) -> dict[str, float]:
    """Max abs difference of the pooled outputs; the benchmark refuses to time different maths."""
    import torch

    ours = np.asarray(model.tower(pixels)[0])
    nchw = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    with torch.inference_mode():
        theirs = torch_model(pixel_values=nchw).pooler_output
    diff = float(np.max(np.abs(ours - theirs.numpy())))
    print(f"pooled max |jaxrank - torch| = {diff:.2e}", flush=True)
    if not diff < MAX_POOLED_DIFF:
        sys.exit(f"pooled outputs differ by {diff:.2e} >= {MAX_POOLED_DIFF}: not the same model")
    return {"pooled_max_abs_diff": diff, "pooled_abs_max": float(np.max(np.abs(ours)))}


def run_batch(batch: int, model: Any, torch_model: Any, args: argparse.Namespace) -> list[dict]:
    """Warm up and time every method on one batch size; one row per method."""
    import torch

    pixels = np.random.default_rng([args.seed, batch]).standard_normal(
        (batch, 224, 224, 3), dtype=np.float32
    )
    nchw = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))

    def eager() -> Any:
        with torch.inference_mode():
            return torch_model(pixel_values=nchw)

    jax_fn, jax_compile = jaxrank_forward(model, pixels)
    methods: dict[str, Callable[[], Any]] = {JAXRANK: jax_fn, EAGER: eager}
    compile_s = {JAXRANK: jax_compile["trace_lower_s"] + jax_compile["compile_s"]}
    failures = {}
    if args.torch_compile:
        compiled = torch.compile(torch_model)

        def compiled_fn() -> Any:
            with torch.inference_mode():
                return compiled(pixel_values=nchw)

        start = time.perf_counter()
        try:
            compiled_fn()
            compile_s[COMPILED] = time.perf_counter() - start
            methods[COMPILED] = compiled_fn
        except Exception as err:  # optional: report, keep the rest of the benchmark
            failures[COMPILED] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            print(f"  torch.compile failed: {failures[COMPILED]}", flush=True)

    for _ in range(args.warmup):
        for fn in methods.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    before = cpu_seconds()
    for _ in range(args.repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        print(f"  batch {batch}: {' '.join(f'{t[-1]:.3f}' for t in times.values())} s", flush=True)

    contention = measured_contention(before, cpu_seconds(), sum(map(sum, times.values())))
    print(f"  contention: {contention}", flush=True)
    eager_s = float(np.median(times[EAGER]))
    rows = []
    for name, ts in times.items():
        seconds = float(np.median(ts))
        row = {
            "method": name,
            "batch": batch,
            "seconds": seconds,
            "all_seconds": ts,
            "images_per_s": batch / seconds,
            "images_per_s_best": batch / min(ts),
            "vs_torch_eager": eager_s / seconds,
            "compile_s": compile_s.get(name),
            "contention": contention,
        }
        if name == JAXRANK:
            row |= jax_compile
        rows.append(row)
    for name, message in failures.items():
        rows.append({"method": name, "batch": batch, "failed": message})
    return rows


def table(results: list[dict]) -> str:
    """One line per batch: images/s of each method, jaxrank/torch-eager ratio, compile times."""
    lines = []
    for batch in sorted({r["batch"] for r in results}):
        by = {r["method"]: r for r in results if r["batch"] == batch}
        jx, eager, comp = by[JAXRANK], by[EAGER], by.get(COMPILED)
        compiled_ok = comp is not None and "failed" not in comp
        missing = "not run" if comp is None else "failed"
        lines.append(
            {
                "batch": batch,
                "jaxrank img/s": jx["images_per_s"],
                "torch eager img/s": eager["images_per_s"],
                "jaxrank / eager": jx["images_per_s"] / eager["images_per_s"],
                "torch.compile img/s": comp["images_per_s"] if compiled_ok else missing,
                "jaxrank / compile": (
                    jx["images_per_s"] / comp["images_per_s"] if compiled_ok else "-"
                ),
                "jaxrank compile s": jx["compile_s"],
                "torch.compile s": comp["compile_s"] if compiled_ok else "-",
            }
        )
    text = tabulate(lines, headers="keys", tablefmt="github", floatfmt=".2f")
    for batch in sorted({r["batch"] for r in results}):
        c = next(r["contention"] for r in results if r["batch"] == batch and "contention" in r)
        text += (
            f"\nbatch {batch}: during the {c['wall_s']:.0f} s of timed runs, other processes used "
            f"{c['busy_cpu_s_by_others']:.1f} CPU-s and the hypervisor stole "
            f"{c['steal_cpu_s']:.1f} CPU-s (this process: {c['own_cpu_s']:.0f} CPU-s)."
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="8,32", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per method first")
    parser.add_argument("--torch-compile", type=int, default=1, help="also time torch.compile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/bench/encoder.json")
    args = parser.parse_args()
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        sys.exit("unset XLA_FLAGS: the benchmark measures one real CPU device")

    report: dict[str, Any] = {"command": " ".join(sys.argv), "load_before": os.getloadavg()}
    report["machine"] = machine_info()
    print(json.dumps(report["machine"], indent=1), flush=True)
    report["config"] = {"vision": VIT_B16, "dtype": "float32", "seed": args.seed} | vars(args)
    with tempfile.TemporaryDirectory() as folder:
        torch_model, model, report["model"] = build_models(Path(folder), args.seed)
    check = np.random.default_rng([args.seed, 1]).standard_normal((2, 224, 224, 3), np.float32)
    report["agreement"] = check_agreement(model, torch_model, check)
    report["results"] = []
    for batch in (int(b) for b in args.batches.split(",")):
        report["results"] += run_batch(batch, model, torch_model, args)
    report["load_after"] = os.getloadavg()
    report["table"] = table(report["results"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(report["table"])
    print(f"load average before {report['load_before']}, after {report['load_after']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
