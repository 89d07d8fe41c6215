"""Hugging Face-compatible image pre-processing for CLIP and SigLIP checkpoints.

A checkpoint's encoders were trained on pixels prepared one exact way; feeding them differently
resized or normalised images silently costs accuracy. This module reads the checkpoint's
processor config and reproduces the PIL backend of transformers' ``CLIPImageProcessor`` and
``SiglipImageProcessor`` (PIL resize, centre crop, rescale, normalise, same float32 arithmetic)
with PIL and numpy only, so serving needs no transformers and no torch. The output is
channels-last, the layout jaxrank's ViT takes (transformers returns channels-first).

transformers' torchvision backend (``CLIPImageProcessorFast``, or the default class where
torchvision is installed) resizes differently by a few grey levels; the reference here is PIL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxrank.models.hf.errors import CheckpointNotFound
from jaxrank.models.hf.files import CONFIG_FILE, read_config, read_json_object, resolve_checkpoint

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
# transformers v5 processors save the image processor nested here (and read it first).
PROCESSOR_FILE = "processor_config.json"

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Class defaults of CLIPImageProcessorPil / SiglipImageProcessorPil, used for absent (or null)
# keys exactly as transformers does.
_CLIP_DEFAULTS: dict[str, Any] = {
    "do_resize": True,
    "size": {"shortest_edge": 224},
    "default_to_square": False,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "resample": int(Image.Resampling.BICUBIC),
    "do_convert_rgb": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": _CLIP_MEAN,
    "image_std": _CLIP_STD,
}
_SIGLIP_DEFAULTS: dict[str, Any] = {
    **_CLIP_DEFAULTS,
    "size": {"height": 224, "width": 224},
    "do_center_crop": False,
    "crop_size": None,
    "image_mean": (0.5, 0.5, 0.5),
    "image_std": (0.5, 0.5, 0.5),
}
_DEFAULTS = {"clip": _CLIP_DEFAULTS, "siglip": _SIGLIP_DEFAULTS}
# transformers loads any of these names (Fast = torchvision backend, Pil = PIL backend).
_PROCESSOR_TYPES = {
    f"{base}{suffix}": family
    for base, family in (("CLIPImageProcessor", "clip"), ("SiglipImageProcessor", "siglip"))
    for suffix in ("", "Fast", "Pil")
}
# Without a processor type, transformers picks the processor from config.json's model_type.
_MODEL_TYPES = {"clip": "clip", "siglip": "siglip"}
# Keys that name the processor or only affect other backends / the output container.
IGNORED_KEYS = {
    "image_processor_type",
    "feature_extractor_type",
    "auto_map",
    "processor_class",
    "_valid_processor_keys",
    "data_format",
    "return_tensors",
    "device",
    "disable_grouping",
    "image_seq_length",
    "pad_size",
}
# Accepted only when false/null: padding, a fixed input layout, CLIP's square resize (KOSMOS-2).
_OFF_ONLY_KEYS = ("do_pad", "input_data_format", "use_square_size")


@dataclass(frozen=True)
class ImagePreprocessor:
    """What a CLIP/SigLIP checkpoint's image processor does, as plain values.

    ``family`` says whose class defaults filled absent keys: ``"clip"``, ``"siglip"``, or
    ``"qwen2_vl"`` (set by ``QwenVLImageProcessor``, which reuses the pixel steps).
    Resizing: at most one of ``shortest_edge`` (scale so the short side has this length, long
    side truncated as torchvision does) and ``size`` (``(height, width)``, aspect ignored) is set;
    neither means no resize. ``crop_size`` is ``(height, width)`` of the centre crop, or None.
    """

    family: str
    shortest_edge: int | None
    size: tuple[int, int] | None
    crop_size: tuple[int, int] | None
    resample: int
    do_convert_rgb: bool
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ImagePreprocessor:
        """Read the processor config of a checkpoint folder or hub id, as transformers does:
        the ``image_processor`` entry of ``processor_config.json`` if present, else
        ``preprocessor_config.json``; absent keys take the class defaults of the processor
        named by ``image_processor_type``. Settings this class cannot reproduce raise
        ValueError naming the file and key."""
        path = resolve_checkpoint(folder)
        source, raw = read_processor_dict(path)
        return _from_dict(raw, source, _family(raw, source, path))

    @property
    def output_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of every output image, or None when it depends on the input
        (no crop and no fixed resize)."""
        return self.crop_size or self.size

    def __call__(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """PIL images or uint8 ``HxWxC`` / ``HxW`` arrays -> float32 ``[B, H, W, C]``, equal to
        transformers' ``pixel_values`` transposed to channels-last."""
        if len(images) == 0:
            raise ValueError("no images to preprocess")
        out = [self._one(image) for image in images]
        shapes = {x.shape for x in out}
        if len(shapes) > 1:
            raise ValueError(
                f"images preprocess to different shapes {sorted(shapes)}; this config has no "
                "centre crop or fixed resize, so only same-aspect images can share a batch"
            )
        return np.stack(out)

    def _one(self, image: Image.Image | np.ndarray) -> np.ndarray:
        pixels = _to_rgb(image) if self.do_convert_rgb else _as_array(image)
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(
                f"expected a 3-channel image, got shape {pixels.shape}; grayscale and RGBA "
                "inputs need do_convert_rgb"
            )
        if self.shortest_edge is not None or self.size is not None:
            height, width = self.size or _shortest_edge_size(pixels.shape[:2], self.shortest_edge)
            pil = Image.fromarray(pixels)
            pixels = np.asarray(pil.resize((width, height), resample=self.resample))
        if self.crop_size is not None:
            pixels = _centre_crop(pixels, *self.crop_size)
        if self.do_rescale:
            # transformers multiplies in float64, then rounds to float32.
            x = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            x = pixels.astype(np.float32)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, np.float32)
            x = (x - mean) / np.asarray(self.image_std, np.float32)
        return x


