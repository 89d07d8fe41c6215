"""Benchmark one GRPO training step on CPU: jaxrank's token-level GRPO (jitted sampler, host
reward, jitted update) against TRL's ``GRPOTrainer`` (PyTorch), same tiny Qwen2-VL checkpoint.

    .venv/bin/python scripts/bench_grpo.py --out docs/bench/grpo.json
    .venv/bin/python scripts/bench_grpo.py --quick --out /tmp/grpo.json   # smoke run

Both sides train the random Qwen2-VL of tests/helpers/qwen_checkpoints.py (``tiny_vlm``, float32)
through the same LoRA (rank 8, alpha 32, every linear but ``lm_head``, no dropout) on the same
``--prompts`` image+text chat prompts (one ``--image`` x ``--image`` photo each, identical token
ids), with ``--group`` samples per prompt, ``--new`` completion tokens, temperature 1, no
top-k/top-p, KL weight ``--beta`` (so each step also scores the reference: the adapters
switched off), GRPO advantages (group std), per-sequence token means, one update per batch
(AdamW, grad-norm clip 1) and the same Python reward of the decoded text (``reward``).

Every completion has exactly ``--new`` tokens on both sides: jaxrank samples without stop
tokens, TRL's generation gets ``min_new_tokens = --new`` (which masks end-of-turn, the one stop
token). The mean completion lengths are measured and reported.

The two alternate in one process: a ``TrainerCallback`` runs one jaxrank step after each TRL
optimizer step, so both see the same machine load. A TRL step is the wall time from the end of
the previous jaxrank step to TRL's ``on_step_end`` (its data loading, pre-processing, sampling,
reference log-probs, reward, loss, backward and optimizer); a jaxrank step is host
pre-processing of the prompts, the jitted sampler, decoding and reward, and the jitted update
(advantages, policy and reference log-probs, gradient, AdamW). The first ``--warmup`` steps of
each are dropped; jaxrank's two programs are compiled ahead (compile time reported apart).
Writes JSON and prints a table; needs the test extras (torch, peft) and the bench extra (trl).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from bench_machine import contention as measured_contention
from bench_machine import cpu_seconds, machine_info
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))

# The comparison's other side: say which extras to install instead of a ModuleNotFoundError.
_MISSING = [m for m in ("trl", "torch", "peft") if importlib.util.find_spec(m) is None]
if _MISSING and __name__ == "__main__":
    sys.exit(
        f"bench_grpo.py: error: TRL's side of the comparison needs {', '.join(_MISSING)}, not "
        "installed; install the extras with: pip install -e .[test,bench]"
    )

QUESTIONS = (
    "what is in the picture?",
    "crop the region that answers the question.",
    "where is the object?",
    "zoom in on the text, if there is any.",
)
LORA_RANK, LORA_ALPHA = 8, 32.0
JAXRANK = "jaxrank (jit)"
TRL = "TRL GRPOTrainer (torch eager)"
PARTS = ("prepare", "rollout", "ref_log_probs", "reward", "update")


def reward(text: str) -> float:
    """1 for a completion Region-R1's parser reads as a crop call; otherwise the share of its
    characters that are ASCII letters or spaces (a random policy rarely writes a call, so the
    rewards of a group still differ). Deterministic; both sides call it on each decoded text."""
    from jaxrank.region_r1.action import REGION
    from jaxrank.region_r1.crop_tool import parse_completion

    if parse_completion(text).decision == REGION:
        return 1.0
    return sum(c.isascii() and (c.isalpha() or c == " ") for c in text) / max(len(text), 1)


def prompts(count: int, size: int) -> tuple[list[list[dict]], list[Any]]:
    """``count`` one-image chat conversations and their photos, all ``size`` x ``size`` RGB (one
    patch grid, so jaxrank compiles once)."""
    from hf_checkpoints import photos

    images = [p.convert("RGB").resize((size, size)) for p in photos()]
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        for q in QUESTIONS
    ]
    return (
        [conversations[i % len(QUESTIONS)] for i in range(count)],
        [images[i % len(images)] for i in range(count)],
    )


class Timer:
    """Seconds per named part, summed until ``take()``."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = defaultdict(float)

    def add(self, part: str, seconds: float) -> None:
        self.parts[part] += seconds

    def take(self) -> dict[str, float]:
        parts, self.parts = dict(self.parts), defaultdict(float)
        return parts


