"""RAR (PAPERS.md §3) offline, on real images shipped with scikit-learn: its handwritten digits.

    jaxrank train --config configs/rar/digits.py --workdir runs/rar

The memory holds ``shots`` images per class embedded by their own pixels (see
``rar/memory_encoder.py``); the ranker is a random tiny Qwen2.5-VL-shaped model fine-tuned on
RAR's ranking data built from a separate part of the digits (the paper fine-tunes on
FGVC-Aircraft and evaluates elsewhere). Paper settings kept: k 5 (4 at 4 shots), 20 neighbours,
16 sets per image, shuffled prompt order, 1 epoch. Changed for a random tiny model: every
weight is trained (``finetune.train="all"``; the paper trains LoRA on LLaVA-1.5-7B) at lr 2e-3.
"""

import ml_collections

from jaxrank.vlm.base import tiny_sizes


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.recipe = "rar"
    c.seed = 0  # the ranker's initialisation and data, and the shots drawn
    c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})
    c.data = ml_collections.ConfigDict(
        {
            "source": "digits",
            "image_size": 32,  # the scans' 8 x 8, upsampled
            # ranker pool, shot pool (the test queries take the rest), per class
            "fractions": (0.5, 0.25),
            "split_seed": 0,  # fixed, so every seed is tested on the same queries
        }
    )
    c.memory = ml_collections.ConfigDict({"encoder": "pixels", "dtype": "float32"})
    c.k = 5
    c.k_by_shots = ml_collections.ConfigDict({"4": 4})  # the paper's 4-shot setting
    c.ranker = ml_collections.ConfigDict(
        {
            "checkpoint": "",  # "" = the tiny random ranker below
            "dtype": "float32",
            "image_size": 32,  # 8 x 8 scans upsampled; 4 x 4 patches -> 2 x 2 image tokens
            "max_new_tokens": 32,
            "opening_length": 8,  # tokens of the score path's "['<name>',"
            # rar.ranking_text.PROMPTS: the paper's printed wording for both (no released file
            # produced this setting's number)
            "train_prompt": "generic",
            "eval_prompt": "generic",
            "tiny": tiny_sizes(vocab_size=512),
            # models.layer_stack: True stacks the layers for one compiled copy (configs/rar/
            # fewshot.py), and recomputes each layer's activations in the backward pass
            "scan_layers": False,
            "remat": False,
        }
    )
    c.finetune = ml_collections.ConfigDict(
        {
            "train": "all",  # "lora": adapters on the frozen base, as the paper
            "epochs": 1.0,
            "neighbours": 20,
            "sets_per_image": 16,
            "batch_size": 32,
            "learning_rate": 2e-3,
            "warmup_steps": 20,
            "weight_decay": 1e-4,
            "grad_clip": 1.0,
            "log_every": 20,
            "checkpoint_every": 100,
        }
    )
    c.lora = ml_collections.ConfigDict(
        {"rank": 8, "alpha": 32.0, "dropout": 0.0, "targets": "all-linear"}
    )
    c.eval = ml_collections.ConfigDict(
        {"shots": (1, 2, 4, 8, 16), "batch_size": 64, "num_queries": 0}  # 0 = every test image
    )
    return c
