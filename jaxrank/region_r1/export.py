"""Region-R1's trained models out of a run folder: the crop policy (the structured one as a
``policy_export`` folder; the vision-language one as a transformers checkpoint or a PEFT
adapter) and the frozen scorer (a CLIP / SigLIP checkpoint)."""

from __future__ import annotations

from pathlib import Path

import ml_collections
from flax import nnx

from jaxrank import imaging
from jaxrank.contrastive.encoder import restore
from jaxrank.contrastive.export import encoder_artifact, gathered
from jaxrank.data.vocabulary import PAD
from jaxrank.models.hf.export_card import Artifact
from jaxrank.region_r1.mllm_policy import BASE_DIR, build_base
from jaxrank.region_r1.mllm_recipe import warm_start
from jaxrank.region_r1.policy_export import load_policy, save_policy
from jaxrank.region_r1.recipe import build_policy
from jaxrank.train.finished import finished_params
from jaxrank.train.workdir import WorkdirError
from jaxrank.vlm.export import TrainedVLM, vlm_artifact
from jaxrank.vlm.finetune import with_adapters


def export_scorer(cfg: ml_collections.ConfigDict, workdir: Path, mesh) -> Artifact:
    """The frozen scorer the run trained (or borrowed from ``scorer_workdir``)."""
    scorer_dir = Path(cfg.scorer_workdir) if cfg.scorer_workdir else workdir / "scorer"
    if not scorer_dir.is_dir():
        raise WorkdirError(f"{scorer_dir}: no scorer run folder")
    step, graphdef, params = restore(cfg.scorer, scorer_dir, mesh)
    description = (
        f"Region-R1's frozen scorer: a {cfg.scorer.model.family.upper()}-style dual encoder "
        f"trained contrastively for {step} steps on the synthetic world; it embeds the query "
        "(or its crop) and the knowledge-base entries the policy's crops are ranked against."
    )
    return encoder_artifact(cfg.scorer, gathered(graphdef, params), "Region-R1 scorer", description)


def export_structured_policy(cfg: ml_collections.ConfigDict, workdir: Path, mesh) -> Artifact:
    """The structured recipe's r-GRPO-trained crop policy."""
    _, template = nnx.split(build_policy(cfg, mesh), nnx.Param)
    params = finished_params(cfg.train, workdir, template, cfg.seed)
    policy = gathered(nnx.graphdef(build_policy(cfg, mesh)), params)
    inputs = {
        "image_size": cfg.policy.image_size,
        "pixels": "uint8 RGB scaled to [0, 1], bilinear-resized to image_size, normalised",
        "mean": list(imaging.UNIT_MEAN),
        "std": list(imaging.UNIT_STD),
        "tokenizer": "jaxrank.data.synthetic.world_vocabulary()",
        "pad_id": PAD,
        "max_len": policy.config.text.max_len,
    }

    def write(folder: Path, fmt: str, max_shard_bytes: int | None) -> None:
        save_policy(policy, folder, inputs)

    def usage_text(fmt: str) -> str:
        return (
            "from jaxrank.region_r1.policy_export import load_policy\n\n"
            'policy, inputs = load_policy("THIS_FOLDER")\n'
            "out = policy(pixels, question_ids, question_ids != inputs['pad_id'])\n"
            "# out.decision_logits [B, 2] (full image / crop), out.box_logits [B, 4, bins]"
        )

    description = (
        f"Region-R1's structured crop policy (PAPERS.md section 1), trained {cfg.train.steps} "
        "r-GRPO steps against a frozen scorer: an image tower, a question tower and joint "
        "layers read out a crop-or-not decision and a box over "
        f"{cfg.policy.num_bins} bins per coordinate. It has no transformers counterpart: "
        "safetensors of its parameters, policy_config.json, and jaxrank's loader "
        f"(`{load_policy.__module__}.load_policy`)."
    )
    return Artifact("Region-R1 structured crop policy", description, write, usage_text)


def trained_mllm_policy(cfg: ml_collections.ConfigDict, workdir: Path, mesh) -> TrainedVLM:
    """The MLLM recipe's policy: the warm-started base and the r-GRPO-trained adapters."""
    source = Path(cfg.warm_start_workdir) if cfg.warm_start_workdir else workdir
    inputs_folder = source / BASE_DIR
    if not cfg.policy.checkpoint and not (inputs_folder / "tokenizer.json").exists():
        raise WorkdirError(f"{inputs_folder}: the tiny policy's tokenizer is missing")
    base = build_base(cfg, source, [], mesh)
    graphdef, params = warm_start(cfg, source, base, None, mesh)
    graphdef, adapters, rest = with_adapters(cfg.lora, graphdef, params, cfg.seed)
    adapters = finished_params(cfg.train, workdir, adapters, cfg.seed)
    return TrainedVLM.gathered(
        base,
        graphdef,
        adapters,
        rest,
        checkpoint=cfg.policy.checkpoint,
        inputs_folder=inputs_folder,
        adapters_trained=True,
        base_is_checkpoint=bool(cfg.policy.checkpoint) and cfg.sft.steps == 0,
        dropout=cfg.lora.dropout,
    )


def export_mllm_policy(cfg: ml_collections.ConfigDict, workdir: Path, mesh) -> Artifact:
    """The MLLM recipe's LoRA-trained vision-language crop policy."""
    trained = trained_mllm_policy(cfg, workdir, mesh)
    base = cfg.policy.checkpoint or "a random tiny Qwen2.5-VL-shaped model"
    warm = f", warm-started by {cfg.sft.steps} supervised steps" if cfg.sft.steps else ""
    description = (
        f"Region-R1's vision-language crop policy (PAPERS.md section 1): {base}{warm}, then "
        f"{cfg.train.steps} token-level r-GRPO steps on LoRA adapters (rank {cfg.lora.rank}, "
        f"alpha {cfg.lora.alpha}). It answers `NO_CROP_NEEDED` or an `image_zoom_in_tool` "
        "call with a box, prompted by jaxrank.region_r1.crop_tool's system prompt."
    )
    return vlm_artifact("Region-R1 vision-language crop policy", description, trained)
