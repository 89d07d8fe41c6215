"""RAR's ranker after its ranking fine-tuning, out of a run folder: a transformers checkpoint
(the fine-tuned adapters merged, or every weight when ``finetune.train="all"``) or a PEFT
adapter. The class memory's encoder is not trained by the recipe, so there is nothing of it to
export."""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections
from flax import nnx

from jaxrank.models.hf.export_card import Artifact
from jaxrank.rar.ranker import BASE_DIR, build_ranker
from jaxrank.train.finished import finished_params
from jaxrank.train.workdir import WorkdirError
from jaxrank.vlm.export import TrainedVLM, vlm_artifact
from jaxrank.vlm.finetune import with_adapters


def _finetune_steps(workdir: Path) -> int:
    """The fine-tuning's length, as the finished run's report records it (it depends on the
    data's size, which the export does not load)."""
    report = workdir / "report.json"
    if not report.exists():
        raise WorkdirError(f"{workdir} has no report.json: the run has not finished")
    return int(json.loads(report.read_text())["info"]["finetune_steps"])


def trained_ranker(cfg: ml_collections.ConfigDict, workdir: Path, mesh) -> TrainedVLM:
    inputs_folder = workdir / BASE_DIR
    if not cfg.ranker.checkpoint and not (inputs_folder / "tokenizer.json").exists():
        raise WorkdirError(f"{inputs_folder}: the tiny ranker's tokenizer is missing")
    steps = _finetune_steps(workdir)
    ranker = build_ranker(cfg, inputs_folder, (), mesh)
    graphdef, params = nnx.split(ranker.model, nnx.Param)
    lora = cfg.finetune.train == "lora"
    rest = None
    if lora:
        graphdef, params, rest = with_adapters(cfg.lora, graphdef, params, cfg.seed)
    section = cfg.finetune.copy_and_resolve_references()
    section.steps = steps  # the schedule's length, as the recipe sets it
    params = finished_params(section, workdir / "finetune", params, cfg.seed)
    if not lora:  # every weight trained: zero adapters over it, as the recipe evaluates it
        graphdef, params, rest = with_adapters(cfg.lora, graphdef, params, cfg.seed)
    return TrainedVLM.gathered(
        ranker,
        graphdef,
        params,
        rest,
        checkpoint=cfg.ranker.checkpoint,
        inputs_folder=inputs_folder,
        adapters_trained=lora,
        base_is_checkpoint=bool(cfg.ranker.checkpoint),
        dropout=cfg.lora.dropout,
    )


def export_ranker(cfg: ml_collections.ConfigDict, workdir: Path, mesh) -> Artifact:
    trained = trained_ranker(cfg, workdir, mesh)
    base = cfg.ranker.checkpoint or "a random tiny Qwen2.5-VL-shaped model"
    how = (
        f"LoRA adapters (rank {cfg.lora.rank}, alpha {cfg.lora.alpha})"
        if trained.adapters_trained
        else "every weight"
    )
    description = (
        f"RAR's ranker (PAPERS.md section 3): {base} after ranking fine-tuning of {how}. "
        "Shown an image and the k class names its memory retrieved, it answers them re-ranked "
        "(jaxrank.rar.ranker)."
    )
    return vlm_artifact("RAR ranker", description, trained)