class JaxrankGRPO:
    """jaxrank's step as a recipe runs it, in parts that can be timed."""

    def __init__(self, folder: Path, conversations, images, args) -> None:
        import jax
        import optax
        from flax import nnx

        from jaxrank.models.hf.qwen2_vl import load_vlm
        from jaxrank.models.hf.qwen_vl_inputs import QwenVLInputs
        from jaxrank.models.lora import LoRAConfig, adapters_off, apply_lora, join_lora, split_lora
        from jaxrank.rl.grpo import GRPOConfig, compute_advantages
        from jaxrank.rl.sampler import SamplingSettings
        from jaxrank.rl.token_grpo import make_token_grpo_loss
        from jaxrank.train.step import TrainState, make_train_step
        from jaxrank.vlm.programs import completion_log_probs_fn, make_sampler

        self.inputs = QwenVLInputs.from_pretrained(folder)
        self.texts = [self.inputs.chat(c) for c in conversations]
        self.images = [[image] for image in images]
        self.group, self.new = args.group, args.new
        self.rng = jax.random.key(args.seed)
        first = self.inputs.batch(self.texts, self.images, lengths=(4096,))
        self.length = int(first.mask.sum(1).max())  # pad to the longest prompt, as TRL does
        (grid,) = set(first.grids)
        self.grid = grid

        model = load_vlm(folder).model
        apply_lora(model, LoRAConfig(LORA_RANK, LORA_ALPHA, 0.0), nnx.Rngs(args.seed))
        graphdef, adapters, self.base = split_lora(model)
        self.adapter_count = sum(x.size for x in jax.tree.leaves(adapters))
        settings = SamplingSettings(max_new_tokens=args.new, temperature=1.0)  # no stop token
        grpo = GRPOConfig(num_generations=args.group, advantage="grpo", beta=args.beta)
        log_probs = completion_log_probs_fn(grid, args.group, 1.0)
        loss = make_token_grpo_loss(graphdef, log_probs, grpo)
        optimizer = optax.chain(
            optax.clip_by_global_norm(1.0), optax.adamw(args.lr, 0.9, 0.999, 1e-8, 0.0)
        )
        train_step = make_train_step(loss, optimizer)

        def update(state, batch, rewards, base):
            advantages = compute_advantages(rewards, grpo.advantage)
            return train_step(state, {**batch, "advantages": advantages}, base)

        def reference_log_probs(adapters, base, batch):
            return log_probs(join_lora(graphdef, adapters_off(adapters), base), batch)

        self.state = TrainState.create(adapters, optimizer, args.seed)
        sampler = make_sampler(graphdef, settings, group=args.group, grid=grid)
        batch = self.prepare()
        key = jax.random.key(0)
        rewards = np.zeros((len(self.texts), args.group), np.float32)
        self.compile_s = {}
        start = time.perf_counter()
        self.sample = sampler.lower(self.state.params, self.base, batch, key, None).compile()
        self.compile_s["sampler"] = time.perf_counter() - start
        out = self.sample(self.state.params, self.base, batch, key, None)
        full = {**batch, "completion": out.tokens, "completion_mask": out.mask}
        start = time.perf_counter()
        self.update = (
            jax.jit(update, donate_argnums=0).lower(self.state, full, rewards, self.base).compile()
        )
        self.compile_s["update"] = time.perf_counter() - start
        self.reference = jax.jit(reference_log_probs).lower(adapters, self.base, full).compile()

    def prepare(self) -> dict[str, Any]:
        """The host's pre-processing of the prompts (tokens, M-RoPE positions, patches)."""
        import jax

        b = self.inputs.batch(self.texts, self.images, lengths=(self.length,))
        # vlm.programs's layout: every leaf rows first (positions [B, 3, P], patches [B, n, d]).
        batch = {
            "tokens": b.tokens,
            "mask": b.mask,
            "positions": b.positions.transpose(1, 0, 2),
            "patches": b.patches.reshape(len(self.texts), -1, b.patches.shape[-1]),
        }
        return jax.device_put(batch)

    def step(self, index: int, timer: Timer) -> dict[str, Any]:
        import jax

        start = time.perf_counter()
        batch = self.prepare()
        jax.block_until_ready(batch)
        t1 = time.perf_counter()
        timer.add("prepare", t1 - start)
        key = jax.random.fold_in(self.rng, index)
        out = self.sample(self.state.params, self.base, batch, key, None)
        tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
        t2 = time.perf_counter()
        timer.add("rollout", t2 - t1)
        texts = self.inputs.tokenizer.batch_decode(
            [row[m].tolist() for row, m in zip(tokens, mask, strict=True)],
            skip_special_tokens=True,
        )
        rewards = np.asarray([reward(t) for t in texts], np.float32).reshape(-1, self.group)
        t3 = time.perf_counter()
        timer.add("reward", t3 - t2)
        full = {**batch, "completion": out.tokens, "completion_mask": out.mask}
        self.state, metrics = self.update(self.state, full, rewards, self.base)
        jax.block_until_ready((self.state, metrics))
        timer.add("update", time.perf_counter() - t3)
        return {
            "completion_lengths": mask.sum(1).tolist(),
            "reward_mean": float(rewards.mean()),
            "loss": float(metrics["loss"]),
            "full": full,
        }

    def time_reference(self, full: dict[str, Any]) -> float:
        """The reference log-probs alone (a part of ``update``, timed outside the step)."""
        import jax

        start = time.perf_counter()
        jax.block_until_ready(self.reference(self.state.params, self.base, full))
        return time.perf_counter() - start


