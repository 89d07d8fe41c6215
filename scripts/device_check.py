"""The accelerator check: what jaxrank does on one chip, at the papers' sizes, in one command.

    python scripts/device_check.py --out docs/bench/device_check_<device>.json   # < 8 min
    python scripts/device_check.py --tiny --out /tmp/device_check_tiny.json      # CPU, ~1 min

For a machine with one GPU (or TPU) and JAX already installed: nothing is downloaded and
nothing installed; jaxrank is imported from this checkout. Every weight is random (the real
architectures' shapes, from ``jaxrank.models.hf.published``), bfloat16. Parts:

- ``rgrpo_step``: Region-R1's MLLM r-GRPO step (configs/region_r1/evqa.py: Qwen2.5-VL-3B +
  LoRA policy, CLIP-L/14-336 scorer, G 8, 256 new tokens, the 2M-page knowledge base) at the
  paper's 4 queries per device, or the largest per-device batch the planner's analytic model
  fits in this device's memory when 4 does not. Its three jitted programs (the planner's
  ``region_r1.plan_programs``: sampler, judge, update) compiled on this device and run on
  random inputs: compile seconds, seconds per step net of compilation (the host's parse of
  the completions is left out), XLA's memory per program and the device's peak, MFU against
  the chip's bf16 peak; beside each, the planner's prediction (its analytic memory model, and
  docs/SCALING.md's time model: 40% MFU on matmuls, decoding at 80% of HBM bandwidth).
- ``search_topk``: exact top-k over 10M x 768 bf16 rows, 1024 queries, k 20, with
  ``jaxrank.search.topk.sharded_search`` vs a plain PyTorch bf16 matmul + ``topk`` on the same
  device and the same rows (shared through DLPack); both checked against a float32 reference.
- ``clip_image``: the CLIP-L/14-336 image tower, images/s, jaxrank (jit) vs transformers'
  PyTorch ``CLIPVisionModel`` with sdpa attention, same weights (saved and loaded).
- ``qwen_decode``: Qwen2.5-VL-3B's language model, greedy decoding tokens/s at batch 8 and 64,
  jaxrank's KV-cache sampler (``rl.sampler.generate``) vs transformers' ``generate``, same
  weights; the greedy tokens of the two compared.

Each part runs in its own process under a time budget (a part that fails or runs out of time
records why, with what it measured so far, and the others still run), so the device's memory
is the part's alone and JAX does not pre-allocate it. ``--tiny`` runs the same code at toy
widths on the CPU (float32 where the two frameworks are compared token for token), which the
test suite does (tests/scripts/test_device_check.py). Writes one JSON and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

EVQA = ROOT / "configs" / "region_r1" / "evqa.py"
PAPER_QUERIES_PER_DEVICE = 4  # PAPERS.md §1; configs/region_r1/evqa.py: 32 on 8 chips

# device_kind prefix -> (dense bf16 TFLOP/s, HBM GB/s) per chip, first match wins. Sources:
# NVIDIA's datasheets (H100 SXM 989 / 3350, H100 PCIe 756 / 2000, H100 NVL 835 / 3900, H200
# 989 / 4800, A100 SXM 80 GB 312 / 2039, L4 121 / 300); Google Cloud's TPU system architecture
# pages (v4 275 / 1200, v5e 197 / 819, v5p 459 / 2765, v6e 918 / 1640). Chips not listed fall
# back to jaxrank.perf.throughput's peak table (no bandwidth: no decode-time prediction).
CHIP_PEAKS = (
    ("NVIDIA H100 PCIe", 756.0, 2000.0),
    ("NVIDIA H100 NVL", 835.0, 3900.0),
    ("NVIDIA H100", 989.0, 3350.0),
    ("NVIDIA H200", 989.0, 4800.0),
    ("NVIDIA A100", 312.0, 2039.0),
    ("NVIDIA L4", 121.0, 300.0),
    ("TPU v4", 275.0, 1200.0),
    ("TPU v5 lite", 197.0, 819.0),
    ("TPU v5", 459.0, 2765.0),
    ("TPU v6 lite", 918.0, 1640.0),
)


# ------------------------------------------------------------------------------------------
# Shared helpers (run inside a part's process)


class Record(dict):
    """A part's results, written to its file on every ``set`` so that a part killed at its
    time budget still reports what it measured."""

    def __init__(self, path: Path | None):
        super().__init__()
        self.path = path

    def set(self, **values: Any) -> None:
        self.update(values)
        if self.path is not None:
            self.path.write_text(json.dumps(self, indent=1, default=_jsonable))


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def chip_peaks(device_kind: str) -> tuple[float | None, float | None]:
    """(bf16 TFLOP/s, HBM GB/s) of a device kind: ``CHIP_PEAKS``, else the library's table."""
    for prefix, tflops, gbps in CHIP_PEAKS:
        if device_kind.startswith(prefix):
            return tflops, gbps
    from jaxrank.perf.throughput import peak_tflops

    return peak_tflops(device_kind), None


