"""Fixed-shape text tokenization for Hugging Face CLIP and SigLIP checkpoints.

Wraps the checkpoint's own ``transformers.AutoTokenizer`` (the vocabulary and normalisation must
be exactly the checkpoint's) and returns int32 numpy arrays of one fixed length, so the jitted
text encoder compiles once.

The two families differ in how padding reaches the model:

- CLIP pads with its pad token (``<|endoftext|>`` in OpenAI's checkpoints), always ends a text
  with ``<|endoftext|>`` (kept on truncation), pools at the first end-of-text position and uses
  the tokenizer's attention mask: ``mask_padding=True``.
- SigLIP was trained on texts padded to ``max_length`` (64) with ``</s>`` and a text tower that
  attends to every position and pools the *last* one; the reference code calls the model without
  an attention mask. So the mask is all ones: ``mask_padding=False`` (which needs
  ``pad_to_max=True``, or embeddings would depend on the longest text in the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxrank.models.hf.files import resolve_checkpoint


@dataclass(frozen=True)
class TextTokenizer:
    """A checkpoint's tokenizer with the truncation/padding/mask convention of its family."""

    tokenizer: Any  # a transformers tokenizer; typed loosely so importing this stays cheap
    max_len: int
    pad_to_max: bool
    mask_padding: bool

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, max_len: int, pad_to_max: bool, *, mask_padding: bool = True
    ) -> TextTokenizer:
        """Load the tokenizer of a checkpoint folder or hub id. ``max_len``: truncate to (and
        with ``pad_to_max`` pad to) this many tokens; ``mask_padding``: True for CLIP (return
        the tokenizer's mask), False for SigLIP (all-ones mask, see the module docstring)."""
        if max_len < 1:
            raise ValueError(f"max_len must be positive, got {max_len}")
        if not mask_padding and not pad_to_max:
            raise ValueError(
                "mask_padding=False needs pad_to_max=True: unmasked padding changes the "
                "embedding, so every text must be padded to the same length"
            )
        from transformers import AutoTokenizer

        path = resolve_checkpoint(folder)
        tokenizer = AutoTokenizer.from_pretrained(path)
        for side in ("padding_side", "truncation_side"):
            if getattr(tokenizer, side) != "right":
                raise ValueError(
                    f"{path}: tokenizer has {side}={getattr(tokenizer, side)!r}; CLIP and SigLIP "
                    "expect 'right' (the end-of-text token must stay last among the real tokens)"
                )
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{path}: tokenizer has no pad token")
        return cls(tokenizer, max_len, pad_to_max, mask_padding)

    @classmethod
    def for_family(cls, folder: str | Path, family: str, max_len: int) -> TextTokenizer:
        """The convention of ``family`` ('clip' masks padding, 'siglip' does not), padded to
        ``max_len`` (the text tower's positions) so every batch has one shape."""
        return cls.from_pretrained(folder, max_len, pad_to_max=True, mask_padding=family == "clip")

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> ``(ids, mask)``, both int32 ``[B, L]``; ``L = max_len`` with ``pad_to_max``,
        else the longest (truncated) text in the batch."""
        encoded = self.tokenizer(
            list(texts),
            padding="max_length" if self.pad_to_max else "longest",
            max_length=self.max_len,
            truncation=True,
            return_attention_mask=True,
            return_tensors="np",
        )
        ids = encoded["input_ids"].astype(np.int32)
        if self.mask_padding:
            return ids, encoded["attention_mask"].astype(np.int32)
        return ids, np.ones_like(ids)
