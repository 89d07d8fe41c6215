"""Projected r-GRPO step time of Region-R1 at the paper's scale on TPU v5e-64 and v5p-128, and
of the first-stage search over E-VQA's 2M-page knowledge base, from the formulas of
docs/SCALING.md and the assumptions named below (every one is in the JSON it writes).

Two forms of the MLLM step are projected (``STEPS``): the host-driven one the recipe ran until
issue 29 (a second prefill and decoding pass of all B x G rows whenever a group is flipped,
which balanced groups make every step early in training; the scorer embeds all G crops and the
full image) and the compiled one (one decoding pass of B x (G + 2) rows, the full image's
ranking from the first stage, only the REGION actions' crops embedded).

    .venv/bin/python scripts/pod_projection.py --out docs/bench/pod_projection.json

Nothing here runs a model: it is arithmetic over the model shapes (``jaxrank.perf.throughput``),
the chips' spec sheets and stated efficiencies. The scaling study (scripts/scaling_study.py)
checks the same formulas' structure against compiled programs on virtual devices.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxrank.perf.throughput import transformer_layer_flops, vit_forward_flops

# Chips (per chip; Google Cloud TPU system architecture pages). ICI is the usable one-way
# bandwidth a ring collective gets, assumed to be half the bidirectional figure.
CHIPS = {
    "v5e-64": {"chips": 64, "tflops": 197.0, "hbm_gb": 16, "hbm_gbps": 819, "ici_gbps": 200},
    # v5p slices are named by TensorCores: v5p-128 is 64 chips of 2 cores.
    "v5p-128": {"chips": 64, "tflops": 459.0, "hbm_gb": 95, "hbm_gbps": 2765, "ici_gbps": 600},
}

# The paper's setting (PAPERS.md section 1) and what this projection assumes beyond it.
SETTING = {
    "queries_per_chip": 4,  # the paper's per-device batch
    "group": 8,  # G
    "pool": 20,  # K
    "max_new_tokens": 256,  # the cap; a static-shape decode loop runs to it in the worst case
    "policy_image_side": 448,  # assumed query resize: 1024 patches of 14 px, 256 LM tokens
    "prompt_text_tokens": 150,  # assumed: system prompt + question
    "lora_rank": 8,
    "kb_pages": 2_000_000,
    "kb_dim": 1280,  # EVA-CLIP-8B embedding width
    "eval_queries": 5_800,  # E-VQA single-hop test
    "search_k": 20,
    "search_query_batch": 1024,
    "mfu": 0.4,  # assumed for the compute-bound matmul parts
    "hbm_efficiency": 0.8,  # assumed fraction of HBM bandwidth a decode step streams at
    # assumed share of REGION actions with a valid box (the crops the compiled step embeds);
    # balanced groups hold at least one of each decision
    "region_fraction": 0.5,
}

# What each form of the step runs per query: decoding passes (each with its own prefill of
# the LM prompt), rows decoded per pass, scorer images.
STEPS = {
    "host_driven": {"decoding_passes": 2, "spare_rows": 0, "scorer_full_image": True},
    "compiled": {"decoding_passes": 1, "spare_rows": 2, "scorer_full_image": False},
}

# Qwen2.5-VL-3B-Instruct (config.json): LM 36 x (2048, MLP 11008 SwiGLU, 2 KV heads of 128),
# vocabulary 151936 (tied); vision 32 x (1280, MLP 3420 SwiGLU), patch 14, 2x2 merge to 2048.
LM = {"layers": 36, "width": 2048, "mlp": 11008, "kv_width": 256, "vocab": 151936}
VISION = {"layers": 32, "width": 1280, "mlp": 3420, "patch": 14, "merge": 2, "out": 2048}
# EVA-CLIP-8B vision tower (docs/eva_clip.md): 32 x (4096, MLP 20480), 224 px, patch 14.
SCORER = {"image": 224, "patch": 14, "width": 4096, "depth": 32, "mlp": 20480, "embed": 1280}


def lm_flops(tokens: float, context: float, logits: float) -> float:
    """Forward of the LM over ``tokens`` new tokens with ``context`` mean keys each, and the
    vocabulary head on ``logits`` positions."""
    layer = transformer_layer_flops(
        tokens, LM["width"], LM["mlp"], kv_width=LM["kv_width"], gated=True, context=context
    )
    return LM["layers"] * layer + 2 * logits * LM["width"] * LM["vocab"]


def lm_params() -> int:
    w, f, kv = LM["width"], LM["mlp"], LM["kv_width"]
    return LM["layers"] * (w * (w + 2 * kv) + w * w + 3 * w * f) + LM["vocab"] * w


def lora_params(rank: int) -> int:
    """LoRA on every linear layer of the LM (q, k, v, o, gate, up, down)."""
    w, f, kv = LM["width"], LM["mlp"], LM["kv_width"]
    shapes = [(w, w), (w, kv), (w, kv), (w, w), (w, f), (w, f), (f, w)]
    return LM["layers"] * rank * sum(a + b for a, b in shapes)


def policy_vision_flops(side: int) -> float:
    patches = (side // VISION["patch"]) ** 2
    w, merged = VISION["width"], VISION["merge"] ** 2
    embed = 2 * patches * (2 * VISION["patch"] ** 2 * 3) * w  # temporal patch of 2 frames
    layers = VISION["layers"] * transformer_layer_flops(patches, w, VISION["mlp"], gated=True)
    merger = 2 * (patches // merged) * (merged * w) * (merged * w + VISION["out"])
    return embed + layers + merger


def step_projection(chip: dict, s: dict, form: dict) -> dict:
    """Seconds per r-GRPO step on one chip (every chip does the same: data parallel), for one
    of ``STEPS``."""
    b, g, new = s["queries_per_chip"], s["group"], s["max_new_tokens"]
    passes, rows = form["decoding_passes"], g + form["spare_rows"]
    # the host-driven step crops every action and re-embeds the full image
    scorer_images = g + 1 if form["scorer_full_image"] else g * s["region_fraction"]
    prompt = (s["policy_image_side"] // VISION["patch"]) ** 2 // VISION["merge"] ** 2
    prompt += s["prompt_text_tokens"]
    vision = policy_vision_flops(s["policy_image_side"])
    completions = lm_flops(g * new, prompt + new / 2, g * new)  # teacher-forced, shared prompt
    decoded = lm_flops(rows * new, prompt + new / 2, rows * new)
    flops = {
        "rollout_prefill": passes * b * (vision + lm_flops(prompt, prompt, 1)),
        "rollout_decode": passes * b * decoded,
        "scorer": b
        * scorer_images
        * vit_forward_flops(
            SCORER["image"],
            SCORER["patch"],
            SCORER["width"],
            SCORER["depth"],
            SCORER["mlp"],
            embed_dim=SCORER["embed"],
        ),
        # policy forward + backward (activation gradients only: LoRA weights are tiny), and the
        # reference (adapters off) forward; both run the vision tower and the prompt once.
        "loss_policy_and_reference": b
        * (2 * vision + 3 * (lm_flops(prompt, prompt, 0) + completions)),
    }
    rate = chip["tflops"] * 1e12 * s["mfu"]
    seconds = {k: v / rate for k, v in flops.items()}
    # Decoding is bound by streaming the weights and the KV cache once per generated token.
    kv_bytes = b * rows * (prompt + new / 2) * LM["layers"] * 2 * LM["kv_width"] * 2
    per_token = (2 * lm_params() + kv_bytes) / (chip["hbm_gbps"] * 1e9 * s["hbm_efficiency"])
    seconds["rollout_decode"] = max(seconds["rollout_decode"], passes * new * per_token)
    n = chip["chips"]
    grad_bytes = 4 * lora_params(s["lora_rank"])
    seconds["gradient_all_reduce"] = 2 * (n - 1) / n * grad_bytes / (chip["ici_gbps"] * 1e9)
    w = SCORER["width"]
    scorer_bytes = 2 * SCORER["depth"] * (4 * w * w + 2 * w * SCORER["mlp"])  # bf16 layers
    fsdp = chip["hbm_gb"] * 1e9 < scorer_bytes + 2 * lm_params() + 2e9  # 2 GB for activations
    if fsdp:  # the scorer's weights gathered layer by layer from 8 chips' shards, once a step
        seconds["scorer_fsdp_all_gather"] = 7 / 8 * scorer_bytes / (chip["ici_gbps"] * 1e9)
    total = sum(seconds.values())
    return {
        "tflop_per_chip": {k: v / 1e12 for k, v in flops.items()},
        "seconds": seconds,
        "step_s": total,
        "global_queries": b * n,
        "queries_per_s": b * n / total,
        "scorer_sharded_fsdp_x8": fsdp,
        "lora_params": lora_params(s["lora_rank"]),
        "mfu_of_step": sum(flops.values()) / total / (chip["tflops"] * 1e12),
    }


def search_projection(chip: dict, s: dict) -> dict:
    """The first-stage exact search of every evaluation query over the 2M-page knowledge base,
    rows sharded over all chips, with jaxrank's gather-then-merge of per-chip top-k."""
    n, q, k = chip["chips"], s["search_query_batch"], s["search_k"]
    rows = s["kb_pages"] / n
    batches = -(-s["eval_queries"] // q)
    compute = 2 * q * rows * s["kb_dim"] / (chip["tflops"] * 1e12 * s["mfu"])
    stream = rows * s["kb_dim"] * 2 / (chip["hbm_gbps"] * 1e9 * s["hbm_efficiency"])
    gathered = q * k * n * (4 + 4)  # float32 scores + int32 ids of every chip
    gather = (n - 1) / n * gathered / (chip["ici_gbps"] * 1e9)
    per_batch = max(compute, stream) + gather
    return {
        "kb_bytes_per_chip": rows * s["kb_dim"] * 2,
        "per_batch_s": {"matmul": compute, "hbm_stream": stream, "all_gather": gather},
        "all_gather_bytes": gathered,
        "total_s": batches * per_batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/bench/pod_projection.json")
    args = parser.parse_args()
    out = {
        "setting": SETTING,
        "chips": CHIPS,
        "models": {"policy_lm": LM, "policy_vision": VISION, "scorer_vision": SCORER},
        "steps": STEPS,
        "step": {
            form: {
                name: step_projection(chip, SETTING, STEPS[form]) for name, chip in CHIPS.items()
            }
            for form in STEPS
        },
        "search": {name: search_projection(chip, SETTING) for name, chip in CHIPS.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    parts = list(out["step"]["host_driven"]["v5e-64"]["seconds"])
    print("| step | slice | " + " | ".join(parts) + " | step s | queries/s | step MFU |")
    print("|---|---|" + "---:|" * (len(parts) + 3))
    for form, slices in out["step"].items():
        for name, p in slices.items():
            cells = " | ".join(f"{p['seconds'].get(k, 0.0):.3f}" for k in parts)
            print(
                f"| {form} | {name} | {cells} | {p['step_s']:.2f} | {p['queries_per_s']:.0f} | "
                f"{p['mfu_of_step']:.2f} |"
            )
    for name in CHIPS:
        old, new = (out["step"][form][name]["step_s"] for form in ("host_driven", "compiled"))
        print(
            f"{name}: compiled / host-driven step time {new / old:.3f} ({1 - new / old:.0%} less)"
        )
    print("\n| slice | matmul ms | HBM ms | all-gather ms | 5.8K queries s |")
    print("|---|---:|---:|---:|---:|")
    for name, p in out["search"].items():
        t = p["per_batch_s"]
        print(
            f"| {name} | {1e3 * t['matmul']:.2f} | {1e3 * t['hbm_stream']:.2f} | "
            f"{1e3 * t['all_gather']:.2f} | {p['total_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
