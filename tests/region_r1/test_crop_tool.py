"""Region-R1's text interface: every parsing rule on hand-written completions, the frame map
against hand computations and smart_resize, the batch arrays, and the prompt through a chat
template."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrank.models.hf.qwen_vl_processor import smart_resize
from jaxrank.region_r1 import crop_tool
from jaxrank.region_r1.action import FULL, REGION
from jaxrank.region_r1.crop_tool import ParsedAction, parse_completion
from jaxrank.region_r1.rerank import valid_boxes


def call(body: str) -> str:
    return f"<tool_call>{body}</tool_call>"


def zoom(bbox: str, label: str = '"the dog"') -> str:
    return f'{{"name": "image_zoom_in_tool", "arguments": {{"bbox_2d": {bbox}, "label": {label}}}}}'


WELL_FORMED = call(zoom("[10, 20, 110, 220]"))
NO_CROP_TEXT = crop_tool.NO_CROP


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (WELL_FORMED, ParsedAction(REGION, (10.0, 20.0, 110.0, 220.0), "tool_call_json")),
        ("NO_CROP_NEEDED", ParsedAction(FULL, None, "no_crop")),
        (
            "The bird already fills the frame, so cropping would not help.\nNO_CROP_NEEDED",
            ParsedAction(FULL, None, "no_crop"),
        ),
        ("The image looks fine to me.", ParsedAction(FULL, None, "no_tool_call")),
        ("", ParsedAction(FULL, None, "no_tool_call")),
        # a box in the prose is not a call
        ('I would use "bbox_2d": [1, 2, 3, 4] here.', ParsedAction(FULL, None, "no_tool_call")),
        (
            "The question asks about the tower on the right; the trees are clutter.\n"
            + WELL_FORMED,
            ParsedAction(REGION, (10.0, 20.0, 110.0, 220.0), "tool_call_json"),
        ),
        (
            '<tool_call>\n  {\n    "name" : "image_zoom_in_tool",\n    "arguments" : {\n'
            '      "bbox_2d" : [ 10 ,\n 20, 110,220 ] ,\n      "label" : "x"\n    }\n  }\n'
            "</tool_call>\n",
            ParsedAction(REGION, (10.0, 20.0, 110.0, 220.0), "tool_call_json"),
        ),
        # floats and numbers written as strings
        (
            call(zoom('[10.5, "20", " 110.25 ", 2e2]')),
            ParsedAction(REGION, (10.5, 20.0, 110.25, 200.0), "tool_call_json"),
        ),
    ],
)
def test_well_formed_and_no_call(text, expected):
    assert parse_completion(text) == expected


@pytest.mark.parametrize(
    "body",
    [
        zoom("[10, 20, 110, 220]", label="'the dog'"),  # single-quoted label
        zoom("[10, 20, 110, 220]") + ",",  # trailing commas
        '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 20, 110, 220],},}',
        zoom("['10', '20', '110', '220']"),  # single-quoted numbers
        # a closing brace short
        '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 20, 110, 220]}',
        '"bbox_2d": [10, 20, 110, 220]',  # no JSON object at all
    ],
)
def test_regex_fallback_reads_what_json_cannot(body):
    assert parse_completion(call(body)) == ParsedAction(
        REGION, (10.0, 20.0, 110.0, 220.0), "regex_fallback"
    )


@pytest.mark.parametrize(
    "body",
    [
        zoom("[10, 20, 110]"),  # three numbers
        zoom("[10, 20, 110, 220, 5]"),  # five
        zoom('["ten", 20, 110, 220]'),  # a string that is no number
        zoom("[NaN, 20, 110, 220]"),  # json reads NaN ...
        zoom("[10, 20, Infinity, 220]"),  # ... and Infinity
        zoom('[10, 20, "inf", 220]'),
        zoom("[10, 20, 1e400, 220]"),  # overflows to inf
        zoom("[true, 20, 110, 220]"),  # a boolean is no coordinate
        zoom("[[10, 20], [110, 220]]"),  # nested
        zoom('"10, 20, 110, 220"'),  # a string, not a list
        zoom("[10, 20, 110, nan],"),  # JSON fails; the regex item "nan" is not finite
        zoom("[10, 20, 110],"),  # JSON fails; the regex finds three items
        zoom("[10, 20, 110, 220,]"),  # an empty fifth item
        "{'name': 'image_zoom_in_tool', 'arguments': {'bbox_2d': [10, 20, 110, 220]}}",
        '{"name": "image_zoom_in_tool", "arguments": {"label": "dog"}}',  # no bbox_2d
        "",
    ],
)
def test_malformed_call_is_full(body):
    assert parse_completion(call(body)) == ParsedAction(FULL, None, "malformed")


def test_json_verdict_stands_over_the_regex():
    """Once JSON names arguments.bbox_2d, a bad box there is malformed even if a valid
    "bbox_2d" list appears elsewhere in the call (say in the label)."""
    body = zoom("[1, 2, 3]", label='"not \\"bbox_2d\\": [1, 2, 3, 4]"')
    assert parse_completion(call(body)).outcome == "malformed"


def test_truncated_call():
    cut = "<tool_call>" + zoom("[10, 20, 110, 220]")[:-10]  # cut inside the label
    assert parse_completion("Crop the sign.\n" + cut) == ParsedAction(
        REGION, (10.0, 20.0, 110.0, 220.0), "truncated_recovered"
    )
    # the whole JSON is there but the closing tag never came
    assert parse_completion("<tool_call>" + zoom("[1, 2, 3, 4]")) == ParsedAction(
        REGION, (1.0, 2.0, 3.0, 4.0), "truncated_recovered"
    )
    for cut in [
        "<tool_call>",
        '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 2',
    ]:
        assert parse_completion(cut) == ParsedAction(FULL, None, "truncated")
    assert parse_completion("<tool_call>" + zoom("[10, 20, 110]")) == ParsedAction(
        FULL, None, "truncated"
    )


def test_multiple_calls_use_the_first():
    second = call(zoom("[0, 0, 5, 5]"))
    assert parse_completion(WELL_FORMED + "\n" + second) == ParsedAction(
        REGION, (10.0, 20.0, 110.0, 220.0), "multiple_calls_first_used"
    )
    # a second call cut short still counts as a second call
    assert parse_completion(WELL_FORMED + "<tool_call>{").outcome == "multiple_calls_first_used"
    # the first decides even when it is malformed and the second is not
    assert parse_completion(call(zoom("[1, 2]")) + second) == ParsedAction(FULL, None, "malformed")


def test_tool_call_wins_over_no_crop():
    for text in ["NO_CROP_NEEDED\n" + WELL_FORMED, WELL_FORMED + "\nNO_CROP_NEEDED"]:
        assert parse_completion(text) == ParsedAction(
            REGION, (10.0, 20.0, 110.0, 220.0), "tool_call_json"
        )
    assert parse_completion("NO_CROP_NEEDED " + call("{}")) == ParsedAction(FULL, None, "malformed")


def test_out_of_range_and_inverted_boxes_are_kept_for_the_crop_operator():
    boxes = {
        "[-40, -5, 900, 10000]": (-40.0, -5.0, 900.0, 10000.0),
        "[200, 20, 100, 220]": (200.0, 20.0, 100.0, 220.0),  # inverted
        "[50, 50, 50, 90]": (50.0, 50.0, 50.0, 90.0),  # zero width
        "[1e6, 0, 2e6, 5]": (1e6, 0.0, 2e6, 5.0),  # wholly outside
    }
    parsed = [parse_completion(call(zoom(bbox))) for bbox in boxes]
    assert [(p.decision, p.box) for p in parsed] == [(REGION, box) for box in boxes.values()]
    # the crop operator clamps the first and rejects the others (reward -1)
    valid = valid_boxes(np.asarray([p.box for p in parsed], np.float32), 300, 400)
    assert np.asarray(valid).tolist() == [True, False, False, False]


def test_to_original_frame_by_hand():
    # model frame 280 x 420 (h x w), original 300 x 450: both axes scale by 15/14
    box = crop_tool.to_original_frame([28, 56, 140, 280], (280, 420), (300, 450))
    np.testing.assert_allclose(box, [30, 60, 150, 300])
    # anisotropic: x by 1000/500 = 2, y by 100/200 = 0.5; several boxes at once
    boxes = crop_tool.to_original_frame(
        [[0, 0, 500, 200], [10, 20, 30, 40]], (200, 500), (100, 1000)
    )
    np.testing.assert_allclose(boxes, [[0, 0, 1000, 100], [20, 10, 60, 20]])


@pytest.mark.parametrize(
    ("original", "model"),
    [
        ((300, 450), (308, 448)),  # rounded to the nearest multiples of 28
        ((10, 20), (56, 84)),  # below 4*28*28 pixels: scaled up, then ceil to 28
        ((480, 640), (476, 644)),
        ((100, 2000), (112, 1988)),
        ((2000, 3000), (1988, 2996)),  # within 16384*28*28 pixels: rounded only
        ((4000, 6000), (2912, 4368)),  # above: scaled down, then floored to 28
    ],
)
def test_model_image_size_is_smart_resize_with_the_paper_limits(original, model):
    size = crop_tool.model_image_size(original)
    assert size == model == smart_resize(*original, 28, 4 * 28 * 28, 16384 * 28 * 28)
    assert size[0] % 28 == 0 and size[1] % 28 == 0
    assert 4 * 28 * 28 <= size[0] * size[1] <= 16384 * 28 * 28
    # the whole image as the model sees it is the whole original image
    full = crop_tool.to_original_frame([0, 0, model[1], model[0]], model, original)
    np.testing.assert_allclose(full, [0, 0, original[1], original[0]])


def test_actions_from_completions():
    texts = [
        WELL_FORMED,
        "NO_CROP_NEEDED",
        call(zoom("[1, 2]")),
        "<tool_call>" + zoom("[28, 28, 56, 84]"),
        "nothing",
        WELL_FORMED + WELL_FORMED,
    ]
    original = (300, 450)
    model = crop_tool.model_image_size(original)  # (308, 448)
    decisions, boxes, counts = crop_tool.actions_from_completions(
        texts, [model] * len(texts), [original] * len(texts)
    )
    assert decisions.dtype == np.int32 and boxes.dtype == np.float32
    assert decisions.tolist() == [REGION, FULL, FULL, REGION, FULL, REGION]
    sx, sy = 450 / 448, 300 / 308
    scale = np.asarray([sx, sy, sx, sy], np.float32)
    expected = np.zeros((6, 4), np.float32)
    expected[[0, 5]] = np.asarray([10, 20, 110, 220], np.float32) * scale
    expected[3] = np.asarray([28, 28, 56, 84], np.float32) * scale
    np.testing.assert_allclose(boxes, expected, rtol=1e-6)
    assert counts == {
        "no_tool_call": 1,
        "no_crop": 1,
        "tool_call_json": 1,
        "regex_fallback": 0,
        "multiple_calls_first_used": 1,
        "truncated_recovered": 1,
        "truncated": 0,
        "malformed": 1,
    }
    assert list(counts) == list(crop_tool.OUTCOMES)
    with pytest.raises(ValueError, match="2 completions, 1 model sizes"):
        crop_tool.actions_from_completions(texts[:2], [model], [original, original])


def test_actions_from_completions_per_image_sizes():
    decisions, boxes, _ = crop_tool.actions_from_completions(
        [WELL_FORMED, WELL_FORMED], [(280, 420), (200, 500)], [(300, 450), (100, 1000)]
    )
    assert decisions.tolist() == [REGION, REGION]
    np.testing.assert_allclose(
        boxes, [[10 * 15 / 14, 20 * 15 / 14, 110 * 15 / 14, 220 * 15 / 14], [20, 10, 220, 110]]
    )
    assert all(math.isfinite(v) for v in boxes.ravel())


def test_conversation_renders_through_a_qwen_chat_template():
    from hf_tokenizer_fixtures import tiny_qwen_tokenizer

    messages = crop_tool.conversation("Which year was this bridge opened?")
    assert [m["role"] for m in messages] == ["system", "user"]
    text = tiny_qwen_tokenizer().apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    pieces = [
        "<|im_start|>system\n",
        crop_tool.SYSTEM_PROMPT,
        "<|im_start|>user\n",
        "<|vision_start|><|image_pad|><|vision_end|>",
        "User's question: Which year was this bridge opened?",
        "<|im_start|>assistant\n",
    ]
    positions = [text.index(piece) for piece in pieces]
    assert positions == sorted(positions)
    assert text.endswith("<|im_start|>assistant\n")
    assert text.count("<|image_pad|>") == 1
    # the prompt teaches the exact call format the parser reads
    assert '"bbox_2d"' in crop_tool.SYSTEM_PROMPT and "NO_CROP_NEEDED" in crop_tool.SYSTEM_PROMPT
    example = crop_tool.SYSTEM_PROMPT.splitlines()[-1]
    assert parse_completion(example).outcome == "tool_call_json"


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_deep_nesting_never_raises(depth):
    """Nesting deeper than the JSON decoder's recursion allows reads as malformed."""
    for body in ("[" * depth + "]" * depth, '{"a": ' * depth + "1" + "}" * depth):
        parsed = parse_completion(call(body))
        assert parsed.decision == FULL and parsed.outcome == "malformed"


