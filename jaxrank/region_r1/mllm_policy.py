"""Region-R1's vision-language crop policy on the host side: its base model (``vlm.base``: a
released checkpoint, or a random tiny one with a tokenizer trained on the recipe's own texts),
its prompts, its supervised targets and the reading of what it wrote.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jaxrank.region_r1 import crop_tool
from jaxrank.region_r1.tool_reader import ToolReader
from jaxrank.vlm.base import VLMBase, load_model_and_inputs

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


@dataclasses.dataclass
class CropPolicyBase(VLMBase):
    """The policy's model before LoRA; boxes are written in ``frame``."""

    system_prompt: str = crop_tool.SYSTEM_PROMPT

    def prompts(self, questions: Sequence[str], images: np.ndarray) -> dict[str, np.ndarray]:
        """The batch of the queries' conversations (``VLMBase.encode``)."""
        return self.encode(
            [crop_tool.conversation(q, self.system_prompt) for q in questions], images
        )

    def tool_reader(self) -> ToolReader:
        """The device reader of this policy's completions (its tokenizer, its vocabulary)."""
        return ToolReader.from_tokenizer(
            self.inputs.tokenizer, self.model.language_model.config.vocab_size
        )

    def read(self, tokens: np.ndarray, mask: np.ndarray, original_size: tuple[int, int]):
        """``crop_tool.actions_from_completions`` of sampled tokens ``[N, L]``: decisions,
        boxes in the original image's pixels and the parser's outcome counts."""
        texts = self.decode(tokens, mask)
        return crop_tool.actions_from_completions(
            texts, [self.frame] * len(texts), [original_size] * len(texts)
        )


def build_base(
    cfg: ml_collections.ConfigDict,
    workdir: Path,
    questions: Sequence[str],
    mesh: jax.sharding.Mesh,
) -> CropPolicyBase:
    """``cfg.policy.checkpoint`` when set; else the tiny random policy, its tokenizer trained on
    ``questions`` and the prompts, kept in ``<workdir>/policy_base``."""
    policy = cfg.policy
    system = crop_tool.SHORT_SYSTEM_PROMPT if policy.short_system_prompt else None
    model, inputs = load_model_and_inputs(
        policy,
        workdir / BASE_DIR,
        lambda: _corpus(questions, policy.image_size),
        cfg.seed,
        mesh,
    )
    return CropPolicyBase(
        model, inputs, policy.image_size, system_prompt=system or crop_tool.SYSTEM_PROMPT
    )