def read_processor_dict(folder: Path) -> tuple[Path, dict[str, Any]]:
    nested = folder / PROCESSOR_FILE
    if nested.is_file():
        processor = read_json_object(nested)
        if "image_processor" in processor:
            return nested, processor["image_processor"]
    path = folder / IMAGE_PROCESSOR_FILE
    if not path.is_file():
        raise CheckpointNotFound(
            f"{folder}: no {IMAGE_PROCESSOR_FILE} (nor an image_processor entry in "
            f"{PROCESSOR_FILE}); cannot tell how the checkpoint prepares images"
        )
    return path, read_json_object(path)


def _family(raw: dict[str, Any], source: Path, folder: Path) -> str:
    """'clip' or 'siglip', resolved in transformers' order: image_processor_type, then the
    legacy feature_extractor_type, then config.json's model_type."""
    remote = {"AutoImageProcessor", "AutoFeatureExtractor"} & set(raw.get("auto_map") or {})
    if remote:
        raise ValueError(f"{source}: key 'auto_map' names remote code for {sorted(remote)}")
    name = raw.get("image_processor_type")
    key = "image_processor_type"
    if name is None and raw.get("feature_extractor_type") is not None:
        name = raw["feature_extractor_type"].replace("FeatureExtractor", "ImageProcessor")
        key = "feature_extractor_type"
    if name is not None:
        if name not in _PROCESSOR_TYPES:
            raise ValueError(
                f"{source}: key {key!r} is {name!r}; supported: {sorted(_PROCESSOR_TYPES)}"
            )
        return _PROCESSOR_TYPES[name]
    model_type = read_config(folder).get("model_type") if (folder / CONFIG_FILE).is_file() else None
    if model_type not in _MODEL_TYPES:
        raise ValueError(
            f"{source}: no key 'image_processor_type', and {folder / CONFIG_FILE} has model_type "
            f"{model_type!r}, not one of {sorted(_MODEL_TYPES)}"
        )
    return _MODEL_TYPES[model_type]


