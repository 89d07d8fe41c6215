"""How closely jaxrank's CLIP/SigLIP encoders follow transformers' PyTorch models, in float32 and
bfloat16: the tolerances the tests assert and docs/hf_encoders.md quotes come from this run.

    .venv/bin/python scripts/hf_parity.py --out docs/bench/hf_parity.json

Builds the tests' tiny random checkpoints (tests/hf_checkpoints.py: odd widths, 3-5 heads, patch
sizes 6-10), embeds five skimage photos and four texts with both, and reports per output the
largest absolute difference (float32) and the largest cosine distance / logit error relative to
the logit range (bfloat16). Needs the test extras (torch).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx
from PIL import Image
from skimage import data as skdata
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hf_checkpoints import tiny_checkpoint

from jaxrank.models.hf import load_pretrained

PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket")
TEXTS = ["a photo of a cat", "the dog", "a cat of the dog photo, and the cat", "photo"]


def _inputs(folder: Path, clip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """transformers' own pre-processing and tokenisation, so only the models are compared."""
    images = [Image.fromarray(getattr(skdata, name)()) for name in PHOTOS]
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images=images, return_tensors="np")["pixel_values"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    config = transformers.AutoConfig.from_pretrained(folder).text_config
    length = config.max_position_embeddings
    encoded = tokenizer(TEXTS, padding="max_length", max_length=length, truncation=True)
    ids = np.asarray(encoded["input_ids"])
    mask = np.asarray(encoded["attention_mask"]) if clip else np.ones_like(ids)
    return pixels, ids, mask


def _torch_outputs(model, pixels, ids, mask, clip: bool) -> dict[str, np.ndarray]:
    kwargs = {"attention_mask": torch.tensor(mask)} if clip else {}
    with torch.no_grad():
        out = model(pixel_values=torch.tensor(pixels), input_ids=torch.tensor(ids), **kwargs)
    return {
        "image": out.image_embeds.numpy(),
        "text": out.text_embeds.numpy(),
        "logits": out.logits_per_text.numpy(),
    }


def _jaxrank_outputs(folder: Path, dtype, pixels, ids, mask) -> dict[str, np.ndarray]:
    model = load_pretrained(folder, dtype=dtype).model
    out = nnx.jit(lambda m, *xs: m(*xs))(
        model, jnp.asarray(pixels.transpose(0, 2, 3, 1)), jnp.asarray(ids), jnp.asarray(mask)
    )
    return {
        "image": np.asarray(out.image_embeds),
        "text": np.asarray(out.text_embeds),
        "logits": np.asarray(out.logits_per_text()),
    }


def measure(kind: str, folder: Path) -> dict[str, float]:
    """fp32 max |diff| per output; bf16 max cosine distance per embedding and max logit
    error relative to the logit range."""
    clip = kind != "siglip"
    reference = tiny_checkpoint(folder, kind)
    pixels, ids, mask = _inputs(folder, clip)
    want = _torch_outputs(reference, pixels, ids, mask, clip)
    fp32 = _jaxrank_outputs(folder, jnp.float32, pixels, ids, mask)
    bf16 = _jaxrank_outputs(folder, jnp.bfloat16, pixels, ids, mask)
    spread = float(want["logits"].max() - want["logits"].min())
    row = {"checkpoint": kind}
    for name in ("image", "text", "logits"):
        row[f"fp32 max|d| {name}"] = float(np.abs(fp32[name] - want[name]).max())
    for name in ("image", "text"):
        row[f"bf16 max 1-cos {name}"] = float(1 - np.sum(bf16[name] * want[name], -1).min())
    row["bf16 logit err/range"] = float(np.abs(bf16["logits"] - want["logits"]).max() / spread)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/bench/hf_parity.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(kind, Path(tmp) / kind) for kind in ("clip", "clip_legacy", "siglip")]
    print(tabulate(rows, headers="keys", floatfmt=".2e", tablefmt="github"))
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    Path(args.out).write_text(json.dumps({"rows": rows, "versions": versions}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