def device_memory() -> dict[str, int | None]:
    """The device's memory limit and peak use so far, as its runtime reports them (None on a
    CPU or where the backend has no statistics)."""
    import jax

    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # backends without statistics raise various errors
        stats = {}
    return {"bytes_limit": stats.get("bytes_limit"), "peak_bytes": stats.get("peak_bytes_in_use")}


def accelerator() -> tuple[str, Any]:
    """The device kind and the torch device on the same chip ('cuda' for a GPU, else 'cpu')."""
    import jax
    import torch

    kind = jax.devices()[0].device_kind
    gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    return kind, torch.device("cuda" if gpu else "cpu")


def torch_sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), times


def jax_to_torch(x: Any, device: Any) -> Any:
    """A JAX array as a torch tensor on ``device``: zero-copy through DLPack where both
    frameworks take it, else through host memory (bfloat16 as its bits)."""
    import torch

    try:
        return torch.from_dlpack(x).to(device)
    except Exception:  # DLPack support differs across versions and backends
        host = np.asarray(x)
        if host.dtype.name == "bfloat16":
            return torch.from_numpy(host.view(np.uint16)).view(torch.bfloat16).to(device)
        return torch.from_numpy(host).to(device)


def environment(tiny: bool, out: Record) -> None:
    """The machine: devices, library versions, the chip's peaks and memory."""
    import flax
    import jax

    kind = jax.devices()[0].device_kind
    tflops, gbps = chip_peaks(kind)
    versions = {"python": platform.python_version(), "jax": jax.__version__}
    versions["flax"] = flax.__version__
    for name in ("jaxlib", "torch", "transformers", "numpy"):
        with contextlib.suppress(ImportError):
            versions[name] = __import__(name).__version__
    out.set(
        backend=jax.default_backend(),
        device_kind=kind,
        devices=[str(d) for d in jax.devices()],
        versions=versions,
        peak_bf16_tflops=tflops,
        hbm_gb_per_s=gbps,
        memory=device_memory(),
        host=platform.node(),
        tiny=tiny,
    )


# ------------------------------------------------------------------------------------------
# Part 1: the r-GRPO step


def _tiny_setting(setting: Any) -> Any:
    """The setting's shapes with toy towers (Qwen2.5-VL's layout, CLIP's layout), one layer
    each: the update's compilation grows with the unrolled layers."""
    import dataclasses

    from jaxrank.models import presets

    lm = dataclasses.replace(
        setting.policy.lm, vocab_size=512, width=64, depth=1, heads=4, kv_heads=2, mlp_dim=128,
        mrope_section=(2, 3, 3),
    )  # fmt: skip
    vision = dataclasses.replace(
        setting.policy.vision, depth=1, width=32, heads=2, mlp_dim=64, out_width=64,
        fullatt_block_indexes=(0,),
    )  # fmt: skip
    policy = dataclasses.replace(setting.policy, lm=lm, vision=vision)
    scorer = presets.tiny_clip(image_size=32, depth=1, dtype=setting.dtype)
    return dataclasses.replace(
        setting, policy=policy, scorer=scorer, prompt_length=32, new_tokens=8, kb_rows=64
    )