ADVERSARIAL = [
    call("[" * 50_000),  # unclosed nesting inside a call
    "<tool_call>" + '{"arguments": {"bbox_2d": [' * 300,  # truncated deep nesting
    call(zoom("[10, 20, 110, 220]", label='"🐕 ∂ \\ud800 ñ"')),  # unicode and a lone surrogate
    call(zoom('["１０", "２０", "１１０", "２２０"]')),  # full-width digits (float() reads them)
    call(zoom("[1" + "0" * 400 + ", 0, 5, 5]")),  # an int too large for a float
    call(zoom("[1e308, 1e308, 1e309, -1e309]")),
    call(zoom("[NaN, 0, 5, 5]")),
    call(zoom("[10, 20, 110, 220]")) * 3 + NO_CROP_TEXT,  # several calls
    "<tool_call><tool_call><tool_call>" + "</tool_call>" * 5,
    '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 20, 1',  # cut
    "\x00" * 1000 + "<tool_call>\x00</tool_call>",
    "\u202e" + call('{"bbox_2d": [1,2,3,4]}') + "\ufeff",
    call('"bbox_2d": [' + "9" * 5000 + ", 1, 2, 3]"),  # regex fallback with a huge number
    call('{"arguments": {"bbox_2d": {"x1": 1}}, "arguments": [1, 2, 3, 4]}'),
]


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_adversarial_completions_never_raise(text):
    """Whatever the text, an action: REGION with four finite numbers, or FULL."""
    parsed = parse_completion(text)
    assert parsed.outcome in crop_tool.OUTCOMES
    if parsed.decision == REGION:
        assert len(parsed.box) == 4 and all(math.isfinite(v) for v in parsed.box)
    else:
        assert parsed.box is None


