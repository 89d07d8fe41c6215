"""Contrastive scorer (tiny CLIP layout) on the synthetic world: the README's main job.

    jaxrank train --config configs/contrastive/synthetic.py --workdir runs/default

Trains on augmented clean views of the 256 entities against their knowledge-base text and
image, then reports Recall@K for clean, easy, default (cluttered) and hard queries, each with
the full image and with the ground-truth crop.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.recipe = "contrastive"
    c.seed = 0
    c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})
    c.world = ml_collections.ConfigDict({"num_entities": 256, "image_size": 96, "seed": 0})
    c.model = ml_collections.ConfigDict(
        {
            "family": "clip",  # clip (softmax loss) | siglip (sigmoid loss)
            # A Hugging Face CLIP/SigLIP folder or hub id to start from (its family must match;
            # its own shape, processor and tokenizer replace the keys below). "" = train afresh.
            "pretrained": "",
            "image_size": 32,
            "patch_size": 8,
            "width": 96,
            "depth": 3,
            "heads": 4,
            "max_len": 16,
            "embed_dim": 64,
            "dtype": "float32",
        }
    )
    c.train = ml_collections.ConfigDict(
        {
            "steps": 600,
            "batch_size": 64,
            "learning_rate": 1e-3,
            "warmup_steps": 50,
            "weight_decay": 1e-4,
            "grad_clip": 1.0,
            "log_every": 25,
            "checkpoint_every": 100,
            "data_threads": 2,
            # (first, last): a JAX profiler trace of those steps in <workdir>/profile
            "profile_steps": (),
        }
    )
    c.eval = ml_collections.ConfigDict(
        {
            "num_queries": 512,
            "batch_size": 128,
            "presets": ("clean", "easy", "default", "hard"),
            "ks": (1, 5, 10),
        }
    )
    return c
