"""Contrastive dual-encoder training on the synthetic world, then retrieval evaluation.

The trained encoder is the frozen scorer of the Region-R1 recipe: a query is an image only; a
knowledge-base entry is its image, its text, or both (``encode_pair``). Evaluation reports
Recall@K for clean, easy and cluttered queries, and for cluttered queries cropped to their
ground-truth box: the headroom a crop policy can win.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxrank import losses, parallel, retrieval_eval
from jaxrank.contrastive.embedders import encoders, knowledge_base, knowledge_base_embeddings
from jaxrank.contrastive.encoder import build_world, encoder_inputs, restore, setup
from jaxrank.data.synthetic import World, query_preset
from jaxrank.train import report
from jaxrank.train.checkpoint import Checkpointer
from jaxrank.train.stage import Stage, supervised
from jaxrank.train.workdir import prepare_workdir

LOSSES = {"clip": "softmax", "siglip": "sigmoid"}


def training_data(world: World, cfg: ml_collections.ConfigDict) -> grain.IterDataset:
    """Augmented views of shuffled entities; example i is rendered from seed i, so the stream is
    the same whatever the thread count, and each process reads its own slice of every batch
    (sliced after numbering, so i stays the global index whatever the process count)."""
    size = world.config.image_size
    per_process = cfg.train.batch_size // jax.process_count()
    ds = grain.MapDataset.range(world.num_entities).shuffle(seed=cfg.seed).repeat(None)
    ds = ds.map_with_index(
        lambda i, e: {"views": world.view(int(e), int(i), size), "entity": np.int32(e)}
    )
    ds = ds[jax.process_index() :: jax.process_count()]
    ds = ds.batch(per_process, drop_remainder=True)
    options = grain.ReadOptions(num_threads=cfg.train.data_threads, prefetch_buffer_size=4)
    return ds.to_iter_dataset(options)


def make_loss(graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict):
    """Query views against their entity's text and against its knowledge-base image."""
    family = cfg.model.family
    inputs = encoder_inputs(cfg)

    def pair_loss(a, b, model, labels):
        if LOSSES[family] == "softmax":
            return losses.softmax_contrastive_loss(a, b, model.logit_scale[...], labels)
        return losses.sigmoid_contrastive_loss(
            a, b, model.logit_scale[...], model.logit_bias[...], labels
        )

    def loss_fn(params, batch, rng, kb):
        del rng  # the views carry all the randomness
        model = nnx.merge(graphdef, params)
        ids = batch["entity"]
        queries = model.encode_image(inputs.pixels(batch["views"]))
        texts = model.encode_text(kb["tokens"][ids])
        kb_images = model.encode_image(inputs.pixels(kb["images"][ids]))
        to_text = pair_loss(queries, texts, model, ids)
        to_image = pair_loss(queries, kb_images, model, ids)
        metrics = {
            "loss_to_text": to_text,
            "loss_to_image": to_image,
            "temperature": 1.0 / jax.numpy.exp(model.logit_scale[...]),
        }
        return to_text + to_image, metrics

    return loss_fn


