"""Host-side inputs of a Qwen2-VL / Qwen2.5-VL checkpoint: chat messages and images -> the
left-padded token batch, M-RoPE positions, patches and grids that ``VisionLanguageModel``
takes.

The text comes from the checkpoint's own chat template; each image placeholder is expanded to
as many ``<|image_pad|>`` tokens as the image has merged tokens, as transformers'
``Qwen2VLProcessor`` does, so token ids equal the processor's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxrank.models.hf.files import resolve_checkpoint
from jaxrank.models.hf.qwen_vl_processor import QwenVLImageProcessor, image_token_count
from jaxrank.models.lm_prompt import bucket, left_pad
from jaxrank.models.mrope import Grid, mrope_positions

IMAGE_TOKEN = "<|image_pad|>"


@dataclasses.dataclass(frozen=True)
class VLMBatch:
    """Arrays for ``VisionLanguageModel.prompt`` (grids are static: close over them)."""

    tokens: np.ndarray  # [B, P] int32, left-padded
    mask: np.ndarray  # [B, P] bool
    positions: np.ndarray  # [3, B, P] int32
    patches: np.ndarray | None  # [sum(t*h*w), patch_dim] float32
    grids: tuple[Grid, ...]
    rows: int  # real prompts; rows beyond are batch-bucket padding


class QwenVLInputs:
    def __init__(self, tokenizer: Any, images: QwenVLImageProcessor):
        self.tokenizer = tokenizer
        self.images = images
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token: not a Qwen2-VL tokenizer")

    @classmethod
    def from_pretrained(cls, source: str | Path, revision: str | None = None) -> QwenVLInputs:
        from transformers import AutoTokenizer

        folder = resolve_checkpoint(source, revision=revision)
        return cls(
            AutoTokenizer.from_pretrained(folder), QwenVLImageProcessor.from_pretrained(folder)
        )

    def chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation rendered by the checkpoint's chat template (one placeholder per
        image: content items ``{"type": "image"}``)."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(
        self, texts: Sequence[str], images: Sequence[Sequence[Image.Image | np.ndarray]]
    ) -> tuple[list[list[int]], np.ndarray | None, tuple[Grid, ...]]:
        """Token ids per text (placeholders expanded), all images' patches and grids in order."""
        if len(images) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(images)} image lists")
        flat = [image for row in images for image in row]
        patches, grids = self.images(flat) if flat else (None, [])
        counts = iter(image_token_count(g, self.images.merge_size) for g in grids)
        sequences = []
        for row, (text, row_images) in enumerate(zip(texts, images, strict=True)):
            pieces = text.split(IMAGE_TOKEN)
            if len(pieces) - 1 != len(row_images):
                raise ValueError(
                    f"text {row} has {len(pieces) - 1} {IMAGE_TOKEN} placeholders for "
                    f"{len(row_images)} images"
                )
            expanded = pieces[0] + "".join(
                IMAGE_TOKEN * next(counts) + piece for piece in pieces[1:]
            )
            sequences.append(self.tokenizer(expanded, add_special_tokens=False)["input_ids"])
        return sequences, patches, tuple(tuple(g) for g in grids)

    def batch(
        self,
        texts: Sequence[str],
        images: Sequence[Sequence[Image.Image | np.ndarray]],
        *,
        lengths: Sequence[int],
        batches: Sequence[int] | None = None,
    ) -> VLMBatch:
        """Encode, left-pad to the smallest fitting length bucket (and batch bucket), and
        compute the M-RoPE positions."""
        sequences, patches, grids = self.encode(texts, images)
        length = bucket(max(map(len, sequences)), lengths)
        size = len(sequences) if batches is None else bucket(len(sequences), batches)
        pad = self.tokenizer.pad_token_id or 0
        tokens, mask = left_pad(sequences, length=length, batch=size, pad_id=pad)
        positions = mrope_positions(
            tokens, mask, grids, image_token_id=self.image_token_id, merge=self.images.merge_size
        )
        return VLMBatch(tokens, mask, positions, patches, grids, len(sequences))
