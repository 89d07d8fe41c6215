"""Benchmark a small Qwen2 decoder on CPU: prefill and greedy-decode tokens/s of jaxrank's
jitted KV-cache sampler vs transformers' PyTorch ``generate``, same weights.

    .venv/bin/python scripts/bench_mllm.py --out docs/bench/mllm.json

One process, one CPU device, ``--dtype`` float32 (default) or bfloat16 on both sides. A
``Qwen2ForCausalLM`` (width 512, 8 layers, 8 query / 2 key-value heads, vocabulary 32,000) is
built from ``torch.manual_seed``, saved with ``save_pretrained`` and loaded by
``jaxrank.models.hf.qwen2.load_causal_lm``. ``--batch`` prompts of ``--prompt`` random tokens,
``--new`` greedy tokens, no stop token (both sides generate every token). Measured per method:

- prefill: one forward pass over the prompts that fills the cache (transformers: ``model(...,
  use_cache=True)``; jaxrank: the jitted ``CausalLM`` call with a ``KVCache``);
- generate: prompts to ``--new`` tokens (transformers: eager ``generate``, its default dynamic
  cache; jaxrank: ``Sampler``, prefill + ``lax.while_loop`` decode, compiled ahead of timing);
- decode tokens/s = batch x new / (generate - prefill), also as a fraction of the memory
  roofline: a decode step reads every weight and the cache once, so it cannot beat
  (bytes per step) / (bandwidth measured by a jitted 512 MiB reduction).

The greedy tokens of both are compared (random weights leave near-ties, so a late divergence
is possible; the agreement is reported). Methods are timed round robin ``--repeats`` times,
medians reported. Writes JSON and prints a table.
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

QWEN2_SMALL = {
    "vocab_size": 32_000,
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
}
JAXRANK = "jaxrank (jit, KV cache)"
TORCH = "transformers eager"


def build(folder: Path, seed: int, dtype: str) -> tuple[Any, Any]:
    """Same random weights on both sides, stored (and computed) in ``dtype``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from jaxrank.models.hf.qwen2 import load_causal_lm

    torch.manual_seed(seed)
    reference = Qwen2ForCausalLM(Qwen2Config(**QWEN2_SMALL)).eval()
    reference.save_pretrained(folder)
    return reference.to(getattr(torch, dtype)), load_causal_lm(folder, dtype=dtype).model


def jaxrank_methods(
    model: Any, tokens: np.ndarray, new: int, dtype: str
) -> tuple[dict, dict, np.ndarray]:
    """Compiled prefill and generate as pure functions of (state, prompt); their compile times
    and the generated tokens."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxrank.models.lm import KVCache
    from jaxrank.models.lm_prompt import Prompt
    from jaxrank.rl.sampler import SamplingSettings, generate

    graphdef, state = nnx.split(model)
    prompt = Prompt.from_tokens(tokens, np.ones_like(tokens, bool))
    settings = SamplingSettings(max_new_tokens=new, temperature=0.0)
    size = tokens.shape[1] + new

    def prefill(state, prompt):
        lm = nnx.merge(graphdef, state)
        cache = KVCache.empty(lm.config, prompt.batch, size, jnp.dtype(dtype))
        out = lm(prompt.tokens, prompt.mask, prompt.positions, cache=cache, compute_logits=False)
        return lm.logits(out.hidden[:, -1]), out.cache

    def sample(state, prompt, rng):
        return generate(nnx.merge(graphdef, state), prompt, rng, settings)

    rng = jax.random.key(0)
    compile_s, methods = {}, {}
    for name, fn, args in (
        ("prefill", prefill, (state, prompt)),
        ("generate", sample, (state, prompt, rng)),
    ):
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        compile_s[name] = time.perf_counter() - start
        methods[name] = lambda compiled=compiled, args=args: jax.block_until_ready(compiled(*args))
    generated = np.asarray(methods["generate"]().tokens)
    return methods, compile_s, generated


def torch_methods(reference: Any, tokens: np.ndarray, new: int) -> tuple[dict, np.ndarray]:
    import torch

    ids = torch.from_numpy(tokens.astype(np.int64))

    def prefill() -> Any:
        with torch.inference_mode():
            return reference(input_ids=ids, use_cache=True)

    def generate() -> Any:
        with torch.inference_mode():
            return reference.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )

    return {"prefill": prefill, "generate": generate}, generate()[:, tokens.shape[1] :].numpy()


def memory_bandwidth() -> float:
    """Bytes/s this machine streams from memory into a jitted reduction (best of 5 over
    512 MiB, far beyond the caches): the ceiling for decoding, which reads every weight once
    per step."""
    import jax
    import jax.numpy as jnp

    data = jnp.ones((128 * 2**20,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(data).block_until_ready()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        total(data).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def decode_bytes(model: Any, batch: int, slots: int, dtype: str) -> int:
    """Bytes one decode step must read at least: every weight (the tied embedding once, as the
    output layer) and the filled key/value cache."""
    import jax
    from flax import nnx

    weights = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    c = model.config
    cache = 2 * c.depth * batch * slots * c.kv_heads * c.dim_per_head * np.dtype(dtype).itemsize
    return weights + cache


def time_round_robin(methods: dict[str, Callable], repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        for fn in methods.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        print("  " + " ".join(f"{n}={t[-1]:.3f}s" for n, t in times.items()), flush=True)
    return times


def summarise(times: dict, batch: int, prompt: int, new: int, compile_s: dict) -> list[dict]:
    rows = []
    for method in (JAXRANK, TORCH):
        prefill_s = float(np.median(times[(method, "prefill")]))
        generate_s = float(np.median(times[(method, "generate")]))
        rows.append(
            {
                "method": method,
                "prefill_s": prefill_s,
                "generate_s": generate_s,
                "prefill_tokens_per_s": batch * prompt / prefill_s,
                "decode_tokens_per_s": batch * new / (generate_s - prefill_s),
                "all_prefill_s": times[(method, "prefill")],
                "all_generate_s": times[(method, "generate")],
                "compile_s": compile_s if method == JAXRANK else None,
            }
        )
    jx, pt = rows
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
        jx[f"{key}_vs_torch"] = jx[key] / pt[key]
    return rows


def add_roofline(rows: list[dict], step_bytes: int, bandwidth: float, batch: int) -> dict:
    """Each method's decode rate as a fraction of the memory-bandwidth ceiling."""
    ceiling = batch * bandwidth / step_bytes
    for row in rows:
        row["decode_fraction_of_roofline"] = row["decode_tokens_per_s"] / ceiling
    return {
        "bandwidth_gb_per_s": bandwidth / 1e9,
        "bytes_per_decode_step": step_bytes,
        "decode_tokens_per_s_ceiling": ceiling,
    }


