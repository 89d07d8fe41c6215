"""A recipe's LoRA-trained vision-language model out of its run folder, as transformers and PEFT
load it: ``merged`` (the adapters folded into the base, a full checkpoint) or ``adapter`` (a
PEFT folder for the model the adapters were trained on).

Region-R1's crop policy, RAR's ranker and ELVA's generative embedder all end as
``(graphdef, adapters, rest)`` over a ``VLMBase``; ``TrainedVLM`` is that, gathered to this
host, plus where the base came from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrank import parallel
from jaxrank.configs import ConfigError
from jaxrank.models.hf.export_card import Artifact
from jaxrank.models.hf.export_decoder import decoder_rules, save_decoder, save_vlm
from jaxrank.models.hf.export_peft import save_adapter
from jaxrank.models.lora import adapters_off, join_lora, merge_lora
from jaxrank.vlm.base import VLMBase

FORMATS = ("merged", "adapter")
BASE_SUBFOLDER = "base"  # an adapter export's base, when no published checkpoint is it


def transformers_module(name: str) -> str:
    """The module path transformers (v4.52 on) builds for a Qwen2-VL checkpoint module name in
    either layout (``model.layers.0.mlp.up_proj`` -> ``model.language_model.layers...``)."""
    if name.startswith(("model.language_model.", "model.visual.", "lm_head")):
        return name
    if name.startswith("visual."):
        return "model." + name
    return "model.language_model." + name.removeprefix("model.")


@dataclasses.dataclass
class TrainedVLM:
    """``graphdef`` / ``adapters`` / ``rest`` as ``split_lora`` gives them. ``checkpoint`` is
    the published checkpoint the run started from ("" for a tiny random model, whose tokenizer
    and processor are in ``inputs_folder``); ``adapters_trained`` says whether the last stage
    trained the adapters (else they are zero and only ``merged`` means anything);
    ``base_is_checkpoint`` whether the adapters sit on ``checkpoint`` unchanged."""

    base: VLMBase
    graphdef: nnx.GraphDef
    adapters: Any
    rest: Any
    checkpoint: str
    inputs_folder: Path
    adapters_trained: bool
    base_is_checkpoint: bool
    dropout: float = 0.0

    @classmethod
    def gathered(cls, base: VLMBase, graphdef, adapters, rest, **where) -> TrainedVLM:
        """The parameters whole on this host's first device (gathered from every process, a
        collective), whatever mesh the run used."""
        on_host = lambda tree: jax.tree.map(jnp.asarray, parallel.to_host(tree))
        return cls(base, graphdef, on_host(adapters), on_host(rest), **where)

    def model(self, adapters: bool = True) -> nnx.Module:
        """The model with adapters (``adapters``) or without, unmerged."""
        chosen = self.adapters if adapters else adapters_off(self.adapters)
        return join_lora(self.graphdef, chosen, self.rest)


def _write_full(trained: TrainedVLM, model, folder: Path, max_shard_bytes: int | None) -> None:
    tokenizer = trained.base.inputs.tokenizer
    if trained.checkpoint:
        save_decoder(model, folder, base=trained.checkpoint, max_shard_bytes=max_shard_bytes)
    else:
        save_vlm(
            model,
            folder,
            tokenizer=tokenizer,
            files_from=trained.inputs_folder,
            max_shard_bytes=max_shard_bytes,
        )
    tokenizer.save_pretrained(folder)  # with the tokens the run added (ELVA's [RET])


def write_merged(trained: TrainedVLM, folder: Path, max_shard_bytes: int | None = None) -> None:
    """A transformers checkpoint of the base architecture, the adapters merged in."""
    _write_full(trained, merge_lora(trained.model()), folder, max_shard_bytes)


def write_adapter(trained: TrainedVLM, folder: Path, max_shard_bytes: int | None = None) -> None:
    """PEFT's adapter folder, with the tokenizer; when the adapters sit on a model the run
    trained itself (a tiny random model, a warm start), that model is written to ``base/``."""
    if not trained.adapters_trained:
        raise ConfigError(
            "this run's last stage trained every weight, not LoRA adapters: export it with "
            "--format merged"
        )
    model = trained.model()
    base_model = trained.checkpoint
    if not trained.base_is_checkpoint:
        base_folder = folder / BASE_SUBFOLDER
        _write_full(
            trained, merge_lora(trained.model(adapters=False)), base_folder, max_shard_bytes
        )
        base_model = str(base_folder.resolve())
    rules = decoder_rules(model, trained.checkpoint or None)
    save_adapter(
        model,
        folder,
        rules,
        base_model=base_model,
        module_name=transformers_module,
        dropout=trained.dropout,
    )
    trained.base.inputs.tokenizer.save_pretrained(folder)


def write_vlm(trained: TrainedVLM, folder: Path, fmt: str, max_shard_bytes: int | None = None):
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {FORMATS}")
    (write_merged if fmt == "merged" else write_adapter)(trained, folder, max_shard_bytes)


def usage(fmt: str, trained: TrainedVLM) -> str:
    """The model card's loading snippet."""
    cls = "Qwen2_5_VLForConditionalGeneration"
    if trained.base.model.config.vision.variant == "qwen2_vl":
        cls = "Qwen2VLForConditionalGeneration"
    lines = [f"from transformers import AutoTokenizer, {cls}", ""]
    if fmt == "merged":
        lines += [f'model = {cls}.from_pretrained("THIS_FOLDER")']
    else:
        base = trained.checkpoint if trained.base_is_checkpoint else "THIS_FOLDER/base"
        lines += [
            "from peft import PeftModel",
            "",
            f'base = {cls}.from_pretrained("{base}")',
            'model = PeftModel.from_pretrained(base, "THIS_FOLDER")',
        ]
    return "\n".join(
        [
            *lines,
            'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")',
            '# Inputs with images: AutoProcessor.from_pretrained("THIS_FOLDER")\'s, whose',
            "# mm_token_type_ids give image tokens their M-RoPE positions (without them",
            "# transformers numbers every token as text).",
        ]
    )


def vlm_artifact(title: str, description: str, trained: TrainedVLM) -> Artifact:
    """``trained`` as ``jaxrank export`` writes it (``merged`` by default, or ``adapter``)."""
    return Artifact(
        title,
        description,
        lambda folder, fmt, shard: write_vlm(trained, folder, fmt, shard),
        lambda fmt: usage(fmt, trained),
        FORMATS,
    )
