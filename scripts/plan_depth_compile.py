"""Compile seconds and XLA's memory of Qwen2.5-VL-3B's decoder (real widths, growing depth)
with its layers unrolled (a Python loop: depth copies in the program) against scanned and
rematerialised (``models.layer_stack``: one copy, compiled once): the forward and backward of
a next-token loss, and a forward, from abstract parameters on one CPU device.

    .venv/bin/python scripts/plan_depth_compile.py --out docs/bench/plan_depth.json

Both columns: same shapes (batch 1, 256 tokens, float32), same compiler options
(``perf.plan.FAST_COMPILE``), one process, one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxrank.models.hf.published import vlm_preset
from jaxrank.models.layer_stack import Stacking
from jaxrank.models.lm import CausalLM
from jaxrank.perf import plan
from jaxrank.perf.plan import abstract
from jaxrank.train import report

CHECKPOINT = "Qwen/Qwen2.5-VL-3B-Instruct"
TOKENS = 256


def measure(depth: int, stacking: Stacking, mesh: Mesh) -> list[dict]:
    config = dataclasses.replace(vlm_preset(CHECKPOINT).lm, depth=depth, stacking=stacking)
    model = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)
    params = abstract(params, mesh)
    tokens = jax.ShapeDtypeStruct((1, TOKENS), jnp.int32)

    def loss(params, tokens):
        logits = nnx.merge(graphdef, params)(tokens).logits
        return -jnp.mean(jax.nn.log_softmax(logits[:, :-1])[..., 0])

    programs = {"forward+backward": jax.jit(jax.grad(loss)), "forward": jax.jit(loss)}
    rows = []
    for name, fn in programs.items():
        figures = plan.compile_program(fn, (params, tokens), mesh)
        rows.append(
            {
                "program": name,
                "depth": depth,
                "layers": "scanned+remat" if stacking.scan else "unrolled",
                "compile_s": round(figures.compile_s, 2),
                "temporaries_gib": round(figures.temporaries / plan.GIB, 3),
                "xla_peak_gib": round(figures.peak / plan.GIB, 3),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--out", default="docs/bench/plan_depth.json")
    args = parser.parse_args()
    mesh = Mesh(jax.devices()[:1], ("data",))
    started = time.time()
    rows = [
        row
        for depth in args.depths
        for stacking in (Stacking(), Stacking(scan=True, remat=True))
        for row in measure(depth, stacking, mesh)
    ]
    rows.sort(key=lambda r: (r["program"], r["layers"], r["depth"]))
    print(report.table(rows, list(rows[0])))
    result = {
        "command": "python scripts/plan_depth_compile.py --depths "
        + " ".join(map(str, args.depths)),
        "model": f"{CHECKPOINT} decoder, real widths; batch 1 x {TOKENS} tokens, float32",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
        "seconds": round(time.time() - started, 1),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
