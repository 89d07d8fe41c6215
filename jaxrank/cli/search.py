"""``jaxrank index build`` and ``jaxrank search``: the index of a trained run's knowledge base.

    jaxrank index build --config configs/contrastive/synthetic.py --workdir runs/default \\
        --out runs/default/kb.safetensors
    jaxrank search --index runs/default/kb.safetensors --config configs/contrastive/synthetic.py \\
        --workdir runs/default --k 10 --out runs/default/search.jsonl
    jaxrank search --index kb.safetensors --queries queries.npy --k 10 --out results.jsonl

The encoder is the contrastive run's latest checkpoint; the knowledge base is the config's
synthetic world, rendered, embedded and placed one batch at a time.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxrank import parallel, retrieval_eval
from jaxrank.configs import ConfigError
from jaxrank.distributed import is_primary
from jaxrank.search.errors import SearchError
from jaxrank.search.index import DTYPES, Index
from jaxrank.search.topk import METRICS, MODES, normalize_rows
from jaxrank.train.workdir import WorkdirError, prepare_workdir

LoadConfig = Callable[[argparse.Namespace, Sequence[str]], ml_collections.ConfigDict]
ENTRIES = ("pair", "image", "text")


class _Encoder:
    """A trained contrastive run's encoders, restored onto the config's mesh."""

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str):
        from jaxrank.contrastive.embedders import encoders
        from jaxrank.contrastive.encoder import build_world, encoder_inputs, restore

        if cfg.get("recipe", None) != "contrastive":
            raise ConfigError(
                f"config key 'recipe' is {cfg.get('recipe', None)!r}; indexing needs a "
                "'contrastive' run's encoder"
            )
        if not (Path(workdir) / "checkpoints").is_dir():
            raise WorkdirError(
                f"{workdir} holds no trained run (no checkpoints folder); train one first "
                "with jaxrank train --config ... --workdir ..."
            )
        workdir = prepare_workdir(workdir, cfg)  # refuses a run trained with another config
        self.mesh = parallel.mesh_from_config(cfg.mesh)
        self.world = build_world(cfg)
        _, graphdef, self.params = restore(cfg, workdir, self.mesh)
        self.cfg = cfg
        self._image, self._cropped, self._text = encoders(graphdef, cfg)
        self.inputs = encoder_inputs(cfg)
        self._pair = jax.jit(lambda a, b: normalize_rows(a + b))

    def entries(self, batch: dict[str, np.ndarray], entry: str) -> jax.Array:
        """Knowledge-base embeddings of one host batch, computed on the mesh."""
        images, tokens = parallel.shard_batch((batch["images"], batch["tokens"]), self.mesh)
        if entry == "image":
            return self._image(self.params, images)
        if entry == "text":
            return self._text(self.params, tokens)
        return self._pair(self._image(self.params, images), self._text(self.params, tokens))

    def queries(self, images: np.ndarray, boxes: np.ndarray, view: str) -> np.ndarray:
        """Query embeddings [Q, D] on the host: full images, or their ground-truth crops."""
        bs = self.cfg.eval.batch_size
        if view == "gt_crop":
            fn = lambda x, b: self._cropped(self.params, x, b)
            return retrieval_eval.embed_in_batches(fn, [images, boxes], bs, self.mesh)
        fn = lambda x: self._image(self.params, x)
        return retrieval_eval.embed_in_batches(fn, [images], bs, self.mesh)


def _knowledge_base(world, tokenize, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Entity images, tokenised descriptions and ids, rendered one batch at a time."""
    for start in range(0, world.num_entities, batch_size):
        ids = np.arange(start, min(start + batch_size, world.num_entities))
        yield {
            "images": np.stack([world.entity_image(int(i)) for i in ids]),
            "tokens": tokenize([world.entity_text(int(i)) for i in ids]),
            "id": ids.astype(np.int64),
        }


def _build(args: argparse.Namespace, extra: Sequence[str], load_config: LoadConfig) -> None:
    _check_out(args.out)
    cfg = load_config(args, extra)
    encoder = _Encoder(cfg, args.workdir)
    index = Index.from_encoder(
        lambda batch: encoder.entries(batch, args.entry),
        _knowledge_base(encoder.world, encoder.inputs.tokenize, cfg.eval.batch_size),
        metric=args.metric,
        dtype=args.dtype,
        num_rows=encoder.world.num_entities,
        id_key="id",
        mesh=encoder.mesh,
    )
    index.save(args.out)
    print(f"indexed {len(index)} {args.entry} entries ({index.metric}, {index.dtype}): {args.out}")


