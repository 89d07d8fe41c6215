"""Region-R1 on a released benchmark (E-VQA, and InfoSeek in EchoSight's conversion to E-VQA's
CSV format; PAPERS.md §1): its questions and images, its
knowledge base and a frozen pretrained CLIP-family scorer, turned into the query sets the
synthetic world gives (images, questions, top-K pools, labels), so the MLLM recipe runs on them
unchanged.

- Queries: the CSV's single-hop rows (``data/evqa.py``), each row's first image, resized to a
  ``data.image_size`` square (the policy and the scorer both see that square; boxes are in it).
  Rows that cannot be used are skipped and counted by ``BadRows`` (``data.strict`` makes the
  first an error); a row whose gold page is not in the knowledge base is kept (it can only
  miss) and reported.
- Knowledge base: every entry of the E-VQA-format JSON (``data/wiki_kb.py``), streamed once.
  A candidate is embedded from its text, "title: first section": the released KB holds image
  URLs, not files, and the paper's rule is "image + text when both, else the one it has".
- Pools: the top ``data.pool_size`` entries by the full query image, from the sharded index;
  labels mark the gold pages. There are no ground-truth boxes, so the oracle-crop baseline is
  not reported (``has_boxes`` False).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import PIL.Image
from flax import nnx

from jaxrank import retrieval_eval
from jaxrank.configs import ConfigError
from jaxrank.data.errors import BadRows
from jaxrank.data.evqa import ImageLayout, load_id2name, read_evqa_csv, read_query_image
from jaxrank.data.wiki_kb import WikiEntry, iter_kb
from jaxrank.models.hf import load_pretrained
from jaxrank.models.hf.inputs import pretrained_inputs
from jaxrank.models.layer_stack import stacking_of
from jaxrank.search import Index

BENCHMARKS = ("evqa", "infoseek")  # InfoSeek as EchoSight converted it to E-VQA's CSV format


def entry_text(entry: WikiEntry) -> str:
    """What a candidate's text embedding reads: its title and first section."""
    first = entry.section_texts[0] if entry.section_texts else ""
    return f"{entry.title}: {first}"


class BenchmarkScorer:
    """The frozen pretrained scorer and the knowledge-base index: the interface of
    ``region_r1.Scorer`` (``params``, ``input_size``, ``embed``, ``kb``, ``index``,
    ``full_image_embeddings``) plus the entries' urls (``urls``, row order)."""

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: Path, mesh: jax.sharding.Mesh):
        if not cfg.scorer_checkpoint:
            raise ConfigError("scorer_checkpoint is empty: name a CLIP-family checkpoint")
        loaded = load_pretrained(
            cfg.scorer_checkpoint,
            compute_dtype=cfg.scorer_dtype,
            mesh=mesh,
            stacking=stacking_of(cfg, "scorer_"),
        )
        inputs = pretrained_inputs(cfg.scorer_checkpoint)
        graphdef, self.params = nnx.split(loaded.model, nnx.Param)
        self.input_size = inputs.image_size
        self.embed = lambda params, pixels: nnx.merge(graphdef, params).encode_image(
            inputs.normalize(pixels)
        )
        self._full = jax.jit(
            lambda params, images: nnx.merge(graphdef, params).encode_image(inputs.pixels(images))
        )
        text = jax.jit(lambda params, tokens: nnx.merge(graphdef, params).encode_text(tokens))
        self.bad = BadRows(strict=cfg.data.strict)
        entries = list(iter_kb(cfg.data.kb, self.bad))
        self.urls = [e.url for e in entries]
        tokens = inputs.tokenize([entry_text(e) for e in entries])
        kb = retrieval_eval.embed_in_batches(
            lambda t: text(self.params, t), [tokens], cfg.eval.batch_size, mesh
        )
        self.kb = kb / np.linalg.norm(kb, axis=-1, keepdims=True)
        self.index = Index.from_array(self.kb, metric="cosine", mesh=mesh)
        (workdir / "kb_report.json").write_text(json.dumps(self.bad.report(), indent=2))

    def full_image_embeddings(self, images: np.ndarray, batch: int, mesh) -> np.ndarray:
        return retrieval_eval.embed_in_batches(
            lambda x: self._full(self.params, x), [images], batch, mesh
        )


def image_layout(data: ml_collections.ConfigDict, id2name: str) -> ImageLayout:
    folder = lambda key: Path(data[key]) if data.get(key) else None
    return ImageLayout(
        folder("inaturalist_root"),
        folder("landmarks_root"),
        inaturalist_id2name=load_id2name(id2name) if id2name else None,
        oven_root=folder("oven_root"),
        oven_layout=data.get("oven_layout", "sharded"),
    )


def _square(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(PIL.Image.fromarray(image).resize((size, size), PIL.Image.BICUBIC))


def query_set(
    cfg: ml_collections.ConfigDict,
    scorer: BenchmarkScorer,
    split: str,
    mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
    """The ``split`` ("train" or "test") queries of ``cfg.data`` with their pools, as
    ``region_r1.query_set`` gives them, plus ``report`` (the bad rows)."""
    data = cfg.data
    bad = BadRows(strict=data.strict)
    layout = image_layout(data, data.get(f"{split}_id2name", ""))
    row_of = {url: i for i, url in enumerate(scorer.urls)}
    images, questions, gold = [], [], []
    limit = data.get(f"max_{split}_queries", 0)
    for example in read_evqa_csv(data[f"{split}_csv"], bad):
        image = read_query_image(example, layout, bad)
        if image is None:
            continue
        rows = [row_of[u] for u in example.wikipedia_urls if u in row_of]
        if not rows:
            absent = ", ".join(example.wikipedia_urls)
            bad.skip(example.where, "absent_kb_entry", f"kept as a miss: {absent}")
        images.append(_square(image, data.image_size))
        questions.append(example.question)
        gold.append(rows)
        if limit and len(images) == limit:
            break
    if not images:
        raise ConfigError(f"no usable {split} query in {data[f'{split}_csv']}: {bad.report()}")
    images = np.stack(images)
    embeddings = scorer.full_image_embeddings(images, cfg.eval.batch_size, mesh)
    pools = scorer.index.search(embeddings, min(data.pool_size, len(scorer.urls))).ids
    pad = data.pool_size - pools.shape[1]
    pools = np.pad(pools, ((0, 0), (0, pad)), constant_values=-1)
    labels = np.array([np.isin(p, g) & (p >= 0) for p, g in zip(pools, gold, strict=True)])
    side = float(data.image_size)
    return {
        "images": images,
        "boxes": np.tile(np.array([0, 0, side, side], np.float32), (len(images), 1)),
        "pool_ids": np.maximum(pools, 0).astype(np.int32),
        "labels": labels.astype(np.float32),
        "pool_valid": pools >= 0,
        "questions": questions,
        "has_boxes": False,
        "report": bad.report(),
    }
