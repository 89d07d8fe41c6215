"""Region-R1's crop policy as text (PAPERS.md §1): the prompt a vision-language model reads, the
parser that turns what it writes into an action, and the map from the box it writes to the
original image's pixels.

The model reasons, then writes ``NO_CROP_NEEDED`` or one tool call
``<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [x1, y1, x2, y2],
"label": "..."}}</tool_call>``. ``parse_completion`` reads only the first call (between its tags,
or to the end of the text when the closing tag never came) and names the rule that decided in
``outcome``:

=============================  ========  =====================================================
outcome                        decision  when
=============================  ========  =====================================================
``no_tool_call``               FULL      no ``<tool_call>`` tag (a bbox in the prose is ignored)
``no_crop``                    FULL      no tag, and ``NO_CROP_NEEDED`` is written
``tool_call_json``             REGION    one closed call; its body is JSON with a valid
                                         ``arguments.bbox_2d``
``regex_fallback``             REGION    one closed call; JSON fails or has no
                                         ``arguments.bbox_2d``; ``"bbox_2d"\\s*:\\s*\\[...\\]``
                                         finds a valid box in the call's body
``multiple_calls_first_used``  REGION    more than one call (closed or not); the first is
                                         closed and valid (read by JSON or the regex)
``truncated_recovered``        REGION    the only call has no closing tag; a valid box is read
                                         from what is there (JSON, then the regex)
``truncated``                  FULL      the only call has no closing tag and no valid box
``malformed``                  FULL      the first call is closed but holds no valid box
=============================  ========  =====================================================

A valid box is exactly four finite numbers: JSON numbers, or strings (quoted or not in the regex
match) that read as finite floats; booleans, nested lists, NaN and infinities are not. A call
wins over ``NO_CROP_NEEDED`` written beside it (the paper reads "no tool call" as FULL); only a
call without a valid box leaves the decision FULL. The tool's name is not checked (the prompt
offers one tool, and the regex fallback could not check it either). Negative, out-of-range,
inverted and zero-area boxes are kept as written: the crop operator clamps them and the reward
judges them (``region_r1.rerank.valid_boxes``: zero area after clamping is invalid, reward
-1).

Compared with the released code: its regex searches the whole completion (so a box in the
reasoning could be taken), a call without its closing tag is FULL there, and non-finite
coordinates pass; here the regex reads the first call only, an unclosed call is recovered, and
non-finite numbers are malformed.

Frames. Qwen2.5-VL sees the image after ``smart_resize`` (sides multiples of 28) and grounds in
absolute pixels of that resized image, so a box is read in the model's frame and scaled to the
original image's pixels before the crop operator (``to_original_frame``). Coordinates are pixel
edges (x2/y2 exclusive, as the crop operator takes them), so the map is a pure scale per axis.
The released code (``src/rewards.py``, ``src/evaluate_cropping.py``) applies the box to the
original image as written; the policy it trained learned that mapping, so ``box_in_image``
offers both (``BOX_FRAMES``: ``"model"`` jaxrank's, ``"original"`` the released one). They agree
up to the rounding of the sides to multiples of 28 below ``max_pixels`` and differ by the
down-scaling above it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrank.models.hf.qwen_vl_processor import smart_resize
from jaxrank.region_r1.action import FULL, REGION

TOOL_NAME = "image_zoom_in_tool"
NO_CROP = "NO_CROP_NEEDED"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
OUTCOMES = (
    "no_tool_call",
    "no_crop",
    "tool_call_json",
    "regex_fallback",
    "multiple_calls_first_used",
    "truncated_recovered",
    "truncated",
    "malformed",
)
BOX_FRAMES = ("model", "original")
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28

TOOL_SCHEMA = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Crop the query image to one region; the crop replaces the full image "
        "when the candidates are re-ranked.",
        "parameters": {
            "type": "object",
            "properties": {
                "bbox_2d": {
                    "type": "array",
                    "items": {"type": "number"},
                    "minItems": 4,
                    "maxItems": 4,
                    "description": "[x1, y1, x2, y2]: the region's top-left and bottom-right "
                    "corners in absolute pixels of the image as you see it.",
                },
                "label": {"type": "string", "description": "What the region shows."},
            },
            "required": ["bbox_2d", "label"],
        },
    },
}

SYSTEM_PROMPT = f"""You help an image retrieval system by cropping its query images.
A query is an image and a question about something in it. Only the image is compared with \
the candidate knowledge-base entries, so background, clutter and other objects can pull the \
right entry down the ranking.
Decide whether cropping the image to the region the question is about would remove this \
redundant content and bring the most relevant candidate to rank 1.
First explain your reasoning in a few sentences. Then do exactly one of:
- call the tool once on the region to keep, inside {CALL_OPEN}{CALL_CLOSE} tags, as JSON;
- write {NO_CROP} when the full image is already the best query.