def trl_trainer(model, processor, conversations, images, args, steps: int, output: Path):
    """A ``GRPOTrainer`` whose methods report their time to ``trainer.bench_timer``."""
    import datasets
    import torch
    import trl
    from peft import LoraConfig

    rows = [
        {"prompt": c, "image": image} for c, image in zip(conversations, images, strict=True)
    ] * steps
    config = trl.GRPOConfig(
        output_dir=str(output),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,  # TRL's default is on; off is the faster setting here
        per_device_train_batch_size=len(conversations) * args.group,  # counts completions
        gradient_accumulation_steps=1,
        num_generations=args.group,
        num_iterations=1,
        max_completion_length=args.new,
        generation_kwargs={"min_new_tokens": args.new},
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=args.beta,
        epsilon=0.2,
        loss_type="grpo",
        scale_rewards="group",
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=steps,
        shuffle_dataset=False,
        disable_dropout=True,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        log_completions=False,
        dataloader_num_workers=0,
        seed=args.seed,
    )

    def reward_fn(completions, **kwargs) -> list[float]:
        return [reward(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=reward_fn,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=processor,
        peft_config=LoraConfig(
            r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear"
        ),
    )
    timer, seen = Timer(), {}
    trainer.bench_timer, trainer.bench_seen = timer, seen

    def timed(name: str, part):
        method = getattr(trainer, name)

        def wrapper(*a, **k):
            start = time.perf_counter()
            result = method(*a, **k)
            timer.add(part(result) if callable(part) else part, time.perf_counter() - start)
            if name == "_generate":
                seen["prompt_ids"], seen["completion_ids"] = result[0], result[1]
            return result

        setattr(trainer, name, wrapper)

    timed("_generate", "rollout")
    timed("_tokenize_prompts", "tokenize")  # inside _generate: chat template, image processor
    timed("_calculate_rewards", "reward")
    timed("_generate_and_score_completions", "score_total")
    # Reference log-probs run without grad during scoring; the loss's run with grad.
    timed(
        "_get_per_token_logps_and_entropies",
        lambda _: "policy_forward" if torch.is_grad_enabled() else "ref_log_probs",
    )
    trainer.adapter_count = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return trainer


def run(args) -> dict[str, Any]:
    import torch
    import transformers
    from qwen_checkpoints import tiny_vlm

    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    conversations, images = prompts(args.prompts, args.image)
    steps = args.warmup + args.steps
    records: dict[str, list[dict]] = {JAXRANK: [], TRL: []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "qwen2_vl"
        model, processor = tiny_vlm(folder, "qwen2_vl")
        ours = JaxrankGRPO(folder, conversations, images, args)
        print(f"jaxrank compile: {ours.compile_s}", flush=True)
        trainer = trl_trainer(model, processor, conversations, images, args, steps, Path(tmp))
        jax_timer = Timer()
        clock = {"last": time.perf_counter()}
        checks: dict[str, Any] = {}

        class Alternate(transformers.TrainerCallback):
            def on_train_begin(self, *a, **k):
                clock["last"] = time.perf_counter()

            def on_step_end(self, _args, state, control, **k):
                end = time.perf_counter()
                parts = trainer.bench_timer.take()
                total = end - clock["last"]
                scoring = parts.pop("score_total")
                # "prepare": TRL's pre-processing of the prompts, twice per step (the chat
                # template and image processor before sampling, the processor again for the
                # log-prob passes) and padding, i.e. the scoring phase minus sampling, reference
                # log-probs and reward; "rollout": generate + decoding; "update": everything
                # outside scoring: data loading, the loss's forward ("policy_forward", also
                # reported alone) and backward, the optimizer and the callbacks.
                parts["rollout"] -= parts.pop("tokenize")
                parts["prepare"] = scoring - sum(
                    parts.get(p, 0.0) for p in ("rollout", "reward", "ref_log_probs")
                )
                parts["update"] = total - scoring
                lengths = [len(c) for c in trainer.bench_seen["completion_ids"]]
                records[TRL].append(
                    {"step_s": total, "parts": parts, "completion_lengths": lengths}
                )
                index = state.global_step - 1
                start = time.perf_counter()
                info = ours.step(index, jax_timer)
                jax_total = time.perf_counter() - start
                full = info.pop("full")
                info["reference_log_probs_s"] = ours.time_reference(full)  # outside step_s
                records[JAXRANK].append({"step_s": jax_total, "parts": jax_timer.take(), **info})
                if index == 0:
                    theirs = [list(ids) for ids in trainer.bench_seen["prompt_ids"]]
                    b = ours.inputs.batch(ours.texts, ours.images, lengths=(ours.length,))
                    mine = [row[m].tolist() for row, m in zip(b.tokens, b.mask, strict=True)]
                    checks["prompt_tokens_equal"] = theirs[:: args.group] == mine
                    checks["prompt_tokens"] = [len(t) for t in mine]
                print(
                    f"  step {index}: TRL {total:.3f}s, jaxrank {jax_total:.3f}s",
                    flush=True,
                )
                clock["last"] = time.perf_counter()

        trainer.add_callback(Alternate())
        before = cpu_seconds()
        start = time.perf_counter()
        trainer.train()
        contention = measured_contention(before, cpu_seconds(), time.perf_counter() - start)
    checks["adapter_parameters"] = {JAXRANK: int(ours.adapter_count), TRL: trainer.adapter_count}
    return {
        "records": records,
        "compile_s": ours.compile_s,
        "checks": checks,
        "contention": contention,
        "prompt_length_padded": ours.length,
        "image_grid": list(ours.grid),
    }


def summarise(records: dict[str, list[dict]], warmup: int, rows_per_step: int) -> list[dict]:
    """Medians over the timed steps (after ``warmup``) per method."""
    results = []
    for method in (JAXRANK, TRL):
        timed = records[method][warmup:]
        step_s = float(np.median([r["step_s"] for r in timed]))
        parts = {
            p: float(np.median([r["parts"].get(p, 0.0) for r in timed]))
            for p in sorted({p for r in timed for p in r["parts"]})
        }
        lengths = [x for r in timed for x in r["completion_lengths"]]
        tokens = rows_per_step * float(np.mean(lengths))
        row = {
            "method": method,
            "step_s": step_s,
            "steps_per_s": 1.0 / step_s,
            "parts_s": parts,
            "mean_completion_length": float(np.mean(lengths)),
            "min_completion_length": int(np.min(lengths)),
            "generated_tokens_per_s_step": tokens / step_s,
            "generated_tokens_per_s_rollout": tokens / parts["rollout"],
            "all_step_s": [r["step_s"] for r in records[method]],
        }
        if method == JAXRANK:
            row["reference_log_probs_s_outside_step"] = float(
                np.median([r["reference_log_probs_s"] for r in timed])
            )
        results.append(row)
    jx, pt = results
    jx["speedup_vs_trl"] = jx["steps_per_s"] / pt["steps_per_s"]
    jx["rollout_speedup_vs_trl"] = pt["parts_s"]["rollout"] / jx["parts_s"]["rollout"]
    return results


def table(results: list[dict], compile_s: dict[str, float]) -> str:
    lines = []
    for r in results:
        p = r["parts_s"]
        jaxrank = r["method"] == JAXRANK
        ref = r["reference_log_probs_s_outside_step"] if jaxrank else p.get("ref_log_probs", 0)
        lines.append(
            {
                "method": r["method"],
                "steps/s": r["steps_per_s"],
                "step s": r["step_s"],
                "prepare s": p["prepare"],
                "rollout s": p["rollout"],
                "ref log-prob s": f"({ref:.3f}, in update)" if jaxrank else f"{ref:.3f}",
                "reward s": p["reward"],
                "update s": p["update"],
                "gen tok/s (step)": r["generated_tokens_per_s_step"],
                "gen tok/s (rollout)": r["generated_tokens_per_s_rollout"],
                "mean completion": r["mean_completion_length"],
            }
        )
    jx = results[0]
    text = tabulate(lines, headers="keys", tablefmt="github", floatfmt=".3f")
    return text + (
        f"\njaxrank / TRL: {jx['speedup_vs_trl']:.2f}x steps/s "
        f"(rollout {jx['rollout_speedup_vs_trl']:.2f}x); jaxrank compile "
        + ", ".join(f"{k} {v:.1f}s" for k, v in compile_s.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (B)")
    parser.add_argument("--group", type=int, default=8, help="samples per prompt (G)")
    parser.add_argument("--new", type=int, default=32, help="completion tokens")
    parser.add_argument("--image", type=int, default=48, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps of each")
    parser.add_argument("--beta", type=float, default=0.04, help="KL weight (> 0: reference)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="1: the process pinned to one core, torch and XLA on one thread each (a per-core "
        "comparison that a busy neighbour skews far less); 0 (default): every core, each "
        "library's own thread count",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: B2 G4 new 8, 2 steps")
    parser.add_argument("--out", default="docs/bench/grpo.json")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.group, args.new, args.steps, args.warmup = 2, 4, 8, 2, 1
    if args.beta <= 0:
        parser.error("--beta must be > 0 (the benchmark includes the reference log-probs)")
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        sys.exit("unset XLA_FLAGS: the benchmark measures one real CPU device")
    if args.threads not in (0, 1):
        parser.error("--threads is 0 (libraries' defaults) or 1")
    if args.threads == 1:
        # One core for the whole process, before jax starts its backend (machine_info below):
        # XLA sizes its thread pool by the affinity mask; torch is told explicitly.
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        import torch

        torch.set_num_threads(1)

    import trl

    report: dict[str, Any] = {"command": " ".join(sys.argv), "load_before": os.getloadavg()}
    report["machine"] = machine_info() | {"trl": trl.__version__}
    report["config"] = vars(args) | {
        "model": "tests/helpers/qwen_checkpoints.py tiny_vlm(qwen2_vl), float32",
        "lora": {"rank": LORA_RANK, "alpha": LORA_ALPHA, "dropout": 0.0, "targets": "all-linear"},
    }
    measured = run(args)
    report |= {k: v for k, v in measured.items() if k != "records"}
    report["results"] = summarise(measured["records"], args.warmup, args.prompts * args.group)
    report["steps"] = measured["records"]
    report["load_after"] = os.getloadavg()
    report["table"] = table(report["results"], measured["compile_s"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(report["table"])
    print(f"checks: {report['checks']}")
    print(f"contention: {report['contention']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
