"""``jaxrank convert``: check that a Hugging Face checkpoint loads into jaxrank, report what it
became, and optionally write it back out (safetensors only, another dtype, sharded files).

    jaxrank convert openai/clip-vit-base-patch16
    jaxrank convert ./siglip-base --dtype bfloat16 --out ./siglip-base-bf16 --shard-mb 500
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax.numpy as jnp

from jaxrank.configs import ConfigError
from jaxrank.train import report

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _tower_rows(summary: dict) -> list[dict]:
    rows = []
    for name, embed in (("vision", "vision_embed_dim"), ("text", "text_embed_dim")):
        tower = summary[name]
        if tower is None:
            continue
        size = tower.get("image_size", tower.get("max_len"))
        rows.append(
            {
                "tower": name,
                "width": tower["width"],
                "depth": tower["depth"],
                "heads": tower["heads"],
                "mlp": tower["mlp_dim"],
                "act": tower["act"],
                "input": size,
                "pool": tower["pool"],
                "projection": summary[embed] or "-",
            }
        )
    return rows


def _convert(args: argparse.Namespace, extra: list[str]) -> None:
    from jaxrank.models.hf import load_pretrained, save_pretrained

    if extra:
        raise ConfigError(f"unrecognised arguments {extra}")
    for flag, path in (("--json", args.json), ("--out", args.out)):
        if path and not Path(path).absolute().parent.is_dir():
            raise ConfigError(f"{flag} {path}: its folder does not exist; create it first")
    loaded = load_pretrained(
        args.source,
        tower=args.tower,
        dtype=DTYPES[args.dtype],
        revision=args.revision,
        ignore_unused=args.ignore_unused,
    )
    summary = loaded.summary()
    print(
        f"{summary['architecture']} ({summary['family']}) from {summary['folder']}\n"
        f"-> jaxrank {summary['module']}: {summary['parameters']:,} parameters as "
        f"{summary['dtype']}, {summary['tensors_loaded']} tensors loaded, "
        f"{summary['tensors_skipped']} skipped, {len(summary['tensors_ignored'])} ignored"
    )
    rows = _tower_rows(summary)
    print(report.table(rows, list(rows[0])))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    if args.out:
        shard = None if args.shard_mb is None else int(args.shard_mb * 2**20)
        save_pretrained(loaded.model, args.out, max_shard_bytes=shard)
        print(f"wrote {args.out}")


def add_command(sub: argparse._SubParsersAction) -> None:
    convert = sub.add_parser(
        "convert", help="load a Hugging Face CLIP/SigLIP checkpoint and report it"
    )
    convert.add_argument("source", help="checkpoint folder or hub id (needs network or cache)")
    convert.add_argument("--tower", choices=("image", "text"), help="load one tower only")
    convert.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    convert.add_argument("--revision", help="hub branch, tag or commit")
    convert.add_argument(
        "--ignore-unused", action="store_true", help="skip tensors jaxrank has no place for"
    )
    convert.add_argument("--json", help="write the load summary as JSON here")
    convert.add_argument("--out", help="write the loaded encoder back out as a HF folder")
    convert.add_argument("--shard-mb", type=float, help="with --out: max MiB per weights file")
    convert.set_defaults(run=_convert)
