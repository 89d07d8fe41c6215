"""A vision-language model as a recipe holds it: a released Qwen2-VL / Qwen2.5-VL checkpoint,
or, for CPU runs, a random tiny Qwen2.5-VL-shaped model whose byte-level BPE tokenizer is
trained on the recipe's own texts. Region-R1's crop policy and RAR's ranker both build on it;
they differ only in the conversations they write and in how they read the answers.

The tiny model's tokenizer and image processor are written once into a folder (a rerun reuses
them, so token ids never change under a checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxrank.configs import ConfigError
from jaxrank.models.hf.qwen2_vl import load_vlm
from jaxrank.models.hf.qwen_tokenizer import train_qwen_style_tokenizer
from jaxrank.models.hf.qwen_vl_inputs import QwenVLInputs
from jaxrank.models.hf.qwen_vl_processor import smart_resize
from jaxrank.models.layer_stack import stacking_of, with_stacking
from jaxrank.models.lm import LMConfig
from jaxrank.models.qwen_vision import QwenVisionConfig
from jaxrank.models.vlm import VisionLanguageModel, VLMConfig
from jaxrank.rl.sampler import SamplingSettings


def tiny_sizes(**changes: int) -> ml_collections.ConfigDict:
    """A config's ``tiny`` block: the CPU-sized Qwen2.5-VL shape the demos train from random,
    with ``changes``."""
    sizes = {
        "vocab_size": 1024,
        "width": 96,
        "depth": 3,
        "heads": 4,
        "kv_heads": 2,
        "mlp_dim": 256,
        "vision_depth": 2,
        "vision_width": 64,
        "vision_heads": 4,
        "patch_size": 8,
    }
    unknown = set(changes) - set(sizes)
    if unknown:
        raise KeyError(f"not tiny VLM sizes: {sorted(unknown)}")
    return ml_collections.ConfigDict({**sizes, **changes})


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


def _write_tiny_inputs(
    section: ml_collections.ConfigDict, folder: Path, corpus: list[str], special: Sequence[str]
):
    folder.mkdir(parents=True, exist_ok=True)
    tiny, size = section.tiny, section.image_size
    tokenizer = train_qwen_style_tokenizer(corpus, tiny.vocab_size, folder)
    if special:
        add_special_tokens(tokenizer, special)
        tokenizer.save_pretrained(folder)
    processor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "patch_size": tiny.patch_size,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "min_pixels": size * size,
        "max_pixels": size * size,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


def add_special_tokens(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Add ``tokens`` (e.g. ELVA's ``[RET]``) as special tokens, keeping the tokenizer's own;
    their ids."""
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def load_model_and_inputs(
    section: ml_collections.ConfigDict,
    folder: Path,
    corpus: Callable[[], list[str]],
    seed: int,
    mesh: jax.sharding.Mesh,
    special_tokens: Sequence[str] = (),
) -> tuple[VisionLanguageModel, QwenVLInputs]:
    """``section.checkpoint`` (folder or hub id) when set; else the tiny random model of
    ``section.tiny``, its tokenizer trained on ``corpus()`` once and kept in ``folder``.
    ``special_tokens`` are added to the tokenizer; a checkpoint must have embedding rows for
    them already (Qwen2-VL's checkpoints keep a few hundred spare rows), else it is refused."""
    if section.checkpoint:
        loaded = load_vlm(
            section.checkpoint,
            dtype=jnp.dtype(section.dtype),
            mesh=mesh,
            stacking=stacking_of(section),
        )
        inputs = QwenVLInputs.from_pretrained(section.checkpoint)
        ids = add_special_tokens(inputs.tokenizer, special_tokens)
        rows = loaded.model.config.lm.vocab_size
        if any(i >= rows for i in ids):
            raise ConfigError(
                f"{section.checkpoint}: its embedding has {rows} rows, too few for the added "
                f"tokens {list(special_tokens)} (ids {ids}); resize the checkpoint's embedding "
                "and output layer first"
            )
        return loaded.model, inputs
    if not (folder / "tokenizer.json").exists():
        _write_tiny_inputs(section, folder, corpus(), special_tokens)
    inputs = QwenVLInputs.from_pretrained(folder)
    config = tiny_vlm_config(section.tiny, len(inputs.tokenizer), inputs.image_token_id)
    config = with_stacking(config, stacking_of(section))
    with jax.set_mesh(mesh):
        model = VisionLanguageModel(config, rngs=nnx.Rngs(seed))
    return model, inputs


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` ``[H, W, 3]`` uint8 resized (bilinear) to ``size`` x ``size``."""
    if image.shape[0] == image.shape[1] == size:
        return image
    resized = jax.image.resize(jnp.asarray(image, jnp.float32), (size, size, 3), "bilinear")
    return np.asarray(jnp.clip(jnp.round(resized), 0, 255), np.uint8)


@dataclasses.dataclass
class VLMBase:
    """The model before LoRA, and what turns conversations about one image into its inputs."""

    model: VisionLanguageModel
    inputs: QwenVLInputs
    image_size: int  # images are resized to this square before the processor
    prompt_lengths: tuple[int, ...] = (128, 256, 512, 1024, 2048)  # left-padding buckets

    @property
    def frame(self) -> tuple[int, int]:
        """(height, width) of the image as the model sees it."""
        images = self.inputs.images
        size = self.image_size
        return smart_resize(size, size, images.factor, images.min_pixels, images.max_pixels)

    @property
    def grid(self) -> tuple[int, int, int]:
        height, width = self.frame
        return (1, height // self.inputs.images.patch_size, width // self.inputs.images.patch_size)

    def token_ids(self, text: str) -> list[int]:
        return self.inputs.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(
        self, conversations: Sequence[list[dict]], images: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Host arrays of ``vlm.programs``'s batch, one image per conversation (positions
        row-major: ``[B, 3, P]``, so every leaf shards by rows)."""
        texts = [self.inputs.chat(messages) for messages in conversations]
        resized = [[resize_square(image, self.image_size)] for image in images]
        encoded = self.inputs.batch(texts, resized, lengths=self.prompt_lengths)
        patches = encoded.patches.reshape(len(texts), -1, encoded.patches.shape[-1])
        return {
            "tokens": encoded.tokens,
            "mask": encoded.mask,
            "positions": encoded.positions.transpose(1, 0, 2),
            "patches": patches,
        }

    def targets(
        self, texts: Sequence[str], length: int, end: int | None = None
    ) -> dict[str, np.ndarray]:
        """Completions ``[B, length]`` (each text cut to ``length - 1`` tokens, then ``end``,
        by default the end-of-turn token) and their mask."""
        end = self.inputs.tokenizer.eos_token_id if end is None else end
        rows = [[*self.token_ids(t)[: length - 1], end] for t in texts]
        tokens = np.zeros((len(rows), length), np.int32)
        mask = np.zeros((len(rows), length), bool)
        for i, row in enumerate(rows):
            tokens[i, : len(row)], mask[i, : len(row)] = row, True
        return {"completion": tokens, "completion_mask": mask}

    def sampling(self, max_new_tokens: int, temperature: float) -> SamplingSettings:
        """Sampling that stops at the end-of-turn token (``temperature`` 0: greedy)."""
        tokenizer = self.inputs.tokenizer
        return SamplingSettings(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            stop_tokens=(tokenizer.eos_token_id,),
            pad_id=tokenizer.pad_token_id,
        )

    def decode(self, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
        """The texts of sampled tokens ``[N, L]`` (``mask`` marks the generated ones)."""
        return self.inputs.tokenizer.batch_decode(
            [row[keep] for row, keep in zip(tokens, mask, strict=True)], skip_special_tokens=True
        )
