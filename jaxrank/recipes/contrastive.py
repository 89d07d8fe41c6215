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

from jaxrank import imaging, losses, parallel, report, retrieval_eval
from jaxrank.checkpoint import Checkpointer
from jaxrank.configs import ConfigError
from jaxrank.data.synthetic import World, WorldConfig, query_preset, world_vocabulary
from jaxrank.data.vocabulary import EOS
from jaxrank.models.dual_encoder import DualEncoder
from jaxrank.models.hf import load_pretrained
from jaxrank.models.hf.inputs import pretrained_inputs
from jaxrank.models.inputs import EncoderInputs
from jaxrank.models.presets import tiny_clip, tiny_siglip
from jaxrank.optim import adamw_warmup_cosine
from jaxrank.train_step import TrainState, jit_train_step, make_train_step
from jaxrank.trainer import fit
from jaxrank.workdir import prepare_workdir

FAMILIES = {"clip": tiny_clip, "siglip": tiny_siglip}
LOSSES = {"clip": "softmax", "siglip": "sigmoid"}


def build_world(cfg: ml_collections.ConfigDict) -> World:
    return World(WorldConfig(**cfg.world.to_dict()))


def encoder_inputs(cfg: ml_collections.ConfigDict) -> EncoderInputs:
    """Input size, pixel normalisation and tokenizer of the configured encoder: the world's
    vocabulary for jaxrank's own, the checkpoint's processor and tokenizer for a pretrained one."""
    if cfg.model.get("pretrained", ""):
        return pretrained_inputs(cfg.model.pretrained)
    vocabulary = world_vocabulary()
    return EncoderInputs(
        cfg.model.image_size,
        imaging.UNIT_MEAN,
        imaging.UNIT_STD,
        lambda texts: vocabulary.encode(list(texts), cfg.model.max_len),
    )


def _pretrained_model(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> DualEncoder:
    loaded = load_pretrained(cfg.model.pretrained, compute_dtype=cfg.model.dtype, mesh=mesh)
    if not isinstance(loaded.model, DualEncoder) or loaded.family != cfg.model.family:
        raise ConfigError(
            f"model.pretrained={cfg.model.pretrained!r} is a {loaded.architecture}; the recipe "
            f"needs a two-tower model of model.family={cfg.model.family!r}"
        )
    return loaded.model


def build_model(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> DualEncoder:
    """A fresh encoder of the configured shape, or ``model.pretrained`` (a Hugging Face folder or
    hub id) loaded onto the mesh, whose shape keys are then ignored."""
    if cfg.model.get("pretrained", ""):
        return _pretrained_model(cfg, mesh)
    model_cfg = cfg.model.to_dict()
    model_cfg.pop("pretrained", None)
    family = model_cfg.pop("family")
    if family == "clip":
        model_cfg["eos_token_id"] = EOS
    else:  # SigLIP has no image projection: its embedding width is the tower width.
        model_cfg.pop("embed_dim")
    config = FAMILIES[family](**model_cfg, vocab_size=world_vocabulary().size)
    with jax.set_mesh(mesh):
        return DualEncoder(config, rngs=nnx.Rngs(cfg.seed))


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


def knowledge_base(world: World, cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Every entity's image (uint8) and tokenised description."""
    return {
        "images": world.entity_images(world.config.image_size),
        "tokens": encoder_inputs(cfg).tokenize(world.entity_texts()),
    }


def image_embedder(graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict):
    """``(params, float pixels in [0, 255] at the model's input size) -> embeddings``: the
    scorer's image tower for callers that crop and resize themselves (Region-R1)."""
    inputs = encoder_inputs(cfg)

    def embed(params, pixels):
        return nnx.merge(graphdef, params).encode_image(inputs.normalize(pixels))

    return embed


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


def encoders(graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict):
    """Jitted ``image(params, uint8 images)``, ``cropped(params, images, boxes)`` and
    ``text(params, tokens)`` embedders."""

    inputs = encoder_inputs(cfg)

    @jax.jit
    def image(params, images):
        return nnx.merge(graphdef, params).encode_image(inputs.pixels(images))

    @jax.jit
    def cropped(params, images, boxes):
        return nnx.merge(graphdef, params).encode_image(inputs.crops(images, boxes))

    @jax.jit
    def text(params, tokens):
        return nnx.merge(graphdef, params).encode_text(tokens)

    return image, cropped, text


def knowledge_base_embeddings(
    graphdef: nnx.GraphDef,
    params: Any,
    world: World,
    cfg: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """Every entity's ``image`` and ``text`` embedding and their normalised sum ``pair``
    (Region-R1's candidate embedding, PAPERS.md §1), float32 [N, D] on the host."""
    image_fn, _, text_fn = encoders(graphdef, cfg)
    bs = cfg.eval.batch_size
    kb = knowledge_base(world, cfg)
    image = retrieval_eval.embed_in_batches(lambda x: image_fn(params, x), [kb["images"]], bs, mesh)
    text = retrieval_eval.embed_in_batches(lambda x: text_fn(params, x), [kb["tokens"]], bs, mesh)
    pair = image + text
    return {
        "pair": pair / np.linalg.norm(pair, axis=-1, keepdims=True),
        "image": image,
        "text": text,
    }


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


def setup(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
    """``(mesh, world, graphdef, initial TrainState, optimizer)`` for a config; the mesh
    defaults to the config's."""
    mesh = mesh or parallel.mesh_from_config(cfg.mesh)
    world = build_world(cfg)
    model = build_model(cfg, mesh)
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = adamw_warmup_cosine(cfg.train)
    state = jax.jit(lambda p: TrainState.create(p, optimizer, cfg.seed))(params)
    return mesh, world, graphdef, state, optimizer


def restore(
    cfg: ml_collections.ConfigDict, workdir: str | Path, mesh: jax.sharding.Mesh | None = None
) -> tuple[int, nnx.GraphDef, Any]:
    """``(step, graphdef, params)`` of a run's latest checkpoint, placed on ``mesh``."""
    _, _, graphdef, state, _ = setup(cfg, mesh)
    with Checkpointer(Path(workdir) / "checkpoints") as checkpointer:
        step, state, _ = checkpointer.restore(state)
    return step, graphdef, state.params


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
    mesh, world, graphdef, state, optimizer = setup(cfg)
    if cfg.train.batch_size % mesh.shape[parallel.DATA]:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} must be divisible by the "
            f"{mesh.shape[parallel.DATA]} devices of the data axis"
        )
    step_fn = jit_train_step(make_train_step(make_loss(graphdef, cfg), optimizer), state)
    kb = parallel.put_replicated(knowledge_base(world, cfg), mesh)
    started = time.perf_counter()
    with jax.set_mesh(mesh):
        state = fit(
            workdir=workdir,
            state=state,
            step_fn=step_fn,
            data=training_data(world, cfg),
            place_batch=lambda b: parallel.shard_batch(b, mesh),
            total_steps=cfg.train.steps,
            log_every=cfg.train.log_every,
            checkpoint_every=cfg.train.checkpoint_every,
            frozen=kb,
            samples_per_step=cfg.train.batch_size,
            profile_steps=tuple(cfg.train.get("profile_steps", ())) or None,
        )
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