def _from_dict(raw: dict[str, Any], source: Path, family: str) -> ImagePreprocessor:
    defaults = _DEFAULTS[family]
    unknown = sorted(set(raw) - set(defaults) - IGNORED_KEYS - set(_OFF_ONLY_KEYS))
    if unknown:
        raise ValueError(f"{source}: unsupported key(s) {unknown}")
    for key in _OFF_ONLY_KEYS:
        if raw.get(key):
            raise ValueError(f"{source}: unsupported setting {key}={raw[key]!r}")

    def get(key: str) -> Any:
        # transformers treats null as absent: the class default applies.
        value = raw.get(key)
        return defaults[key] if value is None else value

    shortest_edge, size = None, None
    if get("do_resize"):
        shortest_edge, size = _resize_spec(get("size"), get("default_to_square"), source)
    crop_size = _crop_spec(get("crop_size"), source) if get("do_center_crop") else None
    resample = get("resample")
    if isinstance(resample, bool) or resample not in range(6):
        raise ValueError(f"{source}: key 'resample' must be a PIL resampling code 0-5")
    rescale_factor = get("rescale_factor")
    if isinstance(rescale_factor, bool) or not isinstance(rescale_factor, int | float):
        raise ValueError(f"{source}: key 'rescale_factor' must be a number")
    return ImagePreprocessor(
        family=family,
        shortest_edge=shortest_edge,
        size=size,
        crop_size=crop_size,
        resample=int(resample),
        do_convert_rgb=bool(get("do_convert_rgb")),
        do_rescale=bool(get("do_rescale")),
        rescale_factor=float(rescale_factor),
        do_normalize=bool(get("do_normalize")),
        image_mean=per_channel(get("image_mean"), "image_mean", source),
        image_std=per_channel(get("image_std"), "image_std", source),
    )


def _resize_spec(
    size: Any, default_to_square: bool, source: Path
) -> tuple[int | None, tuple[int, int] | None]:
    """(shortest_edge, (height, width)): transformers' ``get_size_dict`` reading of ``size``,
    restricted to the two forms its PIL resize handles for CLIP and SigLIP."""
    if isinstance(size, int) and not isinstance(size, bool):
        return (None, (size, size)) if default_to_square else (size, None)
    if isinstance(size, list | tuple) and len(size) == 2:
        return None, (int(size[0]), int(size[1]))
    if isinstance(size, dict) and set(size) == {"shortest_edge"}:
        return int(size["shortest_edge"]), None
    if isinstance(size, dict) and set(size) == {"height", "width"}:
        return None, (int(size["height"]), int(size["width"]))
    raise ValueError(
        f"{source}: unsupported key 'size'={size!r}; expected an int, [height, width], "
        "{'shortest_edge': n} or {'height': h, 'width': w}"
    )


def _crop_spec(crop_size: Any, source: Path) -> tuple[int, int]:
    if isinstance(crop_size, int) and not isinstance(crop_size, bool):
        return crop_size, crop_size
    if isinstance(crop_size, list | tuple) and len(crop_size) == 2:
        return int(crop_size[0]), int(crop_size[1])
    if isinstance(crop_size, dict) and set(crop_size) == {"height", "width"}:
        return int(crop_size["height"]), int(crop_size["width"])
    raise ValueError(
        f"{source}: unsupported key 'crop_size'={crop_size!r} with do_center_crop; expected an "
        "int, [height, width] or {'height': h, 'width': w}"
    )


def per_channel(value: Any, key: str, source: Path) -> tuple[float, float, float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (float(value),) * 3
    if isinstance(value, list | tuple) and len(value) == 3:
        return float(value[0]), float(value[1]), float(value[2])
    raise ValueError(f"{source}: key {key!r} must be a number or 3 numbers, got {value!r}")


def _shortest_edge_size(shape: tuple[int, ...], shortest_edge: int) -> tuple[int, int]:
    """transformers' ``get_resize_output_image_size(default_to_square=False)``: the short side
    becomes ``shortest_edge``, the long side ``int(shortest_edge * long / short)``."""
    height, width = shape
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def _centre_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' ``center_crop``: offset ``(size - crop) // 2``; an axis shorter than the
    crop is zero-padded (before rescale/normalise) with the image at ``ceil((crop - size)/2)``."""
    out = np.zeros((height, width, pixels.shape[2]), pixels.dtype)
    src, dst = [], []
    for have, want in zip(pixels.shape[:2], (height, width), strict=True):
        offset = (have - want) // 2
        n = min(have, want)
        src.append(slice(max(offset, 0), max(offset, 0) + n))
        dst.append(slice(max(-offset, 0), max(-offset, 0) + n))
    out[tuple(dst)] = pixels[tuple(src)]
    return out


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _to_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """transformers' ``convert_to_rgb``: transparency is composited onto white (by PIL for PIL
    images, in float64 with rounding for arrays, as it does), gray is repeated."""
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))
    pixels = _as_array(image)
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got {pixels.shape}")
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    if pixels.shape[2] == 4:
        alpha = pixels[:, :, 3:] / 255
        return np.round(alpha * pixels[:, :, :3] + (1 - alpha) * 255).astype(np.uint8)
    return pixels
