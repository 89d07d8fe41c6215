"""How closely jaxrank's CLIP/SigLIP encoders follow transformers' PyTorch models, in float32 and
bfloat16: the tolerances the tests assert and docs/hf_encoders.md quotes come from this run.

    .venv/bin/python scripts/hf_parity.py --out docs/bench/hf_parity.json

Builds the tests' tiny random checkpoints (tests/helpers/hf_checkpoints.py: odd widths, 3-5
heads, patch sizes 6-10), embeds five skimage photos and four texts with both, and reports per
output the largest absolute difference (float32) and the largest cosine distance / logit error
relative to the logit range (bfloat16). Needs the test extras (torch).
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
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))
from hf_checkpoints import jaxrank_outputs, reference_inputs, tiny_checkpoint, torch_outputs

from jaxrank.models.hf import load_pretrained


def measure(kind: str, folder: Path) -> dict[str, float]:
    """fp32 max |diff| per output; bf16 max cosine distance per embedding and max logit
    error relative to the logit range."""
    family = "siglip" if kind == "siglip" else "clip"
    reference = tiny_checkpoint(folder, kind)
    pixels, ids, mask = reference_inputs(folder, family)
    want = torch_outputs(reference, pixels, ids, mask, family)
    fp32 = jaxrank_outputs(load_pretrained(folder).model, pixels, ids, mask)
    bf16 = jaxrank_outputs(load_pretrained(folder, dtype=jnp.bfloat16).model, pixels, ids, mask)
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
