"""ELVA on M-BEIR (PAPERS.md §2): the paper's setting, named for the reproduction script.

    scripts/reproduce.sh elva_mbeir --config.data.root=/data/M-BEIR

The generative recipe (``elva_generative``) on M-BEIR's released files (``jaxrank/data/mbeir.py``
reads them; ``jaxrank data check`` lists what is missing): Qwen2-VL-7B with ``[RET]`` added, the
vision tower frozen and LoRA on the language model; InfoNCE on the training split, then GRPO
with G 8, KL beta 0.2, lr 1e-6 on 1% of each training dataset (~11K instances); 50 filtered-hard
+ 50 random negatives from the query's pool; alpha 0.4, eps 0.6; evaluation on the 16 tasks'
local pools with UniIR's Recall@K (R@5; R@10 for Fashion200K and FashionIQ).

Not given by the paper, chosen here: the contrastive stage's length and batch, InfoNCE's tau,
the summary cap (64 tokens) and the rollouts' temperature. M-BEIR has no reference summaries,
so the summaries' NLL is off (``summary_weight`` 0): the checkpoint already writes them.

Planned for 32 chips (v5p-64, or 4 nodes of 8 x H100): ``mesh.model`` 4 (Qwen2-VL-7B's 4
key/value heads) and the rest ``data``, 8 x 4, so a chip holds one RL query (its 102 pool rows
x G 8 = 816 completions), 32 contrastive pairs and 8 evaluation rows. Every stage fits v5p and
H100, analytic GiB a chip in bf16: contrastive 27.2, RL step 69.5 (H100: 10.5 spare, v5p:
25.5), evaluation 15.1 (the model reads 0.93 of XLA's RL step at these per-chip shapes,
float32, real depth: tests/elva/test_plan.py).

    jaxrank plan --config configs/elva/mbeir.py --analytic --chips 32 --chip v5p --chip h100

The RL step is the binding stage: its update holds the prompts' KV cache repeated G-fold
(six copies of 25.1 GiB over 4 devices) and the residual stream whole on each device of the
model axis; its logits are 16 positions at a time (``embedder.logit_chunk``), else they alone
(three float32 [816 x 65, 152064] buffers, 90 GiB) keep it off every chip. 8 chips (8 x 1:
188 GiB) and 16 (8 x 2: 106) do not fit; v4, v6e and v5e fit no mesh of the RL step at one
query per data shard (docs/SCALING.md).
"""

from pathlib import Path

import ml_collections

from jaxrank.configs import load_config_file

DEMO = Path(__file__).resolve().parent / "generative_synthetic.py"


def get_config() -> ml_collections.ConfigDict:
    c = load_config_file(DEMO)
    c.data = ml_collections.ConfigDict(
        {
            "benchmark": "mbeir",
            "root": "/data/M-BEIR",  # the HF dataset TIGER-Lab/M-BEIR, unpacked
            "split": "test",  # evaluation: each pair's local pool
            "train_split": "train",  # the contrastive pairs and the RL set
            "pairs": (),  # "dataset/taskN" names; empty: the 16 of M-BEIR's evaluation
            "rl_fraction": 0.01,  # the paper's RL set: 1% of each training dataset
            "strict": False,
        }
    )
    # Planned on 32 chips (v5p-64, or 4 nodes of 8 x H100): 8 data shards, a query each, the
    # weights, MLP, heads and KV caches split over 4 (Qwen2-VL-7B's 4 key/value heads)
    c.mesh = ml_collections.ConfigDict({"data": -1, "model": 4})
    c.embedder.checkpoint = "Qwen/Qwen2-VL-7B-Instruct"
    c.embedder.dtype = "bfloat16"
    c.embedder.scan_layers = True  # stacked layers, one compiled copy (docs/SCALING.md)
    c.embedder.remat = True  # the backward recomputes each layer's activations
    # The RL update's log-probs 16 summary positions at a time (lm_scoring.head_log_probs):
    # [816, 16, 152064] float32 logits live per query instead of [816, 65, 152064] (30 GiB each)
    c.embedder.logit_chunk = 16
    c.embedder.image_size = 448
    c.embedder.summary_tokens = 64
    c.contrastive.train = "lora"
    c.contrastive.summary_weight = 0.0
    c.contrastive.steps = 2000
    c.contrastive.batch_size = 256
    c.contrastive.learning_rate = 1e-4
    c.mining.n_hard = 50
    c.mining.n_random = 50
    c.mining.threshold = 0.9
    c.rl.num_generations = 8
    c.train.learning_rate = 1e-6
    c.train.steps = 1400  # one epoch of ~11K instances at 8 queries per step
    c.train.eval_every = 700
    c.eval.batch_size = 64
    return c