def table(rows: list[dict]) -> str:
    lines = [
        {
            "method": r["method"],
            "prefill tok/s": r["prefill_tokens_per_s"],
            "decode tok/s": r["decode_tokens_per_s"],
            "generate s": r["generate_s"],
            "decode / roofline": r["decode_fraction_of_roofline"],
            "compile s": sum(r["compile_s"].values()) if r["compile_s"] else "-",
        }
        for r in rows
    ]
    jx = rows[0]
    text = tabulate(lines, headers="keys", tablefmt="github", floatfmt=".2f")
    return text + (
        f"\njaxrank / transformers: prefill {jx['prefill_tokens_per_s_vs_torch']:.2f}x, "
        f"decode {jx['decode_tokens_per_s_vs_torch']:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    parser.add_argument("--new", type=int, default=64, help="generated tokens per row")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", default="docs/bench/mllm.json")
    args = parser.parse_args()
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        sys.exit("unset XLA_FLAGS: the benchmark measures one real CPU device")

    report: dict[str, Any] = {"command": " ".join(sys.argv), "load_before": os.getloadavg()}
    report["machine"] = machine_info()
    report["config"] = {"model": QWEN2_SMALL} | vars(args)
    with tempfile.TemporaryDirectory() as folder:
        reference, model = build(Path(folder), args.seed, args.dtype)
    tokens = (
        np.random.default_rng(args.seed)
        .integers(1, QWEN2_SMALL["vocab_size"], (args.batch, args.prompt))
        .astype(np.int32)
    )
    ours, compile_s, ours_tokens = jaxrank_methods(model, tokens, args.new, args.dtype)
    theirs, theirs_tokens = torch_methods(reference, tokens, args.new)
    same = ours_tokens == theirs_tokens
    first_diff = [int(np.argmin(row)) if not row.all() else args.new for row in same]
    report["agreement"] = {"tokens_equal": float(same.mean()), "first_difference": first_diff}
    print(f"greedy agreement: {report['agreement']}", flush=True)

    methods = {(JAXRANK, k): fn for k, fn in ours.items()}
    methods |= {(TORCH, k): fn for k, fn in theirs.items()}
    before = cpu_seconds()
    start = time.perf_counter()
    times = time_round_robin(
        {f"{m}|{k}": fn for (m, k), fn in methods.items()}, args.repeats, args.warmup
    )
    report["contention"] = measured_contention(before, cpu_seconds(), time.perf_counter() - start)
    times = {tuple(name.split("|")): ts for name, ts in times.items()}
    report["results"] = summarise(times, args.batch, args.prompt, args.new, compile_s)
    step_bytes = decode_bytes(model, args.batch, args.prompt + args.new, args.dtype)
    report["roofline"] = add_roofline(report["results"], step_bytes, memory_bandwidth(), args.batch)
    report["load_after"] = os.getloadavg()
    report["table"] = table(report["results"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(report["table"])
    print(f"roofline: {report['roofline']}")
    print(f"contention: {report['contention']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
