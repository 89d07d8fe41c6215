"""The device's tool-call reader against ``crop_tool.parse_completion`` (the reference) on its
grammar (``tool_reader``'s module doc): a property-style corpus of texts built from the
grammar's pieces and adversarial ones (fixed seed), the same texts as token ids of the policy's
tokenizer split at random (numbers split across tokens, truncation), and random token ids."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrank.models.hf.qwen_tokenizer import train_qwen_style_tokenizer
from jaxrank.region_r1 import crop_tool, tool_reader
from jaxrank.region_r1.mllm_policy import _corpus, completion_text

OPEN, CLOSE, KEY = crop_tool.CALL_OPEN, crop_tool.CALL_CLOSE, '"bbox_2d"'
NUMBERS = ["0", "7", "-3", "+12", "48", "3.5", ".5", "5.", "1e2", "2E-1", "1_000", "1__0", "_1",
           "1e400", "0e999", "1e-60", "inf", "nan", "1.2.3", "--1", "١٢", "12\u00a0", "0x10",
           "123456789012", "0.0000000001", "1e", "e1", ""]  # fmt: skip
WRAPS = ["{}", " {} ", '"{}"', "'{}'", '" {} "', "\"'{}'\"", '"{}', '{}"', '" "{}"', "\t{}\n"]
PIECES = [OPEN, CLOSE, crop_tool.NO_CROP, KEY, ":", " : ", "[", "]", ",", ", ", " ", "{",
          "}", '"label": "a, b"', '"arguments": {', "x", "bbox", "\u3000", "\x1c"]  # fmt: skip


def _random_list(rng) -> str:
    items = rng.integers(2, 6)
    words = [rng.choice(WRAPS).format(rng.choice(NUMBERS)) for _ in range(items)]
    return "[" + ",".join(words) + rng.choice(["]", "]", "", " ]"])


def _random_text(rng) -> str:
    """Grammar pieces in random order, a canonical call, or a call around a random list."""
    kind = rng.integers(4)
    if kind == 0:
        box = rng.integers(-5, 60, 4)
        text = completion_text(crop_tool.REGION, box, label=str(rng.choice(["a", "x, y", ""])))
        return text[: rng.integers(len(text) // 2, len(text) + 1)] if rng.random() < 0.3 else text
    if kind == 1:
        key = KEY + rng.choice([":", " : ", ":\n", " "])
        return (
            rng.choice(["", "why. "])
            + OPEN
            + key
            + _random_list(rng)
            + rng.choice([CLOSE, "", CLOSE + OPEN, CLOSE + " " + OPEN + KEY + ":[1,2,3,4]" + CLOSE])
        )
    if kind == 2:
        args = json.dumps({"name": crop_tool.TOOL_NAME, "arguments": {"label": "a"}})
        return OPEN + args[:-2] + ', "bbox_2d": ' + _random_list(rng) + "}}" + CLOSE
    return "".join(rng.choice([*PIECES, _random_list(rng)]) for _ in range(rng.integers(1, 12)))


def _regex_box(body: str):
    match = crop_tool._BBOX.search(body)
    return crop_tool._box(match.group(1).split(",")) if match else None


def in_grammar(text: str) -> bool:
    """Where the device reader must equal ``parse_completion`` (``tool_reader``'s doc): a JSON
    body's verdict equals the regex's, and no coordinate overflows float32 only."""
    calls = list(crop_tool._CALL.finditer(text))
    if calls:
        body = calls[0].group(1).strip()
        try:
            call = json.loads(body)
        except (ValueError, RecursionError):
            call = None
        arguments = call.get("arguments") if isinstance(call, dict) else None
        json_reads = isinstance(arguments, dict) and "bbox_2d" in arguments
        if json_reads and crop_tool._box(arguments["bbox_2d"]) != _regex_box(body):
            return False
    box = crop_tool.parse_completion(text).box
    return box is None or all(abs(v) < 1e38 for v in box)


def _expected(texts):
    actions = [crop_tool.parse_completion(t) for t in texts]
    decisions = np.asarray([a.decision for a in actions])
    boxes = np.asarray([a.box or (0.0,) * 4 for a in actions], np.float64)
    outcomes = [tool_reader.HOST_OUTCOME.get(a.outcome, a.outcome) for a in actions]
    return decisions, boxes, outcomes


def _assert_agree(reading, texts):
    decisions, boxes, outcomes = _expected(texts)
    got = [tool_reader.OUTCOMES[i] for i in np.asarray(reading.outcome)]
    for i, text in enumerate(texts):
        assert got[i] == outcomes[i], (text, got[i], outcomes[i])
    np.testing.assert_array_equal(np.asarray(reading.decision), decisions)
    np.testing.assert_allclose(np.asarray(reading.box), boxes, rtol=2e-6, atol=1e-30)


def _codes(texts):
    width = max(map(len, texts))
    codes = np.zeros((len(texts), width), np.uint8)
    for i, text in enumerate(texts):
        codes[i, : len(text)] = [tool_reader.char_code(c) for c in text]
    return jnp.asarray(codes), jnp.asarray([len(t) for t in texts])


CORPUS = [_random_text(np.random.default_rng(seed)) for seed in range(3000)]
HAND = [
    OPEN + KEY + ": [1, 2, 3, 4]" + CLOSE + OPEN,  # several calls, the second unclosed
    OPEN + "x" + CLOSE + OPEN + KEY + ":[1,2,3,4]" + CLOSE,  # the first call rules: malformed
    OPEN + KEY + ":[] " + KEY + ":[5,6,7,8]" + CLOSE,  # the regex's next match
    OPEN + KEY + ":[1,2,3,4" + CLOSE + "]",  # the list's ']' after the call's end
    "say " + KEY + ": [1,2,3,4] then " + crop_tool.NO_CROP,  # a box in the prose is ignored
    OPEN + KEY + ": [\" 1 \", '2', \"'3'\", 4.]",  # truncated, recovered; quotes stripped
    OPEN + KEY + ":[50, 40, 10, 5]" + CLOSE,  # inverted: kept as written
    OPEN + KEY + ":[-1e3, 1e-3, 1_0.5_0, 9e37]" + CLOSE,
    OPEN + KEY + ":[1, 2, 3, true]" + CLOSE,
]


def test_corpus_is_mostly_in_the_grammar_and_covers_every_outcome():
    kept = [t for t in CORPUS if in_grammar(t)]
    assert len(kept) > 0.95 * len(CORPUS)
    _, _, outcomes = _expected(kept)
    assert set(outcomes) == set(tool_reader.OUTCOMES)
    assert all(in_grammar(t) for t in HAND)


def test_reader_equals_parse_completion_on_characters():
    texts = [t for t in CORPUS if in_grammar(t)] + HAND
    reading = jax.jit(tool_reader.read_characters)(*_codes(texts))
    _assert_agree(reading, texts)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    questions = ["which object is red?", "the striped one?"]
    return train_qwen_style_tokenizer(_corpus(questions, 48), 400, tmp_path_factory.mktemp("tok"))


def _split_tokens(tokenizer, text, rng) -> list[int]:
    """``text``'s ids when cut into random pieces encoded one by one: numbers and tags split
    across tokens the way a sampler can write them."""
    cuts = sorted(rng.choice(len(text) + 1, size=min(len(text), 4), replace=False))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return [i for p in pieces if p for i in tokenizer(p, add_special_tokens=False)["input_ids"]]


def test_reader_equals_parse_completion_on_token_ids(tokenizer):
    rng = np.random.default_rng(0)
    reader = tool_reader.ToolReader.from_tokenizer(tokenizer)
    rows = [_split_tokens(tokenizer, t, rng) for t in CORPUS[:600] + HAND]
    rows += [list(rng.integers(0, len(tokenizer), rng.integers(1, 30))) for _ in range(300)]
    width = max(map(len, rows))
    tokens = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        cut = len(row) if rng.random() < 0.8 else rng.integers(0, len(row) + 1)  # truncation
        tokens[i, : len(row)], mask[i, :cut] = row, True
    texts = tokenizer.batch_decode(
        [r[m] for r, m in zip(tokens, mask, strict=True)], skip_special_tokens=True
    )
    keep = np.asarray([in_grammar(t) for t in texts])
    assert keep.mean() > 0.95
    reading = jax.jit(reader.read)(tokens[keep], mask[keep])
    _assert_agree(reading, [t for t, k in zip(texts, keep, strict=True) if k])
