"""Hugging Face checkpoints for jaxrank's encoders: CLIP and SigLIP load into the Flax modules
(matching transformers numerically), with their pre-processing and tokenizers, and export back.

    pretrained = load_pretrained("openai/clip-vit-base-patch16")  # or a local folder
    pixels = pretrained.image_preprocessor()(images)
    ids, mask = pretrained.tokenizer()(texts)
    out = pretrained.model(pixels, ids, mask)
"""

from jaxrank.models.hf.errors import CheckpointMismatch, UnsupportedCheckpoint
from jaxrank.models.hf.export import save_pretrained
from jaxrank.models.hf.loading import Pretrained, load_pretrained
from jaxrank.models.hf.preprocessing import ImagePreprocessor
from jaxrank.models.hf.tokenization import TextTokenizer

__all__ = [
    "CheckpointMismatch",
    "ImagePreprocessor",
    "Pretrained",
    "TextTokenizer",
    "UnsupportedCheckpoint",
    "load_pretrained",
    "save_pretrained",
]
