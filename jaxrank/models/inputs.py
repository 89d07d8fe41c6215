"""What an image/text encoder expects of its inputs: the square input size, the pixel
normalisation and the tokenizer. jaxrank's own encoders use the synthetic world's vocabulary and
a [-1, 1] pixel range; a Hugging Face checkpoint brings its own processor and tokenizer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxrank import imaging

Tokenize = Callable[[Sequence[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class EncoderInputs:
    """``image_size``: the side of the square model input; ``mean``/``std``: per-channel
    normalisation of pixels scaled to [0, 1]; ``tokenize``: texts -> int32 ids [N, L]."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tokenize: Tokenize

    def pixels(self, images: jax.Array) -> jax.Array:
        """uint8 images (any square size) -> the model's normalised input."""
        return self.normalize(imaging.resize(images, self.image_size))

    def crops(self, images: jax.Array, boxes: jax.Array) -> jax.Array:
        """Boxes cut from uint8 images -> the model's normalised input."""
        return self.normalize(imaging.crop_and_resize(images, boxes, self.image_size))

    def normalize(self, pixels: jax.Array) -> jax.Array:
        """Pixels in [0, 255] at the input size -> the model's normalised input."""
        return imaging.normalize(pixels, self.mean, self.std)