def evaluate(
    graphdef: nnx.GraphDef,
    params: Any,
    world: World,
    cfg: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
    """Recall@K of test queries against the knowledge base, per difficulty preset and per query
    view (full image, ground-truth crop), for each candidate representation."""
    image_fn, crop_fn, _ = encoders(graphdef, cfg)
    bs = cfg.eval.batch_size
    candidates = knowledge_base_embeddings(graphdef, params, world, cfg, mesh)
    results: dict[str, Any] = {}
    for preset in cfg.eval.presets:
        queries = world.queries("test", cfg.eval.num_queries, query_preset(preset))
        views = {
            "full": retrieval_eval.embed_in_batches(
                lambda x: image_fn(params, x), [queries["images"]], bs, mesh
            ),
            "gt_crop": retrieval_eval.embed_in_batches(
                lambda x, b: crop_fn(params, x, b),
                [queries["images"], queries["boxes"]],
                bs,
                mesh,
            ),
        }
        results[preset] = {
            view: {
                target: retrieval_eval.entity_retrieval_report(
                    emb, keys, queries["entity"], cfg.eval.ks
                )
                for target, keys in candidates.items()
            }
            for view, emb in views.items()
        }
    return results


def _markdown(results: dict[str, Any], cfg, plots: list[Path], train_info: dict) -> str:
    rows = []
    for preset, views in results.items():
        for view, targets in views.items():
            rows.append(
                {
                    "queries": preset,
                    "query view": view,
                    "R@1 (img+text)": targets["pair"]["recall@1"],
                    "R@5 (img+text)": targets["pair"]["recall@5"],
                    "MRR (img+text)": targets["pair"]["mrr"],
                    "R@1 (image)": targets["image"]["recall@1"],
                    "R@1 (text)": targets["text"]["recall@1"],
                }
            )
    columns = list(rows[0])
    lines = [
        "# Contrastive scorer on the synthetic world",
        "",
        f"{cfg.eval.num_queries} test queries per preset; knowledge base of "
        f"{cfg.world.num_entities} entities. Trained {train_info['steps']} steps "
        f"(batch {cfg.train.batch_size}, {cfg.model.family} loss) in "
        f"{train_info['train_seconds']:.0f} s on {train_info['devices']}.",
        "",
        report.table(rows, columns),
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
    ]
    return "\n".join(lines)


def _write_report(workdir: Path, results, cfg, train_info) -> None:
    plots = [
        report.plot_curves(
            workdir / "metrics.jsonl",
            ["train/loss", "train/temperature", "train/samples_per_s"],
            workdir / "training.png",
            "training",
        ),
        report.plot_bars(
            {
                preset: {view: r["pair"]["recall@1"] for view, r in views.items()}
                for preset, views in results.items()
            },
            workdir / "recall_at_1.png",
            "Recall@1 against image+text entries",
            "Recall@1",
        ),
    ]
    plots = [p for p in plots if p is not None]
    report.write_report(
        workdir,
        {"retrieval": results, "train": train_info},
        _markdown(results, cfg, plots, train_info),
    )
    print(report.table(_summary_rows(results), ["queries", "full", "gt_crop"], fmt="simple"))
    print(f"report: {workdir / 'report.md'}")


def _summary_rows(results):
    return [
        {"queries": preset, **{v: r["pair"]["recall@1"] for v, r in views.items()}}
        for preset, views in results.items()
    ]


def train_or_restore(
    cfg: ml_collections.ConfigDict, workdir: str | Path, mesh: jax.sharding.Mesh | None = None
) -> tuple[nnx.GraphDef, Any]:
    """A finished run's encoder; trains (or resumes) the run first if it is not finished.
    Later recipes use this to get their frozen scorer."""
    workdir = prepare_workdir(workdir, cfg)
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        last = checkpointer.latest_step()
    if not ((workdir / "report.json").exists() and last == cfg.train.steps):
        train_and_evaluate(cfg, workdir)
    _, graphdef, params = restore(cfg, workdir, mesh)
    return graphdef, params


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    workdir = prepare_workdir(workdir, cfg)
    mesh, world, graphdef, params = setup(cfg)
    parallel.require_divisible_batches(cfg, ("train",), mesh)
    kb = parallel.put_replicated(knowledge_base(world, cfg), mesh)
    stage = Stage(
        cfg.train,
        workdir,
        params,
        supervised(make_loss(graphdef, cfg)),
        seed=cfg.seed,
        mesh=mesh,
        frozen=kb,
    )
    started = time.perf_counter()
    state = stage.run(training_data(world, cfg))
    with jax.set_mesh(mesh):
        results = evaluate(graphdef, state.params, world, cfg, mesh)
    train_info = {
        "steps": cfg.train.steps,
        "train_seconds": time.perf_counter() - started,
        "devices": f"{len(mesh.devices.flat)} x {jax.devices()[0].device_kind}",
    }
    _write_report(workdir, results, cfg, train_info)
    return results


def evaluate_workdir(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Re-evaluate the latest checkpoint of a finished or interrupted run."""
    workdir = prepare_workdir(workdir, cfg)
    mesh = parallel.mesh_from_config(cfg.mesh)
    step, graphdef, params = restore(cfg, workdir, mesh)
    with jax.set_mesh(mesh):
        results = evaluate(graphdef, params, build_world(cfg), cfg, mesh)
    _write_report(workdir, results, cfg, {"steps": step, "train_seconds": 0.0, "devices": ""})
    return results
