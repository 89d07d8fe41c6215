"""Region-R1 as published, on E-VQA: the TPU reproduction recipe (PAPERS.md §1).

    jaxrank train --config configs/region_r1/evqa.py --workdir runs/evqa

Policy Qwen2.5-VL-3B-Instruct with LoRA (r 8, alpha 32, dropout 0.1, all linear layers) in
bf16, writing NO_CROP_NEEDED or an image_zoom_in_tool call with the paper's system prompt; a
frozen CLIP-family scorer over the top K = 20 candidates; r-GRPO with G = 8, beta 0.1 (k3), clip
0.2, one update per batch, advantage r - mean(r) as the released code; AdamW lr 5e-5, cosine,
50 warm-up steps, 2 epochs at 4 queries per device; 256 new tokens.

It needs the real data and weights: the E-VQA reader and knowledge base (the data issue), the
policy checkpoint, and the scorer (the paper's EVA-CLIP-8B, or any CLIP checkpoint that
jaxrank.models.hf loads). Until the reader is wired in, the recipe stops with an error that
says so; the synthetic CPU demonstration is configs/region_r1/mllm_synthetic.py.
"""

from pathlib import Path

import ml_collections

from jaxrank.configs import load_config_file

DEMO = Path(__file__).resolve().parent / "mllm_synthetic.py"


def get_config() -> ml_collections.ConfigDict:
    c = load_config_file(DEMO)
    c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})
    c.data = ml_collections.ConfigDict(
        {
            "benchmark": "evqa",  # the E-VQA single-hop subset (DATA_FORMATS.md)
            "root": "",  # the benchmark's files, as released
            "pool_size": 20,  # K
        }
    )
    c.scorer_checkpoint = "BAAI/EVA-CLIP-8B"  # frozen, fp16 in the paper, 224 px
    c.policy.checkpoint = "Qwen/Qwen2.5-VL-3B-Instruct"
    c.policy.dtype = "bfloat16"
    c.policy.short_system_prompt = False  # crop_tool.SYSTEM_PROMPT
    c.policy.max_new_tokens = 256
    c.policy.image_size = 448  # the policy's square view of a query; boxes map back exactly
    del c.policy.tiny
    c.sft.steps = 0  # a pretrained VLM already writes tool calls
    c.lora = ml_collections.ConfigDict(
        {"rank": 8, "alpha": 32.0, "dropout": 0.1, "targets": "all-linear"}
    )
    c.rl.num_generations = 8
    c.rl.beta = 0.1
    c.rl.advantage = "dr_grpo"
    c.train.batch_size = 32  # 4 queries per device on 8 chips
    c.train.learning_rate = 5e-5
    c.train.warmup_steps = 50
    c.train.steps = 2 * 1000  # 2 epochs; set from the training split's size / batch_size
    c.train.checkpoint_every = 100
    c.eval.presets = ("test",)
    c.eval.num_queries = 0  # every test query
    return c
