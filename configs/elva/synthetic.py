"""ELVA (PAPERS.md §2) on the multi-grain synthetic benchmark: contrastive stage, then the RL
stage from it, evaluated on the standard and multi-grain sets every ``train.eval_every`` steps.

    jaxrank train --config configs/elva/synthetic.py --workdir runs/elva

The encoder is the contrastive recipe's tiny CLIP; the RL policy is a Gaussian head around its
query embedding (the fast path). Paper settings kept: KL beta 0.2, reward alpha 0.4 / eps 0.6
with the ranking term as printed; G is 64 (paper 8, see ``rl``). Scaled to a CPU: 16 hard + 16
random negatives per query (paper 50 + 50) over a 768-entry knowledge base.
"""

from pathlib import Path

import ml_collections

from jaxrank.configs import load_config_file

ENCODER_CONFIG = Path(__file__).resolve().parents[1] / "contrastive" / "synthetic.py"


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.recipe = "elva"
    c.seed = 0  # initialisation, data order, mining and sampling
    c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})
    # 768 of the world's 2240 attribute combinations: a dense knowledge base, so most entities
    # have neighbours that differ in one fine attribute.
    # marking 0.5: the pattern covers the centre quarter of the body, so the fine attributes
    # are a small detail of the image, as fine grains are in real photos.
    c.world = ml_collections.ConfigDict(
        {"num_entities": 768, "image_size": 48, "seed": 0, "marking": 0.5}
    )
    encoder = load_config_file(ENCODER_CONFIG)
    c.model = encoder.model
    # Multi-grain targets: entities with at least this many entries that share shape and
    # colour and differ in exactly one of pattern and pattern colour.
    c.benchmark = ml_collections.ConfigDict({"min_fine_neighbours": 4})
    c.contrastive = encoder.train  # the contrastive recipe's schedule
    c.contrastive_workdir = ""  # "" trains the stage in <workdir>/contrastive
    c.rl_data = ml_collections.ConfigDict({"queries_per_task": 1024})
    # ELVA's negatives (paper: 50 filtered hard + 50 random); the synthetic world has no
    # duplicates, so the false-negative threshold only guards against exact copies.
    c.mining = ml_collections.ConfigDict(
        {"n_hard": 16, "n_random": 16, "threshold": 0.99, "depth": 0}  # depth 0: 2 * n_hard + 1
    )
    c.head = ml_collections.ConfigDict({"init_scale": 0.05})
    # "frozen": candidates keep the contrastive model's embeddings (one index, query side
    # tuned); "current": the encoder being trained re-embeds the knowledge base every step.
    c.candidates = "frozen"
    # "query": a rollout samples the query's embedding only (the candidates are its
    # environment); "all": the positive's and negatives' too, as the paper's policy embeds the
    # whole set (needs candidates="current"; docs/elva.md).
    c.policy_samples = "query"
    c.rl = ml_collections.ConfigDict(
        {
            # G: the paper's 8 are generated MLLM rollouts; a Gaussian draw costs a dot product
            # with each candidate, and at G 8 the score-function gradient's noise in D = 64 is
            # sqrt(D / G) ~ 2.8 times its signal (docs/elva.md).
            "num_generations": 64,
            "advantage": "grpo",
            "eps_low": 0.2,
            "eps_high": 0.2,
            "beta": 0.2,  # KL to the contrastive model (paper)
            "aggregation": "seq_mean",
            "updates_per_batch": 1,
            "importance": "token",  # or "sequence": GSPO's sequence-level ratio
            "skip_constant_groups": False,  # DAPO's dynamic sampling, static shapes
        }
    )
    c.reward = ml_collections.ConfigDict(
        {"alpha": 0.4, "eps": 0.6, "delta": 0.0, "gamma": 0.01, "ranking": "printed"}
    )
    c.train = ml_collections.ConfigDict(
        {
            "steps": 300,
            "batch_size": 32,  # queries per step, each with G sampled embeddings
            "learning_rate": 3e-4,
            "warmup_steps": 20,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "log_every": 10,
            "checkpoint_every": 50,
            "eval_every": 50,
            "data_threads": 1,
        }
    )
    c.eval = ml_collections.ConfigDict({"num_queries": 256, "batch_size": 128, "ks": (1, 5, 10)})
    return c
