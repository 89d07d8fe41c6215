"""ELVA on M-BEIR (PAPERS.md §2): the paper's setting, named for the reproduction script.

    scripts/reproduce.sh elva_mbeir --config.data.root=/data/M-BEIR

The data side is real: the M-BEIR readers (``jaxrank/data/mbeir.py``: queries, local pools,
qrels, instructions, UniIR's Recall@K) and ``jaxrank data check`` read this layout. The ELVA
recipe itself trains on the synthetic multi-grain benchmark only so far; on M-BEIR it stops
with an error that says so. Paper settings: Qwen2-VL-7B with a frozen vision tower and LoRA on
the LLM; InfoNCE on M-BEIR; GRPO with G 8, KL beta 0.2, lr 1e-6, 1 epoch on ~11K instances
(1% of each dataset); 50 filtered-hard + 50 random negatives; alpha 0.4, eps 0.6.
"""

from pathlib import Path

import ml_collections

from jaxrank.configs import load_config_file

SYNTHETIC = Path(__file__).resolve().parent / "synthetic.py"


def get_config() -> ml_collections.ConfigDict:
    c = load_config_file(SYNTHETIC)
    c.data = ml_collections.ConfigDict(
        {
            "benchmark": "mbeir",
            "root": "/data/M-BEIR",  # the HF dataset TIGER-Lab/M-BEIR, unpacked
            "split": "test",
            "strict": False,
        }
    )
    # The paper's generative embedder (PAPERS.md §2): a summary then [RET], whose last hidden
    # state is the embedding; the vision tower frozen, LoRA on the LLM.
    c.embedder = ml_collections.ConfigDict(
        {"checkpoint": "Qwen/Qwen2-VL-7B-Instruct", "freeze_vision": True, "lora_on": "llm"}
    )
    c.mining.n_hard = 50
    c.mining.n_random = 50
    c.rl.num_generations = 8
    c.train.learning_rate = 1e-6
    return c