def _load_queries(path: str) -> np.ndarray:
    """The ``--queries`` file: one non-empty numeric .npy array [Q, D] (pickles refused)."""
    if not Path(path).is_file():
        raise SearchError(f"queries file {path} does not exist; expected a .npy array [Q, D]")
    try:
        queries = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise SearchError(f"{path} is not a .npy array of query embeddings ({e})") from e
    if not isinstance(queries, np.ndarray):
        raise SearchError(f"{path} holds several arrays; expected one .npy array [Q, D]")
    if queries.ndim != 2 or queries.shape[0] == 0:
        raise SearchError(
            f"{path} holds an array of shape {queries.shape}; expected [Q, D] with Q >= 1"
        )
    return queries


def _check_out(path: str) -> None:
    """Refuse an ``--out`` that cannot be written before any work is done."""
    out = Path(path)
    if out.is_dir() or not out.absolute().parent.is_dir():
        raise SearchError(f"--out {path}: expected a file path in an existing folder")


def _search(args: argparse.Namespace, extra: Sequence[str], load_config: LoadConfig) -> None:
    _check_out(args.out)
    if args.k < 1 or (args.num_queries is not None and args.num_queries < 1):
        raise SearchError(f"--k {args.k} and --num-queries {args.num_queries} must be >= 1")
    index = Index.load(args.index, metric=args.metric)
    queries = _load_queries(args.queries) if args.queries is not None else None
    entity = None
    if args.queries is not None:
        if extra:
            raise ConfigError(f"config overrides {list(extra)} need --config")
    else:
        if args.workdir is None:
            raise ConfigError("--config needs --workdir: the trained run that embeds queries")
        from jaxrank.data.synthetic import query_preset

        cfg = load_config(args, extra)
        encoder = _Encoder(cfg, args.workdir)
        n = args.num_queries or cfg.eval.num_queries
        scenes = encoder.world.queries("test", n, query_preset(args.preset))
        queries = encoder.queries(scenes["images"], scenes["boxes"], args.view)
        entity = scenes["entity"]
    result = index.search(queries, args.k, mode=args.mode, recall_target=args.recall_target)
    if is_primary():  # every process of a multi-process run holds the same results
        _write_jsonl(Path(args.out), result, entity)
    print(f"wrote the top {args.k} of {len(result.ids)} queries: {args.out}")
    if entity is not None:
        hits = (result.ids == entity[:, None]).any(axis=1).mean()
        print(f"recall@{args.k} of the {args.preset} test queries ({args.view}): {hits:.3f}")


def _write_jsonl(path: Path, result, entity: np.ndarray | None) -> None:
    with open(path, "w") as f:
        for i, (ids, scores) in enumerate(zip(result.ids, result.scores, strict=True)):
            row: dict[str, Any] = {
                "query": i,
                "ids": [int(x) for x in ids],
                "scores": [float(x) for x in scores],
            }
            if entity is not None:
                row["entity"] = int(entity[i])
            f.write(json.dumps(row) + "\n")


def add_commands(sub: Any, config_help: str, load_config: LoadConfig) -> None:
    """Register ``index build`` and ``search`` on the main parser's subcommands; each gets
    ``load_config(args, extra)`` to read ``--config`` with its ``--config.a.b=v`` overrides."""
    index = sub.add_parser("index", help="build a nearest-neighbour index file")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    build = index_sub.add_parser(
        "build", help="embed the config's knowledge base with a trained run's encoder"
    )
    build.add_argument("--config", required=True, help=config_help)
    build.add_argument("--workdir", required=True, help="the trained run (its checkpoints)")
    build.add_argument("--out", required=True, help="index file to write (.safetensors)")
    build.add_argument(
        "--entry",
        choices=ENTRIES,
        default="pair",
        help="embed each entity as image+text (normalised sum), image only or text only",
    )
    build.add_argument("--metric", choices=METRICS, default="ip")
    build.add_argument("--dtype", choices=DTYPES, default="float32", help="stored vectors")
    build.set_defaults(run=lambda a, e: _build(a, e, load_config))

    search = sub.add_parser("search", help="top-k search of an index file; writes JSONL")
    search.add_argument("--index", required=True, help="index file (.safetensors)")
    queries = search.add_mutually_exclusive_group(required=True)
    queries.add_argument("--queries", help=".npy file of query embeddings [Q, D]")
    queries.add_argument(
        "--config", help=f"{config_help}; queries: the synthetic test queries (needs --workdir)"
    )
    search.add_argument("--workdir", help="the trained run whose encoder embeds the queries")
    search.add_argument("--preset", default="default", help="synthetic query preset")
    search.add_argument("--num-queries", type=int, default=None, help="default: eval.num_queries")
    search.add_argument("--view", choices=("full", "gt_crop"), default="full")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--mode", choices=MODES, default="exact")
    search.add_argument("--recall-target", type=float, default=0.95, help="approx mode only")
    search.add_argument(
        "--metric", choices=METRICS, default=None, help="refuse an index built otherwise"
    )
    search.add_argument("--out", required=True, help="JSONL: one {query, ids, scores} a line")
    search.set_defaults(run=lambda a, e: _search(a, e, load_config))
