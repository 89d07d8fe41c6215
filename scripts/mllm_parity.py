"""How closely jaxrank's Qwen2 decoder and Qwen2-VL / Qwen2.5-VL models follow transformers'
PyTorch models, and whether the real checkpoints' shapes come out right.

    .venv/bin/python scripts/mllm_parity.py --out docs/bench/mllm_parity.json

Tiny random checkpoints (the tests': tests/helpers/qwen_checkpoints.py's QWEN2 decoder and VL
models with two photos of different sizes, left-padded chat prompts): largest absolute logit
difference in float32, and in bfloat16 relative to the float32 reference's logit range. Real
sizes (configs of Qwen/Qwen2-VL-2B-Instruct and Qwen/Qwen2.5-VL-3B-Instruct as published):
jaxrank's parameter count from an abstract build (``nnx.eval_shape``, no memory) against
transformers' model on the meta device. Needs the test extras (torch).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))
from qwen_checkpoints import QWEN2, VARIANTS, jaxrank_inputs, reference_inputs, tiny_vlm

from jaxrank.models.hf.qwen2 import load_causal_lm
from jaxrank.models.hf.qwen2_vl import load_vlm, vlm_config
from jaxrank.models.vlm import VisionLanguageModel

MROPE = {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6}
REAL = {
    "Qwen2-VL-2B-Instruct": (
        transformers.Qwen2VLConfig,
        {
            "text_config": {
                "hidden_size": 1536,
                "intermediate_size": 8960,
                "num_hidden_layers": 28,
                "num_attention_heads": 12,
                "num_key_value_heads": 2,
                "vocab_size": 151936,
                "rope_parameters": MROPE,
            },
            "vision_config": {
                "depth": 32,
                "embed_dim": 1280,
                "hidden_size": 1536,
                "mlp_ratio": 4,
                "num_heads": 16,
            },
            "tie_word_embeddings": True,
        },
    ),
    "Qwen2.5-VL-3B-Instruct": (
        transformers.Qwen2_5_VLConfig,
        {
            "text_config": {
                "hidden_size": 2048,
                "intermediate_size": 11008,
                "num_hidden_layers": 36,
                "num_attention_heads": 16,
                "num_key_value_heads": 2,
                "vocab_size": 151936,
                "rope_parameters": MROPE,
            },
            "vision_config": {
                "depth": 32,
                "hidden_size": 1280,
                "intermediate_size": 3420,
                "num_heads": 16,
                "out_hidden_size": 2048,
                "window_size": 112,
                "fullatt_block_indexes": [7, 15, 23, 31],
                "hidden_act": "silu",
            },
            "tie_word_embeddings": True,
        },
    ),
}


def _errors(name: str, want: np.ndarray, fp32: np.ndarray, bf16: np.ndarray, real) -> dict:
    spread = float(want[real].max() - want[real].min())
    return {
        "model": name,
        "fp32 max|d| logits": float(np.abs(fp32[real] - want[real]).max()),
        "bf16 max|d| / range": float(np.abs(bf16[real] - want[real]).max() / spread),
        "logit range": spread,
    }


def decoder_rows(tmp: Path) -> list[dict]:
    rows = []
    ids = np.random.default_rng(0).integers(0, QWEN2["vocab_size"], (2, 11))
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    forward = jax.jit(lambda m, *x: m(*x).logits)
    for tied in (False, True):
        torch.manual_seed(0)
        config = transformers.Qwen2Config(**QWEN2, tie_word_embeddings=tied)
        reference = transformers.Qwen2ForCausalLM(config).eval()
        folder = tmp / f"qwen2_{tied}"
        reference.save_pretrained(folder)
        with torch.no_grad():
            want = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
        got = {
            dtype: np.asarray(forward(load_causal_lm(folder, dtype=dtype).model, ids, mask))
            for dtype in (jnp.float32, jnp.bfloat16)
        }
        name = f"Qwen2ForCausalLM ({'tied' if tied else 'untied'})"
        rows.append(
            _errors(name, want.logits.numpy(), got[jnp.float32], got[jnp.bfloat16], mask > 0)
        )
    return rows


def vlm_rows(tmp: Path) -> list[dict]:
    rows = []
    for variant in VARIANTS:
        folder = tmp / variant
        reference, processor = tiny_vlm(folder, variant)
        for with_images in (True, False):
            inputs = reference_inputs(processor, with_images)
            with torch.no_grad():
                want = reference(**inputs).logits.numpy()
            batch = jaxrank_inputs(folder, with_images)
            shift = batch.tokens.shape[1] - want.shape[1]
            forward = jax.jit(lambda m, *x, g=batch.grids: m(*x, grids=g).logits)
            args = (batch.tokens, batch.mask, batch.positions, batch.patches)
            got = {
                dtype: np.asarray(forward(load_vlm(folder, dtype=dtype).model, *args))[:, shift:]
                for dtype in (jnp.float32, jnp.bfloat16)
            }
            real = inputs["attention_mask"].numpy() > 0
            name = f"{variant} ({'image+text' if with_images else 'text'})"
            rows.append(_errors(name, want, got[jnp.float32], got[jnp.bfloat16], real))
    return rows


def real_size_rows(tmp: Path) -> list[dict]:
    rows = []
    for name, (config_class, fields) in REAL.items():
        config = config_class(**fields)
        config.architectures = [config_class.__name__.replace("Config", "ForConditionalGeneration")]
        folder = tmp / name
        config.save_pretrained(folder)
        shapes = nnx.eval_shape(
            lambda folder=folder: VisionLanguageModel(vlm_config(folder), rngs=nnx.Rngs(0))
        )
        ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(shapes, nnx.Param)))
        model_class = getattr(transformers, config.architectures[0])
        with torch.device("meta"):
            theirs = sum(p.numel() for p in model_class(config).parameters())
        rows.append({"checkpoint": name, "jaxrank parameters": ours, "transformers": theirs})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/bench/mllm_parity.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        logits = decoder_rows(tmp) + vlm_rows(tmp)
        sizes = real_size_rows(tmp)
    print(tabulate(logits, headers="keys", floatfmt=".2e", tablefmt="github"))
    print(tabulate(sizes, headers="keys", intfmt=",", tablefmt="github"))
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    report = {"logits": logits, "real_sizes": sizes, "versions": versions}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
