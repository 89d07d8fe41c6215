"""A Hugging Face checkpoint's input conventions as jaxrank ``EncoderInputs``, for recipes that
cut, resize and normalise images inside their jitted steps."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from jaxrank.models.hf.files import resolve_checkpoint
from jaxrank.models.hf.loading import describe
from jaxrank.models.hf.preprocessing import ImagePreprocessor
from jaxrank.models.hf.tokenization import TextTokenizer
from jaxrank.models.inputs import EncoderInputs


@functools.cache
def pretrained_inputs(source: str | Path) -> EncoderInputs:
    """The checkpoint's processor normalisation and tokenizer, at its vision tower's input size.

    In-graph bilinear resizing stands in for the processor's PIL bicubic resize (and its centre
    crop), so that crops can be cut and scored inside a jitted step: embeddings of the same photo
    differ slightly from those of the transformers pipeline (compare ``ImagePreprocessor``)."""
    folder = resolve_checkpoint(source)
    family, _, towers = describe(folder)
    if towers.vision is None or towers.text is None:
        raise ValueError(f"{source}: a recipe encoder needs both an image and a text tower")
    processor = ImagePreprocessor.from_pretrained(folder)
    if not (processor.do_rescale and np.isclose(processor.rescale_factor, 1 / 255)):
        raise ValueError(
            f"{folder}: image processor do_rescale={processor.do_rescale}, rescale_factor="
            f"{processor.rescale_factor}; jaxrank's in-graph normalisation expects 1/255"
        )
    mean, std = processor.image_mean, processor.image_std
    if not processor.do_normalize:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    tokenizer = TextTokenizer.for_family(folder, family.name, towers.text.max_len)
    return EncoderInputs(
        towers.vision.image_size, mean, std, lambda texts: tokenizer(list(texts))[0]
    )
