"""The tiny vision-language crop policy the MLLM step's tests share: its base, its config, LoRA
adapters that look trained, random query images, a colour scorer and a step's batch."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxrank import parallel
from jaxrank.region_r1.mllm_policy import CropPolicyBase, build_base
from jaxrank.region_r1.mllm_step import sampling_settings
from jaxrank.vlm.finetune import with_adapters

B, G, NEW = 4, 2, 12
QUESTIONS = ["which object is red?", "what is in the top left?", "the striped one?", "blue?"]
RL = {
    "num_generations": G,
    "advantage": "dr_grpo",
    "eps_low": 0.2,
    "eps_high": 0.2,
    "beta": 0.1,
    "aggregation": "seq_mean",
    "updates_per_batch": 1,
    "balanced": True,
    "forced_in_loss": True,
}
REWARD = {"weights": (0.2, 0.2, 0.2, 0.4), "floor": -0.05, "scale": 5.0, "invalid_reward": -1.0}


def tiny_policy_config() -> ml_collections.ConfigDict:
    tiny = {
        "vocab_size": 400,
        "width": 32,
        "depth": 1,
        "heads": 4,
        "kv_heads": 2,
        "mlp_dim": 48,
        "vision_depth": 1,
        "vision_width": 32,
        "vision_heads": 2,
        "patch_size": 8,
    }
    policy = {
        "checkpoint": "",
        "dtype": "float32",
        "image_size": 48,
        "max_new_tokens": NEW,
        "temperature": 1.0,
        "short_system_prompt": True,
        "tiny": tiny,
    }
    lora = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": "all-linear"}
    return ml_collections.ConfigDict({"seed": 0, "policy": policy, "lora": lora})


def tiny_base(folder: Path, mesh: jax.sharding.Mesh | None = None) -> CropPolicyBase:
    """The tiny policy's base, its weights laid out on ``mesh`` (default: one device) and its
    tokenizer trained in ``folder`` (or loaded from it: every build there is the same base)."""
    mesh = mesh or parallel.make_mesh(data=1, devices=jax.devices()[:1])
    return build_base(tiny_policy_config(), folder, QUESTIONS, mesh)


def step_config(**rl) -> ml_collections.ConfigDict:
    """The tiny policy's config with r-GRPO's and the reward's sections."""
    cfg = tiny_policy_config()
    cfg.rl = {**RL, **rl}
    cfg.reward = dict(REWARD)
    return cfg


def images(b: int = B) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (b, 96, 96, 3), dtype=np.uint8)


def update_inputs(base, cfg=None):
    """The tiny policy with LoRA adapters that look trained, and its sampling settings."""
    cfg = cfg or tiny_policy_config()
    graphdef, params = nnx.split(base.model, nnx.Param)
    graphdef, adapters, rest = with_adapters(cfg.lora, graphdef, params, cfg.seed)
    adapters = jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(x.size), x.shape), adapters
    )
    return graphdef, adapters, rest, sampling_settings(cfg, base, greedy=False)


def colour_embed(params, pixels):
    del params
    mean = pixels.mean(axis=(1, 2)) / 255.0 - 0.4
    return mean / jnp.linalg.norm(mean, axis=-1, keepdims=True)


class ColourScorer:
    """A stand-in for the frozen scorer: mean colour (the step, not the scorer, is tested)."""

    embed = staticmethod(colour_embed)
    input_size = 8


POOL = np.array([[1.0, 1.0, 1.0], [0.6, -0.4, -0.4], [-0.4, -0.4, 0.6]], np.float32)


def judged_batch(b: int = B) -> dict[str, np.ndarray]:
    """A batch's scoring part: every query's pool is the 3 colours, the red one labelled."""
    return {
        "images": images(b),
        "boxes": np.tile(np.asarray([[0, 0, 48, 48]], np.float32), (b, 1)),
        "pool_ids": np.tile(np.arange(3, dtype=np.int32), (b, 1)),
        "labels": np.tile(np.asarray([[0, 1, 0]], np.float32), (b, 1)),
        "pool_valid": np.ones((b, 3), bool),
        "rows": np.arange(b, dtype=np.int32),
    }
