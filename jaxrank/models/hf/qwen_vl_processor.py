"""Qwen2-VL / Qwen2.5-VL image pre-processing, equal to the PIL backend of transformers'
``Qwen2VLImageProcessor`` (numpy and PIL only).

Each image keeps (about) its aspect ratio: it is resized so both sides are multiples of
``patch_size * merge_size`` and its area lies in [min_pixels, max_pixels] (``smart_resize``),
then cut into patches in the order the vision tower merges them. The pixel steps (RGB
conversion, PIL resize, rescale, normalise) are the CLIP processor's, reused from
``jaxrank.models.hf.preprocessing``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxrank.models.hf.files import resolve_checkpoint
from jaxrank.models.hf.preprocessing import (
    IGNORED_KEYS,
    ImagePreprocessor,
    per_channel,
    read_processor_dict,
)

Grid = tuple[int, int, int]
_PROCESSOR_TYPES = {f"Qwen2VLImageProcessor{suffix}" for suffix in ("", "Fast", "Pil")}
# Class defaults of Qwen2VLImageProcessorPil, for absent (or null) keys.
_DEFAULTS: dict[str, Any] = {
    "do_resize": True,
    "size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280},
    "min_pixels": None,  # when set, replaces size["shortest_edge"]
    "max_pixels": None,  # when set, replaces size["longest_edge"]
    "resample": int(Image.Resampling.BICUBIC),
    "do_convert_rgb": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": (0.48145466, 0.4578275, 0.40821073),
    "image_std": (0.26862954, 0.26130258, 0.27577711),
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
}
_MAX_ASPECT = 200


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 1003520
) -> tuple[int, int]:
    """(height, width) rounded to multiples of ``factor``, scaled (keeping the aspect ratio)
    into [min_pixels, max_pixels] when the rounded area falls outside; transformers' rule,
    rounding included (Python's round: halves to even)."""
    if max(height, width) / min(height, width) > _MAX_ASPECT:
        raise ValueError(
            f"image of {height}x{width}: aspect ratio must be at most {_MAX_ASPECT}, got "
            f"{max(height, width) / min(height, width)}"
        )
    new_height = round(height / factor) * factor
    new_width = round(width / factor) * factor
    if new_height * new_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_height = max(factor, math.floor(height / beta / factor) * factor)
        new_width = max(factor, math.floor(width / beta / factor) * factor)
    elif new_height * new_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_height = math.ceil(height * beta / factor) * factor
        new_width = math.ceil(width * beta / factor) * factor
    return new_height, new_width


def image_token_count(grid: Grid, merge_size: int) -> int:
    """How many tokens the vision tower gives for an image of ``grid`` (t, h, w) in patches:
    the number of image placeholder tokens its text needs."""
    t, h, w = grid
    return t * h * w // merge_size**2


@dataclasses.dataclass(frozen=True)
class QwenVLImageProcessor:
    """What a Qwen2-VL checkpoint's image processor does, as plain values; ``pixels`` holds the
    per-pixel steps (its ``size`` is set per image by ``smart_resize``)."""

    do_resize: bool
    min_pixels: int
    max_pixels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    pixels: ImagePreprocessor

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> QwenVLImageProcessor:
        """Read the processor config of a checkpoint folder or hub id as transformers does
        (``min_pixels``/``max_pixels`` override ``size``); unsupported keys raise ValueError."""
        source, raw = read_processor_dict(resolve_checkpoint(folder))
        return _from_dict(raw, source)

    @property
    def factor(self) -> int:
        """Both sides of a resized image are multiples of this."""
        return self.patch_size * self.merge_size

    def __call__(self, images: Sequence[Image.Image | np.ndarray]) -> tuple[np.ndarray, list[Grid]]:
        """PIL images or uint8 ``HxWxC`` / ``HxW`` arrays -> (``pixel_values`` float32
        [sum(h*w), channels*temporal_patch_size*patch_size**2], ``grids`` [(1, h, w)] in
        patches), equal to transformers' ``pixel_values`` and ``image_grid_thw``."""
        if len(images) == 0:
            raise ValueError("no images to preprocess")
        patches, grids = zip(*(self._one(image) for image in images), strict=True)
        return np.concatenate(patches), list(grids)

    def _one(self, image: Image.Image | np.ndarray) -> tuple[np.ndarray, Grid]:
        height, width = np.asarray(image).shape[:2]
        if self.do_resize:
            height, width = smart_resize(
                height, width, self.factor, self.min_pixels, self.max_pixels
            )
        if height % self.factor or width % self.factor:
            raise ValueError(
                f"image of {height}x{width} pixels: without resizing, both sides must be "
                f"multiples of patch_size * merge_size = {self.factor}"
            )
        prepare = dataclasses.replace(self.pixels, size=(height, width) if self.do_resize else None)
        return self._patchify(prepare([image])[0])

    def _patchify(self, pixels: np.ndarray) -> tuple[np.ndarray, Grid]:
        """[H, W, C] -> [h*w, C*T*P*P] patches ordered 2x2 merge group by group (row-major),
        row-major within a group; each patch repeated over the T temporal slots."""
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        height, width, channels = pixels.shape
        h, w = height // p, width // p
        blocks = pixels.reshape(h // m, m, p, w // m, m, p, channels)
        # (group row, group col, row in group, col in group, channel, pixel row, pixel col)
        blocks = blocks.transpose(0, 3, 1, 4, 6, 2, 5)[:, :, :, :, :, None]
        blocks = np.broadcast_to(blocks, (*blocks.shape[:5], t, p, p))
        return blocks.reshape(h * w, channels * t * p * p), (1, h, w)


def _from_dict(raw: dict[str, Any], source: Path) -> QwenVLImageProcessor:
    unknown = sorted(set(raw) - set(_DEFAULTS) - IGNORED_KEYS)
    if unknown:
        raise ValueError(f"{source}: unsupported key(s) {unknown}")
    kind = raw.get("image_processor_type")
    if kind is not None and kind not in _PROCESSOR_TYPES:
        raise ValueError(
            f"{source}: key 'image_processor_type' is {kind!r}; "
            f"supported: {sorted(_PROCESSOR_TYPES)}"
        )

    def get(key: str) -> Any:
        value = raw.get(key)  # transformers treats null as absent
        return _DEFAULTS[key] if value is None else value

    size = get("size")
    if not (isinstance(size, dict) and set(size) == {"shortest_edge", "longest_edge"}):
        raise ValueError(
            f"{source}: unsupported key 'size'={size!r}; expected "
            "{'shortest_edge': min_pixels, 'longest_edge': max_pixels}"
        )
    resample = get("resample")
    if isinstance(resample, bool) or resample not in range(6):
        raise ValueError(f"{source}: key 'resample' must be a PIL resampling code 0-5")
    pixels = ImagePreprocessor(
        family="qwen2_vl",
        shortest_edge=None,
        size=None,
        crop_size=None,
        resample=int(resample),
        do_convert_rgb=bool(get("do_convert_rgb")),
        do_rescale=bool(get("do_rescale")),
        rescale_factor=float(get("rescale_factor")),
        do_normalize=bool(get("do_normalize")),
        image_mean=per_channel(get("image_mean"), "image_mean", source),
        image_std=per_channel(get("image_std"), "image_std", source),
    )
    return QwenVLImageProcessor(
        do_resize=bool(get("do_resize")),
        min_pixels=int(get("min_pixels") or size["shortest_edge"]),
        max_pixels=int(get("max_pixels") or size["longest_edge"]),
        patch_size=int(get("patch_size")),
        temporal_patch_size=int(get("temporal_patch_size")),
        merge_size=int(get("merge_size")),
        pixels=pixels,
    )