def test_random_completions_never_raise():
    """Random mixes of the grammar's pieces, unicode and numbers (2,000 texts)."""
    rng = np.random.default_rng(0)
    pieces = [
        "<tool_call>",
        "</tool_call>",
        "{",
        "}",
        "[",
        "]",
        '"bbox_2d"',
        ":",
        ",",
        '"',
        "arguments",
        "1e999",
        "-0",
        "NaN",
        "3.5",
        "é",
        "🙂",
        "\\",
        "\n",
        NO_CROP_TEXT,
    ]
    for _ in range(2000):
        text = "".join(rng.choice(pieces, size=rng.integers(1, 40)))
        parsed = parse_completion(text)
        assert parsed.outcome in crop_tool.OUTCOMES
        assert parsed.box is None or all(math.isfinite(v) for v in parsed.box)


def test_box_frame_switch_by_hand():
    """A 300 x 450 (h x w) image seen as 280 x 420: x scales by 450 / 420, y by 300 / 280 in
    jaxrank's "model" frame; the released code applies the box as written ("original")."""
    box = [28.0, 56.0, 140.0, 280.0]
    model = crop_tool.box_in_image(box, (280, 420), (300, 450), "model")
    np.testing.assert_allclose(model, [30.0, 60.0, 150.0, 300.0])
    assert model.dtype == np.float64
    np.testing.assert_array_equal(
        crop_tool.box_in_image(box, (280, 420), (300, 450), "original"), box
    )
    with pytest.raises(ValueError, match="original"):
        crop_tool.box_in_image(box, (280, 420), (300, 450), "resized")


def test_box_frame_in_graph_per_image_sizes():
    """The same map traced under jit, per-image sizes ``[B, 1, 2]`` against boxes ``[B, G, 4]``."""
    boxes = jnp.asarray([[[28.0, 56.0, 140.0, 280.0]], [[10.0, 10.0, 20.0, 30.0]]])
    model = jnp.asarray([[[280, 420]], [[100, 100]]])
    original = jnp.asarray([[[300, 450]], [[50, 200]]])
    mapped = jax.jit(lambda b, m, o: crop_tool.box_in_image(b, m, o, "model"))(
        boxes, model, original
    )
    np.testing.assert_allclose(mapped, [[[30, 60, 150, 300]], [[20, 5, 40, 15]]], rtol=1e-6)
    assert mapped.dtype == jnp.float32
    kept = jax.jit(lambda b, m, o: crop_tool.box_in_image(b, m, o, "original"))(
        boxes, model, original
    )
    np.testing.assert_array_equal(kept, boxes)
    _, host, _ = crop_tool.actions_from_completions(
        [WELL_FORMED], [(100, 100)], [(50, 200)], "original"
    )
    np.testing.assert_array_equal(host, [[10, 20, 110, 220]])