The tool:
{json.dumps(TOOL_SCHEMA)}

Example call:
{CALL_OPEN}{{"name": "{TOOL_NAME}", "arguments": {{"bbox_2d": [48, 30, 300, 252], \
"label": "the bird on the left"}}}}{CALL_CLOSE}"""

# For tiny CPU-trained policies, which cannot read instructions: the same task in one line,
# so prompts stay short (the paper's prompt is about 300 tokens).
SHORT_SYSTEM_PROMPT = (
    f"Crop the query image for retrieval: call {TOOL_NAME} with bbox_2d, or write {NO_CROP}."
)

_BBOX = re.compile(r'"bbox_2d"\s*:\s*\[([^\]]+)\]')
_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|\Z)", re.S)

Box = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class ParsedAction:
    """``decision`` FULL/REGION, ``box`` (x1, y1, x2, y2) in the model's frame for REGION
    (else None), ``outcome`` the rule that decided (one of ``OUTCOMES``, see module doc)."""

    decision: int
    box: Box | None
    outcome: str


def conversation(question: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    """The policy's chat messages for one query (the image goes where ``{"type": "image"}`` is),
    in the format ``QwenVLInputs.chat`` renders."""
    return [
        {"role": "system", "content": system_prompt},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": f"User's question: {question}"},
            ],
        },
    ]


def _number(item: object) -> float | None:
    """A finite coordinate from a JSON value or a regex item (quotes stripped), else None."""
    if isinstance(item, bool) or not isinstance(item, int | float | str):
        return None
    try:
        value = float(item.strip().strip("'\"") if isinstance(item, str) else item)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _box(items: object) -> Box | None:
    if not isinstance(items, list) or len(items) != 4:
        return None
    numbers = [_number(item) for item in items]
    return None if None in numbers else tuple(numbers)


def _read_call(body: str) -> tuple[Box | None, str]:
    """A call's box and the rule that read it: JSON when it parses and names
    ``arguments.bbox_2d`` (its verdict stands), else the regex over the body."""
    try:
        call = json.loads(body)
    except (json.JSONDecodeError, RecursionError):  # deep nesting exhausts json's recursion
        call = None
    arguments = call.get("arguments") if isinstance(call, dict) else None
    if isinstance(arguments, dict) and "bbox_2d" in arguments:
        return _box(arguments["bbox_2d"]), "tool_call_json"
    match = _BBOX.search(body)
    return (_box(match.group(1).split(",")) if match else None), "regex_fallback"


def _full(outcome: str) -> ParsedAction:
    return ParsedAction(FULL, None, outcome)


def parse_completion(text: str) -> ParsedAction:
    """The action a completion stands for, by the rules of the module doc."""
    calls = list(_CALL.finditer(text))
    if not calls:
        return ParsedAction(FULL, None, "no_crop" if NO_CROP in text else "no_tool_call")
    first = calls[0]
    closed = first.group(0).endswith(CALL_CLOSE)
    box, rule = _read_call(first.group(1).strip())
    if not closed:
        return ParsedAction(REGION, box, "truncated_recovered") if box else _full("truncated")
    if box is None:
        return _full("malformed")
    return ParsedAction(REGION, box, "multiple_calls_first_used" if len(calls) > 1 else rule)


def model_image_size(
    original_size: tuple[int, int],
    factor: int = 28,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """(height, width) of the image as the model sees it: Qwen's ``smart_resize`` with the
    paper's limits; pass the checkpoint processor's own limits when they differ."""
    return smart_resize(*original_size, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def to_original_frame(
    box: Sequence[float] | np.ndarray,
    model_size: tuple[int, int],
    original_size: tuple[int, int],
) -> np.ndarray:
    """Boxes ``[..., 4]`` from the model's resized frame (height h, width w) to the original
    image's pixels (H, W): x scaled by W / w, y by H / h (float64)."""
    return box_in_image(np.asarray(box), model_size, original_size, "model")