def _random_leaf(key: Any, name: str, shape: tuple, dtype: Any, bounds: dict[str, int]) -> Any:
    """One random array for the leaf called ``name`` (``materialize``'s rules)."""
    import jax
    import jax.numpy as jnp

    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return jax.random.split(key, shape) if shape else key
    if dtype == jnp.bool_:
        return jnp.ones(shape, bool)
    if dtype == jnp.uint8:
        return jax.random.randint(key, shape, 0, 256).astype(dtype)
    if jnp.issubdtype(dtype, jnp.integer):
        if name.endswith("positions"):
            return jnp.broadcast_to(jnp.arange(shape[-1], dtype=dtype), shape)
        high = next((v for k, v in bounds.items() if name.endswith(k)), 1)
        return jax.random.randint(key, shape, 0, high).astype(dtype)
    if name.endswith("boxes"):  # a quarter of the image, in pixels
        box = jnp.asarray([0.25, 0.25, 0.75, 0.75], dtype) * bounds["image_size"]
        return jnp.broadcast_to(box, shape)
    if name.endswith("scale"):
        return jnp.ones(shape, dtype)
    if name.endswith("bias"):
        return jnp.zeros(shape, dtype)
    if name.endswith("old_log_probs"):
        return -jnp.abs(jax.random.normal(key, shape, dtype))
    if name.endswith("labels"):
        return (jax.random.uniform(key, shape) < 0.1).astype(dtype)
    return (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def materialize(tree: Any, bounds: dict[str, int], seed: int = 0) -> Any:
    """Random arrays for every ``jax.ShapeDtypeStruct`` of ``tree`` (others kept), made on the
    device by one jitted program, by what each leaf's path names: norm scales one, biases
    zero, weights N(0, 0.02), token ids below their vocabulary, positions counting up, masks
    true, boxes a quarter of the image."""
    import jax

    found = jax.tree_util.tree_flatten_with_path(tree)[0]
    wanted = [
        (jax.tree_util.keystr(path).replace("'", "").replace("]", "").lower(), leaf)
        for path, leaf in found
        if isinstance(leaf, jax.ShapeDtypeStruct)
    ]

    def make(key):
        keys = jax.random.split(key, max(len(wanted), 1))
        return [
            _random_leaf(k, name, tuple(leaf.shape), leaf.dtype, bounds)
            for k, (name, leaf) in zip(keys, wanted, strict=True)
        ]

    made = iter(jax.jit(make)(jax.random.key(seed)))
    return jax.tree.map(
        lambda leaf: next(made) if isinstance(leaf, jax.ShapeDtypeStruct) else leaf, tree
    )


def predicted_seconds(setting: Any, b: int, tflops: float | None, gbps: float | None) -> dict:
    """docs/SCALING.md's time model of each program at ``b`` queries on one chip (the formulas
    of scripts/pod_projection.py, from this setting's shapes: prompt bucket, new tokens, the
    scorer it names), at its stated efficiencies."""
    from pod_projection import SETTING

    from jaxrank.perf.throughput import transformer_layer_flops, vit_forward_flops

    lm, v, g, new = setting.policy.lm, setting.policy.vision, setting.group, setting.new_tokens
    prompt = setting.prompt_length

    def lm_flops(tokens: float, context: float, logits: float) -> float:
        layer = transformer_layer_flops(
            tokens, lm.heads * lm.dim_per_head, lm.mlp_dim,
            kv_width=lm.kv_heads * lm.dim_per_head, gated=True, context=context,
        )  # fmt: skip
        return lm.depth * layer + 2 * logits * lm.width * lm.vocab_size

    patches = setting.patches
    vision = 2 * patches * v.patch_dim * v.width + v.depth * transformer_layer_flops(
        patches, v.width, v.mlp_dim, gated=v.variant == "qwen2_5_vl"
    )
    completions = lm_flops(g * new, prompt + new / 2, g * new)
    sv = setting.scorer.vision
    scorer = vit_forward_flops(
        sv.image_size, sv.patch_size, sv.width, sv.depth, sv.mlp_dim,
        embed_dim=setting.scorer.embed_dim,
    )  # fmt: skip
    flops = {
        "sampler": b * (vision + lm_flops(prompt, prompt, 1) + completions),
        "judge": b * (g + 1) * scorer,
        "update": b * (2 * vision + 3 * (lm_flops(prompt, prompt, 0) + completions)),
    }
    out: dict[str, Any] = {"model_flops": flops, "assumptions": {}}
    if not tflops:
        return out
    rate = tflops * 1e12 * SETTING["mfu"]
    seconds = {k: f / rate for k, f in flops.items()}
    out["assumptions"] = {"mfu": SETTING["mfu"], "hbm_efficiency": SETTING["hbm_efficiency"]}
    if gbps:
        weights = 2 * (lm.depth * (lm.width * (lm.width + 2 * lm.kv_heads * lm.dim_per_head)))
        weights += 2 * (lm.depth * (lm.width * lm.width + 3 * lm.width * lm.mlp_dim))
        weights += 2 * lm.vocab_size * lm.width
        cache = b * g * (prompt + new / 2) * lm.depth * 2 * lm.kv_heads * lm.dim_per_head * 2
        stream = new * (weights + cache) / (gbps * 1e9 * SETTING["hbm_efficiency"])
        seconds["sampler"] = max(seconds["sampler"], stream)
    out["seconds"] = seconds
    out["step_s"] = sum(seconds.values())
    out["mfu"] = sum(flops.values()) / out["step_s"] / (tflops * 1e12)
    return out


def rgrpo_step(tiny: bool, out: Record) -> None:
    """Region-R1's step at its real size on this device (module docstring)."""
    import jax

    from jaxrank import parallel
    from jaxrank.configs import load_config_file
    from jaxrank.perf import flop_count, planner
    from jaxrank.perf import plan as perf_plan
    from jaxrank.region_r1.plan_programs import Programs
    from jaxrank.region_r1.plan_setting import read_setting
    from jaxrank.train.step import TrainState

    cfg = load_config_file(EVQA)
    if tiny:
        cfg.policy.image_size = cfg.data.image_size = 56  # 4 x 4 patches of 14 px
        cfg.data.pool_size = 4
    cfg.train.batch_size = PAPER_QUERIES_PER_DEVICE
    mesh = parallel.mesh_from_config(cfg.mesh)
    if len(mesh.devices.flat) != 1:
        raise RuntimeError(f"the check is for one chip; found {len(mesh.devices.flat)} devices")
    setting = read_setting(cfg)
    if tiny:
        setting = _tiny_setting(setting)
    kind = jax.devices()[0].device_kind
    tflops, gbps = chip_peaks(kind)
    memory = device_memory()
    # 90% of what the runtime offers (the rest for XLA's own workspace); a CPU: an 80 GB chip
    capacity = 0.9 * (memory["bytes_limit"] or 80 * 2**30)

    started = time.perf_counter()
    programs = Programs(cfg, setting, mesh)
    step = programs.stages[0]
    resident = planner.resident_bytes(programs, step.name)
    fits = lambda n: planner.analytic_stage_peak(programs, step, n, resident, 1)
    largest = perf_plan.largest_batch(fits, capacity, limit=64)
    b = min(PAPER_QUERIES_PER_DEVICE, largest) or 1
    out.set(
        setting=programs.summary(),
        paper_queries_per_device=PAPER_QUERIES_PER_DEVICE,
        queries_per_device=b,
        device_memory_bytes=capacity,
        planner={
            "largest_queries_per_device": largest,
            "resident_bytes": resident,
            "step_peak_bytes": fits(b),
            "paper_step_peak_bytes": fits(PAPER_QUERIES_PER_DEVICE),
            "programs_peak_bytes": {
                name: programs.estimate(name, b, 1).peak for name in step.programs
            },
            "time_model": predicted_seconds(setting, b, tflops, gbps),
            "build_s": time.perf_counter() - started,
        },
    )

    # The planner's abstract trees made concrete: random weights, the real train state.
    bounds = {
        "tokens": setting.policy.lm.vocab_size,
        "completion": setting.policy.lm.vocab_size,
        "pool_ids": max(setting.kb_rows, 1),
        "image_size": setting.image_size,
    }
    programs.base = materialize(programs.base, bounds, 1)
    programs.adapters = materialize(programs.adapters, bounds, 2)
    programs.scorer = materialize(programs.scorer, bounds, 3)
    programs.kb = materialize(programs.kb, bounds, 4)
    create = jax.jit(lambda p: TrainState.create(p, programs.optimizer, 0))
    programs.state = create(programs.adapters)
    repeats = 2 if tiny else 3
    results: dict[str, Any] = {}
    for name in ("judge", "sampler", "update"):  # cheapest first: a timeout keeps the rest
        fn, args = programs.program(name, b)
        args = materialize(args, bounds | {"decision": 2}, 10)
        start = time.perf_counter()
        with jax.set_mesh(mesh):  # the judge gathers the pools from the mesh's KB shards
            compiled = fn.lower(*args).compile()
        row: dict[str, Any] = {"compile_s": time.perf_counter() - start}
        with contextlib.suppress(Exception):  # not every backend reports memory
            m = compiled.memory_analysis()
            row["xla_peak_bytes"] = (
                m.argument_size_in_bytes
                + m.output_size_in_bytes
                - m.alias_size_in_bytes
                + m.temp_size_in_bytes
            )
        trips = setting.new_tokens if name == "sampler" else 1
        with jax.set_mesh(mesh):
            row["matmul_flops"] = flop_count.matmul_flops(fn, *args, while_trips=trips)
        if name == "update":  # the state is donated: each call takes the last call's
            holder = {"state": args[0]}

            def run(holder=holder, args=args, compiled=compiled):
                holder["state"] = jax.block_until_ready(compiled(holder["state"], *args[1:]))[0]
        else:

            def run(args=args, compiled=compiled):
                jax.block_until_ready(compiled(*args))

        row["seconds"], row["all_seconds"] = median_seconds(run, repeats)
        results[name] = row
        out.set(programs=results, memory=device_memory())
    step_s = sum(r["seconds"] for r in results.values())
    flops = sum(r["matmul_flops"] for r in results.values())
    out.set(
        step_s=step_s,
        compile_s=sum(r["compile_s"] for r in results.values()),
        matmul_flops=flops,
        tflops_per_s=flops / step_s / 1e12,
        mfu=flops / step_s / (tflops * 1e12) if tflops else None,
        memory=device_memory(),
        queries_per_s=b / step_s,
    )


# ------------------------------------------------------------------------------------------
# Part 2: exact top-k


def search_topk(tiny: bool, out: Record) -> None:
    """jaxrank's sharded_search vs torch matmul + topk on the same rows (module docstring)."""
    import jax
    import jax.numpy as jnp
    import torch

    from jaxrank import parallel
    from jaxrank.search import layout
    from jaxrank.search.index import DEFAULT_BLOCK_ROWS
    from jaxrank.search.topk import sharded_search

    n, dim, queries, k = (5_000, 64, 16, 10) if tiny else (10_000_000, 768, 1024, 20)
    block_rows = 1024 if tiny else DEFAULT_BLOCK_ROWS
    checked = queries if tiny else 16
    _, device = accelerator()
    mesh = parallel.make_mesh()
    plan = layout.plan_layout(n, 1, block_rows)
    make = jax.jit(
        lambda key: (
            jax.random.normal(key, (plan.capacity, dim), jnp.bfloat16),
            jax.random.normal(jax.random.fold_in(key, 1), (queries, dim), jnp.bfloat16),
        )
    )
    vectors, q = jax.block_until_ready(make(jax.random.key(0)))
    bias, count = jnp.zeros((plan.capacity,), jnp.float32), jnp.asarray(n, jnp.int32)
    out.set(rows=n, dim=dim, queries=queries, k=k, dtype="bfloat16", block=plan.block)
    out.set(torch_device=str(device))

    def ours():
        return jax.block_until_ready(
            sharded_search(q, vectors, bias, count, mesh=mesh, k=k, metric="ip", block=plan.block)
        )

    start = time.perf_counter()
    _, our_ids = ours()
    out.set(jaxrank_first_call_s=time.perf_counter() - start)
    repeats = 3 if tiny else 5
    our_s, _ = median_seconds(ours, repeats)
    out.set(jaxrank_s=our_s, jaxrank_queries_per_s=queries / our_s)

    rows = jax_to_torch(vectors, device)[:n]
    tq = jax_to_torch(q, device)

    def theirs():
        with torch.inference_mode():
            result = torch.topk(tq @ rows.T, k, dim=1)
        torch_sync(device)
        return result

    their_ids = theirs().indices
    their_s, _ = median_seconds(theirs, repeats)
    out.set(torch_s=their_s, torch_queries_per_s=queries / their_s, speedup=their_s / our_s)

    # A float32 reference for the first queries: rows in chunks, exact products.
    with torch.inference_mode():
        ref_q = tq[:checked].float()
        best_s = torch.full((checked, 0), -torch.inf, device=device)
        best_i = torch.zeros((checked, 0), dtype=torch.int64, device=device)
        for begin in range(0, n, 1_000_000):
            scores = ref_q @ rows[begin : begin + 1_000_000].float().T
            s, i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            best_s, pick = torch.topk(torch.cat([best_s, s], 1), k, dim=1)
            best_i = torch.gather(torch.cat([best_i, i + begin], 1), 1, pick)
    ref = best_i.cpu().numpy()
    ours_checked = np.asarray(our_ids)[:checked]
    theirs_checked = their_ids[:checked].cpu().numpy()
    recall = lambda ids: float(
        np.mean([len(set(a) & set(r)) / k for a, r in zip(ids, ref, strict=True)])
    )
    bytes_scanned = n * dim * 2
    tflops, gbps = chip_peaks(jax.devices()[0].device_kind)
    roofline = bytes_scanned / (gbps * 1e9) if gbps else None
    if tflops:
        roofline = max(roofline or 0.0, 2 * queries * n * dim / (tflops * 1e12))
    out.set(
        checked_queries=checked,
        jaxrank_ids_equal_reference=float(np.mean(ours_checked == ref)),
        torch_ids_equal_reference=float(np.mean(theirs_checked == ref)),
        jaxrank_recall_of_reference=recall(ours_checked),
        torch_recall_of_reference=recall(theirs_checked),
        roofline_s=roofline,
        jaxrank_fraction_of_roofline=roofline / our_s if roofline else None,
        memory=device_memory(),
    )


# ------------------------------------------------------------------------------------------
# Part 3: the CLIP image tower

CLIP_L14_336 = {  # openai/clip-vit-large-patch14-336's vision_config (its config.json)
    "image_size": 336,
    "patch_size": 14,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
CLIP_TINY = CLIP_L14_336 | {
    "image_size": 28,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def clip_image(tiny: bool, out: Record) -> None:
    """jaxrank's CLIP image tower vs transformers' CLIPVisionModel (sdpa), same weights."""
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from jaxrank.models.hf import load_pretrained

    sizes = CLIP_TINY if tiny else CLIP_L14_336
    batch = 8 if tiny else 64
    dtype = "float32" if tiny else "bfloat16"
    _, device = accelerator()
    torch.manual_seed(0)
    config = CLIPVisionConfig(**sizes, attn_implementation="sdpa")  # recorded below
    reference = CLIPVisionModel(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        model = load_pretrained(folder, dtype=dtype).model
    reference = reference.to(device=device, dtype=getattr(torch, dtype))
    out.set(
        model=sizes,
        batch=batch,
        dtype=dtype,
        torch_attention=reference.config._attn_implementation,
        torch_device=str(device),
        parameters=sum(p.numel() for p in reference.parameters()),
    )
    side = sizes["image_size"]
    pixels = np.random.default_rng(0).standard_normal((batch, side, side, 3), dtype=np.float32)
    graphdef, state = nnx.split(model.tower)
    x = jnp.asarray(pixels, dtype)
    start = time.perf_counter()
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)).lower(state, x).compile()
    out.set(jaxrank_compile_s=time.perf_counter() - start)
    nchw = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    nchw = nchw.to(device=device, dtype=getattr(torch, dtype))

    def theirs():
        with torch.inference_mode():
            result = reference(pixel_values=nchw).pooler_output
        torch_sync(device)
        return result

    ours = lambda: jax.block_until_ready(forward(state, x))
    pooled = np.asarray(ours()[0], np.float32)
    their_pooled = theirs().float().cpu().numpy()
    out.set(
        pooled_max_abs_diff=float(np.max(np.abs(pooled - their_pooled))),
        pooled_abs_max=float(np.max(np.abs(their_pooled))),
    )
    repeats = 3 if tiny else 10
    our_s, _ = median_seconds(ours, repeats)
    their_s, _ = median_seconds(theirs, repeats)
    out.set(
        jaxrank_images_per_s=batch / our_s,
        torch_images_per_s=batch / their_s,
        speedup=their_s / our_s,
        memory=device_memory(),
    )


# ------------------------------------------------------------------------------------------
# Part 4: decoding


def qwen_lm_config(tiny: bool) -> dict[str, Any]:
    """Qwen2.5-VL-3B's language model as a ``Qwen2Config`` (published.CONFIG_JSON's values),
    or a toy one of the same layout."""
    from jaxrank.models.hf.published import CONFIG_JSON, QWEN2_5_VL_3B

    full = CONFIG_JSON[QWEN2_5_VL_3B]
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
    keys += ("num_key_value_heads", "rms_norm_eps", "tie_word_embeddings", "vocab_size")
    config = {k: full[k] for k in keys} | {"max_position_embeddings": 4096}
    if tiny:
        config |= {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": 256,
        }
    theta = full["rope_theta"]  # transformers < 5 reads rope_theta, 5 rope_parameters
    rope = {"rope_type": "default", "rope_theta": theta}
    return config | {"rope_theta": theta, "rope_parameters": rope}


def qwen_decode(tiny: bool, out: Record) -> None:
    """jaxrank's sampler vs transformers' generate on the same weights (module docstring)."""
    import torch
    from bench_mllm import JAXRANK, TORCH, jaxrank_methods, summarise
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from jaxrank.models.hf.qwen2 import load_causal_lm

    config = qwen_lm_config(tiny)
    batches, prompt, new = ((2, 4), 8, 6) if tiny else ((8, 64), 128, 64)
    dtype = "float32" if tiny else "bfloat16"
    _, device = accelerator()
    torch.manual_seed(0)
    with torch.device(device):
        reference = Qwen2ForCausalLM(Qwen2Config(**config))
    reference = reference.to(getattr(torch, dtype)).eval()
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        model = load_causal_lm(folder, dtype=dtype).model
    out.set(model=config, dtype=dtype, prompt=prompt, new=new, torch_device=str(device))
    results = {}
    for batch in batches:
        tokens = (
            np.random.default_rng(batch)
            .integers(1, config["vocab_size"], (batch, prompt))
            .astype(np.int32)
        )
        ours, compile_s, our_tokens = jaxrank_methods(model, tokens, new, dtype)
        ids = torch.from_numpy(tokens.astype(np.int64)).to(device)

        def prefill(ids=ids):
            with torch.inference_mode():
                reference(input_ids=ids, use_cache=True)
            torch_sync(device)

        def generate(ids=ids):
            with torch.inference_mode():
                result = reference.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                    min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0,
                )  # fmt: skip
            torch_sync(device)
            return result

        their_tokens = generate()[:, prompt:].cpu().numpy()
        same = our_tokens == their_tokens
        repeats = 2
        times = {}
        theirs = {"prefill": prefill, "generate": generate}
        for method, methods in ((JAXRANK, ours), (TORCH, theirs)):
            for kind, fn in methods.items():
                times[(method, kind)] = median_seconds(fn, repeats)[1]
        rows = summarise(times, batch, prompt, new, compile_s)
        results[str(batch)] = {
            "tokens_equal": float(same.mean()),
            "first_difference": [int(np.argmin(r)) if not r.all() else new for r in same],
            "jaxrank": rows[0],
            "transformers": rows[1],
        }
        out.set(results=results, memory=device_memory())


PARTS: dict[str, tuple[Callable[[bool, Record], None], float]] = {
    # name: (function, seconds allowed on the accelerator; --tiny scales every budget)
    "environment": (environment, 20),
    "rgrpo_step": (rgrpo_step, 220),
    "search_topk": (search_topk, 50),
    "clip_image": (clip_image, 50),
    "qwen_decode": (qwen_decode, 130),
}
# Seconds per part in --tiny mode: no chip's time to bound there, only a stuck part (about a
# minute of CPU time each uncontended, several on a shared machine).
TINY_BUDGET = 600


# ------------------------------------------------------------------------------------------
# The driver: one process per part


def part_environment(tiny: bool) -> dict[str, str]:
    """A part's process: no GPU memory pre-allocated (torch shares the chip), one device (a
    test session's virtual CPU devices are not inherited)."""
    env = dict(os.environ)
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "force_host_platform_device_count" not in f)
    if tiny:  # and XLA:CPU's quick compilation (the tests' FAST_COMPILE): tiny is about wiring
        env |= {"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"
    return env


def run_part(name: str, tiny: bool, budget: float) -> dict[str, Any]:
    """``name`` in a fresh process under ``budget`` seconds; its record, with its status."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "part.json"
        command = [sys.executable, __file__, "--part", name, "--part-out", str(path)]
        command += ["--tiny"] if tiny else []
        start = time.perf_counter()
        status, tail = "ok", ""
        try:
            done = subprocess.run(
                command, env=part_environment(tiny), capture_output=True, text=True,
                timeout=budget, check=False,
            )  # fmt: skip
            if done.returncode:
                status, tail = "error", (done.stderr or done.stdout)[-3000:]
        except subprocess.TimeoutExpired as e:
            status = "timeout"
            tail = f"stopped at its {budget:.0f} s budget\n" + str(e.stderr or "")[-2000:]
        record = json.loads(path.read_text()) if path.is_file() else {}
    record["status"], record["part_wall_s"] = status, time.perf_counter() - start
    if tail:
        record.setdefault("error", tail)
    return record


def child(name: str, tiny: bool, path: Path) -> None:
    out = Record(path)
    try:
        PARTS[name][0](tiny, out)
    except Exception as e:  # recorded; the driver reports the part failed
        out.set(error="".join(traceback.format_exception(e))[-4000:])
        raise


def _cell(x: Any, fmt: str = ".3g") -> str:
    return "-" if x is None else (format(x, fmt) if isinstance(x, (int, float)) else str(x))


def table(report: dict[str, Any]) -> str:
    """A markdown summary: each part's headline figures beside what they are compared to."""
    p = report["parts"]
    env, step = p.get("environment", {}), p.get("rgrpo_step", {})
    gib = lambda b: None if b is None else b / 2**30
    lines = [f"device: {env.get('device_kind', '?')} ({env.get('backend', '?')}), "
             f"tiny={report['tiny']}, total {report['wall_s']:.0f} s", "",
             "| part | status | measured | compared to |", "|---|---|---|---|"]  # fmt: skip
    planner = step.get("planner", {})
    model = planner.get("time_model", {})
    peak = step.get("memory", {}).get("peak_bytes")
    lines.append(
        f"| rgrpo_step | {step.get('status')} | {_cell(step.get('queries_per_device'))} "
        f"queries/device: step {_cell(step.get('step_s'))} s, compile "
        f"{_cell(step.get('compile_s'))} s, peak {_cell(gib(peak))} GiB, MFU "
        f"{_cell(step.get('mfu'))} | planner: step {_cell(model.get('step_s'))} s, "
        f"peak {_cell(gib(planner.get('step_peak_bytes')))} GiB, MFU {_cell(model.get('mfu'))} |"
    )
    for name, program in step.get("programs", {}).items():
        lines.append(
            f"| - {name} | | {_cell(program['seconds'])} s, compile {_cell(program['compile_s'])}"
            f" s, XLA peak {_cell(gib(program.get('xla_peak_bytes')))} GiB | planner "
            f"{_cell(model.get('seconds', {}).get(name))} s, "
            f"{_cell(gib(planner.get('programs_peak_bytes', {}).get(name)))} GiB |"
        )
    s = p.get("search_topk", {})
    lines.append(
        f"| search_topk | {s.get('status')} | jaxrank {_cell(s.get('jaxrank_queries_per_s'))} "
        f"queries/s, ids = float32 reference {_cell(s.get('jaxrank_ids_equal_reference'))} | "
        f"torch {_cell(s.get('torch_queries_per_s'))} queries/s, recall "
        f"{_cell(s.get('torch_recall_of_reference'))} |"
    )
    c = p.get("clip_image", {})
    lines.append(
        f"| clip_image | {c.get('status')} | jaxrank {_cell(c.get('jaxrank_images_per_s'))} "
        f"images/s | torch sdpa {_cell(c.get('torch_images_per_s'))} images/s (pooled diff "
        f"{_cell(c.get('pooled_max_abs_diff'))}) |"
    )
    d = p.get("qwen_decode", {})
    for batch, r in d.get("results", {}).items():
        lines.append(
            f"| qwen_decode b{batch} | {d.get('status')} | jaxrank "
            f"{_cell(r['jaxrank']['decode_tokens_per_s'])} tokens/s | generate "
            f"{_cell(r['transformers']['decode_tokens_per_s'])} tokens/s (tokens equal "
            f"{_cell(r['tokens_equal'])}) |"
        )
    if not d.get("results"):
        lines.append(f"| qwen_decode | {d.get('status')} | - | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/bench/device_check.json")
    parser.add_argument("--tiny", action="store_true", help="toy widths on the CPU (~1 min)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="x every part's budget")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part here
    parser.add_argument("--part-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        child(args.part, args.tiny, Path(args.part_out))
        return 0
    names = args.parts.split(",")
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        print(
            f"jaxrank: error: --parts: unknown {unknown}; expected some of {list(PARTS)}",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    report: dict[str, Any] = {"command": " ".join([sys.argv[0], *(argv or sys.argv[1:])])}
    report["tiny"], report["parts"] = args.tiny, {}
    for name in names:
        budget = (TINY_BUDGET if args.tiny else PARTS[name][1]) * args.budget_scale
        print(f"[{name}] up to {budget:.0f} s ...", flush=True)
        report["parts"][name] = run_part(name, args.tiny, budget)
        print(f"[{name}] {report['parts'][name]['status']}", flush=True)
    report["wall_s"] = time.perf_counter() - start
    report["table"] = table(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=_jsonable) + "\n")
    print(report["table"])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
