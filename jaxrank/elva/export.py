"""ELVA's trained models out of a run folder: the fast path's RL-trained dual encoder (a CLIP /
SigLIP checkpoint) and the generative route's [RET] embedder (a transformers checkpoint with
``[RET]`` in its tokenizer, or a PEFT adapter)."""

from __future__ import annotations

from pathlib import Path

import ml_collections
from flax import nnx

from jaxrank.contrastive.encoder import build_model
from jaxrank.contrastive.export import encoder_artifact, gathered
from jaxrank.elva.generative_recipe import CONTRASTIVE_DIR, Embedder, contrastive_stage, rl_model
from jaxrank.elva.recipe import build_head
from jaxrank.elva.ret_embedder import BASE_DIR, RET, build_embedder
from jaxrank.models.hf.export_card import Artifact
from jaxrank.train.checkpoint import Checkpointer
from jaxrank.train.finished import finished_params
from jaxrank.train.workdir import WorkdirError
from jaxrank.vlm.export import TrainedVLM, vlm_artifact


def export_encoder(cfg: ml_collections.ConfigDict, workdir: Path, mesh) -> Artifact:
    """The fast path's encoder after its RL stage (the Gaussian head, which only samples
    around the encoder's embedding during training, is left out)."""
    graphdef, encoder = nnx.split(build_model(cfg, mesh), nnx.Param)
    _, head = build_head(cfg, cfg.model.embed_dim, mesh)
    params = finished_params(cfg.train, workdir, {"encoder": encoder, "head": head}, cfg.seed)
    description = (
        f"ELVA's fast-path embedder (PAPERS.md section 2): a {cfg.model.family.upper()}-style "
        f"dual encoder trained {cfg.contrastive.steps} contrastive steps, then {cfg.train.steps} "
        "GRPO steps through a Gaussian head over its query embedding. A query embeds as "
        "jaxrank.elva.task_embedding.query_embedding combines these towers per task."
    )
    model = gathered(graphdef, params["encoder"])
    return encoder_artifact(cfg, model, "ELVA fast-path encoder", description)


def _contrastive_finished(cfg: ml_collections.ConfigDict, workdir: Path) -> None:
    shared = cfg.get("contrastive_workdir", "")
    directory = Path(shared) if shared else workdir / CONTRASTIVE_DIR
    with Checkpointer(directory / "checkpoints") as checkpointer:
        if checkpointer.latest_step() != cfg.contrastive.steps:
            raise WorkdirError(f"{directory} holds no finished contrastive stage")


def trained_embedder(cfg: ml_collections.ConfigDict, workdir: Path, mesh) -> TrainedVLM:
    """The generative route's embedder: the contrastive model and the RL adapters on it."""
    inputs_folder = workdir / BASE_DIR
    if not cfg.embedder.checkpoint and not (inputs_folder / "tokenizer.json").exists():
        raise WorkdirError(f"{inputs_folder}: the tiny embedder's tokenizer is missing")
    _contrastive_finished(cfg, workdir)  # else contrastive_stage would train it
    base = build_embedder(cfg.embedder, inputs_folder, [], cfg.seed, mesh)
    model = nnx.split(base.model, nnx.Param)
    contrastive = contrastive_stage(cfg, workdir, None, Embedder(cfg, base, mesh), model)
    graphdef, adapters, rest = rl_model(cfg, contrastive)
    if cfg.train.steps:
        adapters = finished_params(cfg.train, workdir, adapters, cfg.seed)
    return TrainedVLM.gathered(
        base,
        graphdef,
        adapters,
        rest,
        checkpoint=cfg.embedder.checkpoint,
        inputs_folder=inputs_folder,
        adapters_trained=bool(cfg.train.steps),
        base_is_checkpoint=False,  # the contrastive stage changed it
        dropout=cfg.lora.dropout,
    )


def export_embedder(cfg: ml_collections.ConfigDict, workdir: Path, mesh) -> Artifact:
    """The generative route's LoRA-trained [RET] embedder."""
    trained = trained_embedder(cfg, workdir, mesh)
    base = cfg.embedder.checkpoint or "a random tiny Qwen2.5-VL-shaped model"
    description = (
        f"ELVA's generative embedder (PAPERS.md section 2): {base} with a `{RET}` token, "
        f"trained {cfg.contrastive.steps} contrastive steps ({cfg.contrastive.train}) then "
        f"{cfg.train.steps} GRPO steps on LoRA adapters (rank {cfg.lora.rank}, alpha "
        f"{cfg.lora.alpha}). It writes a short summary of its input and ends it with `{RET}`; "
        f"the last layer's hidden state at `{RET}` is the embedding (jaxrank.elva.ret_embedder)."
    )
    return vlm_artifact("ELVA generative [RET] embedder", description, trained)