def box_in_image(
    boxes: np.ndarray | jax.Array | Sequence[float],
    model_sizes: np.ndarray | jax.Array | tuple[int, int],
    original_sizes: np.ndarray | jax.Array | tuple[int, int],
    frame: str = "model",
) -> np.ndarray | jax.Array:
    """Boxes ``[..., 4]`` as written by the model, in the original image's pixels: scaled from
    the model's frame (``"model"``, jaxrank) or taken as written (``"original"``, the released
    code). ``model_sizes`` / ``original_sizes`` are (height, width) ``[..., 2]`` (broadcast
    against the boxes' leading axes). Pure and array-agnostic: numpy in gives numpy (float64),
    ``jax.numpy`` in (traced or not) gives ``jax.numpy`` in the boxes' float dtype."""
    if frame not in BOX_FRAMES:
        raise ValueError(f"box frame must be one of {BOX_FRAMES}, got {frame!r}")
    arrays = (boxes, model_sizes, original_sizes)
    host = all(isinstance(a, np.ndarray | list | tuple) for a in arrays)
    xp = np if host else jnp
    boxes = xp.asarray(boxes, np.float64) if host else jnp.asarray(boxes)
    if not xp.issubdtype(boxes.dtype, xp.floating):
        boxes = boxes.astype(jnp.float32)
    if frame == "original":
        return boxes
    ratio = xp.asarray(original_sizes, boxes.dtype) / xp.asarray(model_sizes, boxes.dtype)
    per_corner = xp.stack([ratio[..., 1], ratio[..., 0]], axis=-1)  # (x, y)
    return boxes * xp.concatenate([per_corner, per_corner], axis=-1)


def actions_from_completions(
    texts: Sequence[str],
    model_sizes: Sequence[tuple[int, int]],
    original_sizes: Sequence[tuple[int, int]],
    frame: str = "model",
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Parse N completions into what ``jaxrank.region_r1.rerank.score_actions`` takes (reshape to
    ``[B, G]``): decisions int32 ``[N]``, boxes float32 ``[N, 4]`` in original pixels (zeros
    for FULL; ``frame`` as ``box_in_image``), and how many completions each outcome decided
    (every outcome, zeros included)."""
    if not len(texts) == len(model_sizes) == len(original_sizes):
        raise ValueError(
            f"{len(texts)} completions, {len(model_sizes)} model sizes and "
            f"{len(original_sizes)} original sizes"
        )
    decisions = np.full(len(texts), FULL, np.int32)
    boxes = np.zeros((len(texts), 4), np.float32)
    counts = dict.fromkeys(OUTCOMES, 0)
    for i, (text, model_size, original_size) in enumerate(
        zip(texts, model_sizes, original_sizes, strict=True)
    ):
        action = parse_completion(text)
        counts[action.outcome] += 1
        if action.decision == REGION:
            decisions[i] = REGION
            boxes[i] = box_in_image(action.box, model_size, original_size, frame)
    return decisions, boxes, counts
