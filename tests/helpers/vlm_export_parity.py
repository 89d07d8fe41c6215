"""A recipe's run folder exported by ``jaxrank export`` (merged and as a PEFT adapter), loaded
by transformers (and peft) in PyTorch, against jaxrank's forward of the same trained model on
the same inputs: logits and the last hidden states (after the final norm), both sides float32.

The inputs are two chat prompts with one image each, encoded by the run's own tokenizer and
image processor (``VLMBase.inputs``) and fed to both sides as the same arrays: what is compared
is the model, not two pre-processors."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from peft import PeftModel

from jaxrank.cli import main as cli
from jaxrank.models.hf.qwen_vl_inputs import VLMBatch
from jaxrank.vlm.export import TrainedVLM

# Both sides float32. jaxrank's matmuls at "highest": on CPU that is the default already (the
# logits are bit-identical either way), on a GPU or TPU the default would multiply in
# TF32/bfloat16. What remains is summation order (sdpa or eager attention alike).
ATOL = 1e-5


def prompt_batch(trained: TrainedVLM, texts: list[str], size: int) -> VLMBatch:
    """``texts`` (user turns) as chat prompts, each about its own random ``size``-px image."""
    inputs = trained.base.inputs
    rng = np.random.default_rng(0)
    images = [[rng.integers(0, 256, (size, size, 3), dtype=np.uint8)] for _ in texts]
    chats = [
        inputs.chat([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}])
        for t in texts
    ]
    return inputs.batch(chats, images, lengths=(64, 128, 256))


def jaxrank_outputs(trained: TrainedVLM, batch: VLMBatch, adapters: bool = True):
    """(logits, last hidden states) of jaxrank's model, adapters unmerged (as the run trained
    and evaluated it)."""
    model = trained.model(adapters=adapters)
    forward = jax.jit(lambda m, *x: m(*x, grids=batch.grids))
    with jax.default_matmul_precision("highest"):
        out = forward(model, batch.tokens, batch.mask, batch.positions, jnp.asarray(batch.patches))
    return np.asarray(out.logits), np.asarray(out.hidden)


def torch_outputs(model: torch.nn.Module, batch: VLMBatch, image_token_id: int):
    """(logits, last hidden states) of transformers' model on the same arrays. Positions are
    transformers' own M-RoPE, from the mask, the grids and ``mm_token_type_ids`` (1 at image
    placeholders, as its processor marks them; without it transformers numbers every token as
    text)."""
    tokens = np.asarray(batch.tokens, np.int64)
    inputs = {
        "input_ids": torch.from_numpy(tokens),
        "mm_token_type_ids": torch.from_numpy((tokens == image_token_id).astype(np.int64)),
        "attention_mask": torch.from_numpy(np.asarray(batch.mask, np.int64)),
        "pixel_values": torch.from_numpy(np.asarray(batch.patches, np.float32)),
        "image_grid_thw": torch.tensor(batch.grids),
    }
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return out.logits.numpy(), out.hidden_states[-1].numpy()


def model_class(folder: Path) -> type:
    """transformers' class of an exported checkpoint (its config's architecture)."""
    config = json.loads((folder / "config.json").read_text())
    return getattr(transformers, config["architectures"][0])


def export(workdir: Path, out: Path, fmt: str) -> Path:
    """``jaxrank export --workdir workdir --out out --format fmt`` (status 0)."""
    argv = ["export", "--workdir", str(workdir), "--out", str(out), "--format", fmt]
    assert cli.main(argv) == 0
    return out


def load_exported(out: Path, fmt: str) -> torch.nn.Module:
    """The merged checkpoint, or the adapter applied by peft to the base its config names."""
    if fmt == "merged":
        return model_class(out).from_pretrained(out).eval()
    base_path = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = model_class(Path(base_path)).from_pretrained(base_path).eval()
    return PeftModel.from_pretrained(base, out).eval()
