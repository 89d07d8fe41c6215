"""ELVA as published (PAPERS.md §2) on the multi-grain synthetic benchmark, CPU-sized: a
generative embedder (a vision-language model writes a summary of its input, then [RET], whose
hidden state is the embedding), a contrastive stage, then the RL stage from it.

    jaxrank train --config configs/elva/generative_synthetic.py --workdir runs/elva_generative

The embedder is a random tiny Qwen2.5-VL-shaped model (``embedder.tiny``; a released Qwen2-VL
checkpoint with ``embedder.checkpoint``), LoRA on its language model, its vision tower frozen,
as the paper. Paper settings kept: KL beta 0.2 (to the contrastive model), reward alpha 0.4 /
eps 0.6 with the ranking term as printed, G 8. Scaled to a CPU: summaries of at most 8 tokens,
2 hard + 2 random negatives per query (paper 50 + 50), a 256-entry knowledge base.
"""

from pathlib import Path

import ml_collections

from jaxrank.configs import load_config_file
from jaxrank.vlm.base import tiny_sizes

FAST_PATH = Path(__file__).resolve().parent / "synthetic.py"


def get_config() -> ml_collections.ConfigDict:
    fast = load_config_file(FAST_PATH)
    c = ml_collections.ConfigDict()
    c.recipe = "elva_generative"
    c.seed = 0
    c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})
    c.world = ml_collections.ConfigDict(
        {"num_entities": 256, "image_size": 32, "seed": 0, "marking": 0.5}
    )
    c.benchmark = ml_collections.ConfigDict({"min_fine_neighbours": 2})
    c.embedder = ml_collections.ConfigDict(
        {
            "checkpoint": "",  # a Qwen2-VL / Qwen2.5-VL folder or hub id; "" = the tiny model
            "dtype": "float32",
            "image_size": 32,  # inputs' images are resized to this square
            "summary_tokens": 8,  # the summary's cap; [RET] follows
            "tiny": tiny_sizes(vocab_size=512, width=64, depth=2, mlp_dim=128),
            # models.layer_stack: True stacks the layers for one compiled copy (configs/elva/
            # mbeir.py), and recomputes each layer's activations in the backward pass
            "scan_layers": False,
            "remat": False,
            # the RL update's log-probs this many summary positions at a time (lm_scoring.
            # head_log_probs): [rows, chunk, V] float32 logits live; 0 = all at once
            "logit_chunk": 0,
        }
    )
    # "language-model": adapters on every linear of the language model, the vision tower frozen.
    c.lora = ml_collections.ConfigDict(
        {"rank": 8, "alpha": 16.0, "dropout": 0.0, "targets": "language-model"}
    )
    c.contrastive = ml_collections.ConfigDict(
        {
            # "all": every weight (the tiny random model has no pretraining to keep); "lora":
            # adapters on the frozen base, as the paper trains a released checkpoint.
            "train": "all",
            "steps": 300,
            "batch_size": 32,  # queries per step; each with its positive
            "learning_rate": 1e-3,
            "warmup_steps": 20,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "temperature": 0.05,  # InfoNCE's tau
            "sampling_temperature": 0.0,  # the summaries the embedding is read after: greedy
            "summary_weight": 1.0,  # the teacher-forced summary's NLL beside InfoNCE
            "log_every": 25,
            "checkpoint_every": 100,
        }
    )
    # A finished contrastive stage (its folder) that RL runs of one seed share ("": trained in
    # <workdir>/contrastive); the tokenizer stays per run, trained on the same corpus.
    c.contrastive_workdir = ""
    c.rl_data = ml_collections.ConfigDict({"queries_per_task": 128})
    c.mining = ml_collections.ConfigDict(
        {"n_hard": 2, "n_random": 2, "threshold": 0.99, "depth": 0}
    )
    c.rl = fast.rl
    c.rl.num_generations = 8  # the paper's G: generated rollouts
    # The RL rollouts' summaries. At 1.0 the tiny embedder wrote [RET] within the cap in
    # 0.2-0.5% of rollouts (every input of a rollout must), at 0.5 in 84-86% (runs/eg3, eg4).
    c.sampling = ml_collections.ConfigDict({"temperature": 0.5})
    c.missing_ret_reward = -1.0  # a rollout with an input that wrote no [RET] within the cap
    c.reward = fast.reward
    c.train = ml_collections.ConfigDict(
        {
            "steps": 100,
            "batch_size": 8,  # queries per step; each with G rollouts over its pool
            "learning_rate": 1e-4,
            "warmup_steps": 10,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "log_every": 10,
            "checkpoint_every": 25,
            "eval_every": 50,
        }
    )
    c.eval = ml_collections.ConfigDict({"num_queries": 64, "batch_size": 64, "ks": (1, 5, 10)})
    return c
