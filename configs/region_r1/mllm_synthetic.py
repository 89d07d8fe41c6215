"""Region-R1 with a vision-language crop policy on the synthetic world (CPU-sized).

    jaxrank train --config configs/region_r1/mllm_synthetic.py --workdir runs/mllm

The scorer, pools and reward are the structured recipe's (configs/region_r1/synthetic.py;
point scorer_workdir at a finished run's scorer to reuse it). The policy is a random tiny
Qwen2.5-VL-shaped model with a tokenizer trained on the recipe's own texts, warm-started by a
supervised phase on correctly formatted answers (a tool call on the ground-truth box for
sft.crop_fraction of queries at random, NO_CROP_NEEDED for the rest), then trained with
token-level r-GRPO on LoRA adapters with the base frozen.
"""

from pathlib import Path

import ml_collections

from jaxrank.configs import load_config_file
from jaxrank.vlm.base import tiny_sizes

STRUCTURED = Path(__file__).resolve().parent / "synthetic.py"


def get_config() -> ml_collections.ConfigDict:
    c = load_config_file(STRUCTURED)
    c.recipe = "region_r1_mllm"
    del c.grounding
    c.data.train_queries_per_preset = 1024
    c.policy = ml_collections.ConfigDict(
        {
            "checkpoint": "",  # "" = the tiny random policy below
            "dtype": "float32",
            "image_size": 96,  # queries are resized to this square for the policy
            "max_new_tokens": 40,
            # crop_tool.SHORT_SYSTEM_PROMPT instead of the paper's (~300 tokens): a random tiny
            # model cannot read instructions, and it keeps CPU prompts ~4x shorter.
            "short_system_prompt": True,
            "temperature": 1.0,
            "tiny": tiny_sizes(),  # 96 px -> 12 x 12 patches -> 6 x 6 image tokens
            # models.layer_stack: True stacks the layers for one compiled copy (configs/
            # region_r1/evqa.py), and recomputes each layer's activations in the backward pass
            "scan_layers": False,
            "remat": False,
        }
    )
    # "" warm-starts in <workdir>; a finished run's workdir lends its policy_base and sft stages.
    c.warm_start_workdir = ""
    c.sft = ml_collections.ConfigDict(
        {
            "steps": 500,
            "batch_size": 32,
            "crop_fraction": 0.75,
            "learning_rate": 2e-3,
            "warmup_steps": 50,
            "weight_decay": 1e-4,
            "grad_clip": 1.0,
            "log_every": 25,
            "checkpoint_every": 200,
        }
    )
    c.lora = ml_collections.ConfigDict(
        {"rank": 8, "alpha": 32.0, "dropout": 0.0, "targets": "all-linear"}
    )
    c.train.steps = 120
    c.train.batch_size = 16
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 10
    c.train.checkpoint_every = 50
    c.train.log_every = 5
    c.eval.num_queries = 256
    c.eval.batch_size = 64
    return c
