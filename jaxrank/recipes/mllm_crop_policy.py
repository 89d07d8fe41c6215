"""Region-R1's vision-language crop policy on the host side: its base model (a released
Qwen2-VL / Qwen2.5-VL checkpoint, or a random tiny one with a tokenizer trained on the recipe's
own texts for CPU runs), its prompts, its supervised targets and the reading of what it wrote.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxrank import crop_tool
from jaxrank.models.hf.qwen2_vl import load_vlm
from jaxrank.models.hf.qwen_tokenizer import train_qwen_style_tokenizer
from jaxrank.models.hf.qwen_vl_inputs import QwenVLInputs
from jaxrank.models.hf.qwen_vl_processor import smart_resize
from jaxrank.models.lm import LMConfig
from jaxrank.models.qwen_vision import QwenVisionConfig
from jaxrank.models.vlm import VisionLanguageModel, VLMConfig

BASE_DIR = "policy_base"  # the tiny policy's tokenizer and image processor, in the workdir


def completion_text(decision: int, box: Sequence[float] | None, label: str = "target") -> str:
    """A correctly formatted answer (the supervised warm start's target): ``NO_CROP_NEEDED``,
    or one tool call with ``box`` rounded to whole pixels of the model's frame."""
    if decision == crop_tool.FULL:
        return crop_tool.NO_CROP
    arguments = {"bbox_2d": [round(float(v)) for v in box], "label": label}
    call = json.dumps({"name": crop_tool.TOOL_NAME, "arguments": arguments})
    return f"{crop_tool.CALL_OPEN}{call}{crop_tool.CALL_CLOSE}"


def _corpus(questions: Sequence[str], image_size: int) -> list[str]:
    """Texts the tiny tokenizer is trained on: the system prompt, the user turns, and answers
    with every coordinate the frame can hold."""
    answers = [
        completion_text(crop_tool.REGION, (x, x // 2, image_size - x, image_size - x // 2))
        for x in range(image_size + 1)
    ]
    prompts = (crop_tool.SYSTEM_PROMPT, crop_tool.SHORT_SYSTEM_PROMPT, crop_tool.NO_CROP)
    return [*prompts, *questions, *answers]


def _write_tiny_base(cfg: ml_collections.ConfigDict, folder: Path, questions: Sequence[str]):
    folder.mkdir(parents=True, exist_ok=True)
    tiny, size = cfg.policy.tiny, cfg.policy.image_size
    train_qwen_style_tokenizer(_corpus(questions, size), tiny.vocab_size, folder)
    processor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "patch_size": tiny.patch_size,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "min_pixels": size * size,
        "max_pixels": size * size,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


def tiny_vlm_config(tiny: ml_collections.ConfigDict, vocab_size: int, image_token_id: int):
    """A Qwen2.5-VL-shaped model of ``tiny``'s sizes (window attention off: images are small)."""
    half = tiny.width // tiny.heads // 2  # M-RoPE sections (t, h, w) split the rotary half
    side = 3 * half // 8  # Qwen2-VL's proportions: (16, 24, 24) of 64
    lm = LMConfig(
        vocab_size=vocab_size,
        width=tiny.width,
        depth=tiny.depth,
        heads=tiny.heads,
        kv_heads=tiny.kv_heads,
        mlp_dim=tiny.mlp_dim,
        rope_theta=10_000.0,
        tie_embeddings=True,
        mrope_section=(half - 2 * side, side, side),
    )
    vision = QwenVisionConfig(
        variant="qwen2_5_vl",
        depth=tiny.vision_depth,
        width=tiny.vision_width,
        heads=tiny.vision_heads,
        mlp_dim=2 * tiny.vision_width,
        out_width=tiny.width,
        act="silu",
        patch_size=tiny.patch_size,
    )
    return VLMConfig(lm, vision, image_token_id)


@dataclasses.dataclass
class CropPolicyBase:
    """The policy's model before LoRA, and what turns queries into its inputs."""

    model: VisionLanguageModel
    inputs: QwenVLInputs
    image_size: int  # queries are resized to this square before the processor
    system_prompt: str = crop_tool.SYSTEM_PROMPT
    prompt_lengths: tuple[int, ...] = (128, 256, 512, 1024, 2048)  # left-padding buckets

    @property
    def frame(self) -> tuple[int, int]:
        """(height, width) of the image as the model sees it: boxes are written in this frame."""
        images = self.inputs.images
        size = self.image_size
        return smart_resize(size, size, images.factor, images.min_pixels, images.max_pixels)

    @property
    def grid(self) -> tuple[int, int, int]:
        height, width = self.frame
        return (1, height // self.inputs.images.patch_size, width // self.inputs.images.patch_size)

    def token_ids(self, text: str) -> list[int]:
        return self.inputs.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompts(self, questions: Sequence[str], images: np.ndarray) -> dict[str, np.ndarray]:
        """Host arrays of ``vlm_policy``'s batch for the queries (positions row-major:
        ``[B, 3, P]``, so every leaf shards by rows)."""
        texts = [self.inputs.chat(crop_tool.conversation(q, self.system_prompt)) for q in questions]
        resized = [[_resize(image, self.image_size)] for image in images]
        encoded = self.inputs.batch(texts, resized, lengths=self.prompt_lengths)
        patches = encoded.patches.reshape(len(texts), -1, encoded.patches.shape[-1])
        return {
            "tokens": encoded.tokens,
            "mask": encoded.mask,
            "positions": encoded.positions.transpose(1, 0, 2),
            "patches": patches,
        }

    def targets(self, texts: Sequence[str], length: int) -> dict[str, np.ndarray]:
        """Completions ``[B, length]`` (each text then the end-of-turn token) and their mask."""
        eos = self.inputs.tokenizer.eos_token_id
        rows = [[*self.token_ids(t)[: length - 1], eos] for t in texts]
        tokens = np.zeros((len(rows), length), np.int32)
        mask = np.zeros((len(rows), length), bool)
        for i, row in enumerate(rows):
            tokens[i, : len(row)], mask[i, : len(row)] = row, True
        return {"completion": tokens, "completion_mask": mask}

    def read(self, tokens: np.ndarray, mask: np.ndarray, original_size: tuple[int, int]):
        """``crop_tool.actions_from_completions`` of sampled tokens ``[N, L]``: decisions,
        boxes in the original image's pixels and the parser's outcome counts."""
        texts = self.inputs.tokenizer.batch_decode(
            [row[keep] for row, keep in zip(tokens, mask, strict=True)], skip_special_tokens=True
        )
        return crop_tool.actions_from_completions(
            texts, [self.frame] * len(texts), [original_size] * len(texts)
        )


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == image.shape[1] == size:
        return image
    resized = jax.image.resize(jnp.asarray(image, jnp.float32), (size, size, 3), "bilinear")
    return np.asarray(jnp.clip(jnp.round(resized), 0, 255), np.uint8)


def build_base(
    cfg: ml_collections.ConfigDict,
    workdir: Path,
    questions: Sequence[str],
    mesh: jax.sharding.Mesh,
) -> CropPolicyBase:
    """``cfg.policy.checkpoint`` (folder or hub id) when set; else the tiny random policy, its
    tokenizer trained on ``questions`` and the prompts once and kept in ``<workdir>/policy_base``
    (a rerun reuses it, so token ids never change under a checkpoint)."""
    policy = cfg.policy
    system = crop_tool.SHORT_SYSTEM_PROMPT if policy.short_system_prompt else None
    system = system or crop_tool.SYSTEM_PROMPT
    if policy.checkpoint:
        loaded = load_vlm(policy.checkpoint, dtype=jnp.dtype(policy.dtype), mesh=mesh)
        inputs = QwenVLInputs.from_pretrained(policy.checkpoint)
        return CropPolicyBase(loaded.model, inputs, policy.image_size, system)
    folder = workdir / BASE_DIR
    if not (folder / "tokenizer.json").exists():
        _write_tiny_base(cfg, folder, questions)
    inputs = QwenVLInputs.from_pretrained(folder)
    config = tiny_vlm_config(policy.tiny, len(inputs.tokenizer), inputs.image_token_id)
    with jax.set_mesh(mesh):
        model = VisionLanguageModel(config, rngs=nnx.Rngs(cfg.seed))
    return CropPolicyBase(model, inputs, policy.image_size, system)
