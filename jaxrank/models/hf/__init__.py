"""Hugging Face checkpoints for jaxrank's models, matching transformers numerically, with their
pre-processing and tokenizers, and export back: CLIP and SigLIP encoders, Qwen2 decoders and
Qwen2-VL / Qwen2.5-VL vision-language models.

    pretrained = load_pretrained("openai/clip-vit-base-patch16")  # or a local folder
    pixels = pretrained.image_preprocessor()(images)
    ids, mask = pretrained.tokenizer()(texts)
    out = pretrained.model(pixels, ids, mask)

    vlm = load_vlm("Qwen/Qwen2.5-VL-3B-Instruct", dtype="bfloat16", mesh=mesh, fsdp=True)
    batch = QwenVLInputs.from_pretrained(vlm.folder).batch(texts, images, lengths=(512, 1024))
"""

from jaxrank.models.hf.errors import CheckpointMismatch, UnsupportedCheckpoint
from jaxrank.models.hf.export import save_pretrained
from jaxrank.models.hf.export_decoder import save_decoder
from jaxrank.models.hf.loading import Pretrained, load_pretrained
from jaxrank.models.hf.placement import PretrainedModule
from jaxrank.models.hf.preprocessing import ImagePreprocessor
from jaxrank.models.hf.qwen2 import load_causal_lm
from jaxrank.models.hf.qwen2_vl import load_vlm
from jaxrank.models.hf.qwen_vision import load_vision_tower
from jaxrank.models.hf.qwen_vl_inputs import QwenVLInputs, VLMBatch
from jaxrank.models.hf.qwen_vl_processor import QwenVLImageProcessor
from jaxrank.models.hf.tokenization import TextTokenizer

__all__ = [
    "CheckpointMismatch",
    "ImagePreprocessor",
    "Pretrained",
    "PretrainedModule",
    "QwenVLImageProcessor",
    "QwenVLInputs",
    "TextTokenizer",
    "UnsupportedCheckpoint",
    "VLMBatch",
    "load_causal_lm",
    "load_pretrained",
    "load_vision_tower",
    "load_vlm",
    "save_decoder",
    "save_pretrained",
]
