"""The crop policy's answers read on the device: decision, box and outcome of every completion,
from its token ids, inside the jitted step (``crop_tool.parse_completion`` is the host's
reference reader; this one follows its rules without leaving the device).

A table built once from the tokenizer maps every token id to the characters it decodes to
(``skip_special_tokens``, as ``VLMBase.decode`` reads), each as a small code: ASCII as itself;
any other character as "whitespace" (``str.isspace``), "decimal digit d"
(``unicodedata.decimal``, which ``float`` reads too) or "other". A batch's masked tokens become
one character row per completion; tags are found by comparing windows; the box's list is read
by a small state machine run over its characters (``lax.while_loop`` over columns, vectorised
over completions).

The grammar read, and where it equals ``parse_completion``:

- the first ``<tool_call>`` opens the call; its body ends at the next ``</tool_call>``
  (``closed``) or at the end of the text (truncated); a second ``<tool_call>`` after a closed
  call makes ``multiple_calls_first_used``; no call reads FULL, ``no_crop`` when
  ``NO_CROP_NEEDED`` is written anywhere;
- the box is the first match in the body of ``"bbox_2d"\\s*:\\s*\\[([^\\]]+)\\]``, split on commas
  into exactly four items, each ``ws* quote* ws* number ws* quote* ws*`` with ``number``
  Python's ``float`` syntax (sign, digits with single underscores, fraction, exponent);
  non-finite values are not boxes. That is ``parse_completion``'s regex fallback exactly.
- ``parse_completion`` first tries JSON: where the body parses and names ``arguments.bbox_2d``,
  its JSON verdict stands. The two agree unless the body holds another ``"bbox_2d"`` key
  before the arguments' or the list's JSON strings hold commas; the device reader cannot parse
  JSON, so the rule it keeps is the regex's and its outcome merges ``tool_call_json`` and
  ``regex_fallback`` into ``tool_call``.
- numbers are computed in float32 from their first 9 significant digits (the host's are float64
  cast to float32: the same to float32 rounding); a value that overflows float32 but not
  float64 (|x| in [3.4e38, 1.8e308]) reads non-finite here and finite there;
- a character split over several tokens (multi-byte UTF-8) reads as the tokens' replacement
  characters, "other": it differs only if the joined character is whitespace or a digit.

``tests/region_r1/test_tool_reader.py`` checks agreement on generated, adversarial and random
token sequences, with ``parse_completion`` as the reference on this grammar.
"""

from __future__ import annotations

import dataclasses
import unicodedata

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxrank.region_r1.action import FULL, REGION
from jaxrank.region_r1.crop_tool import CALL_CLOSE, CALL_OPEN, NO_CROP

# Device outcomes: parse_completion's, with its two readings of a call's body merged.
OUTCOMES = (
    "no_tool_call",
    "no_crop",
    "tool_call",
    "multiple_calls_first_used",
    "truncated_recovered",
    "truncated",
    "malformed",
)
HOST_OUTCOME = {"tool_call_json": "tool_call", "regex_fallback": "tool_call"}

PAD, SPACE, DIGIT0, OTHER = 0, 128, 129, 139  # codes: 1..127 ASCII (NUL reads OTHER)
NUM_CODES = 140
BBOX_KEY = '"bbox_2d"'

# Character classes of the number state machine.
WS, QUOTE, PLUS, MINUS, DIG, DOT, EXP_E, UNDERSCORE, COMMA, ELSE = range(10)
# States: before the number (whitespace, quotes, whitespace), sign, integer digits, fraction,
# exponent (each with an underscore state), the trailing whitespace/quotes, and FAIL.
(S0, S1, S2, SIGN, INT, INT_US, DOT0, FRAC0, FRAC, FRAC_US, EXP0, EXPS, EXPD, EXP_US, T_WS1, T_Q,
 T_WS2, FAIL) = range(18)  # fmt: skip
ACCEPTING = (INT, FRAC0, FRAC, EXPD, T_WS1, T_Q, T_WS2)
MANTISSA_DIGITS = 9


def _transitions() -> np.ndarray:
    """``[state, class] -> state`` of one item of the box's list (module doc's grammar)."""
    table = np.full((18, 10), FAIL, np.int32)
    start = {PLUS: SIGN, MINUS: SIGN, DIG: INT, DOT: DOT0}
    for state, moves in {
        S0: {WS: S0, QUOTE: S1, **start},
        S1: {QUOTE: S1, WS: S2, **start},
        S2: {WS: S2, **start},
        SIGN: {DIG: INT, DOT: DOT0},
        INT: {DIG: INT, UNDERSCORE: INT_US, DOT: FRAC0, EXP_E: EXP0, WS: T_WS1, QUOTE: T_Q},
        INT_US: {DIG: INT},
        DOT0: {DIG: FRAC},
        FRAC0: {DIG: FRAC, EXP_E: EXP0, WS: T_WS1, QUOTE: T_Q},
        FRAC: {DIG: FRAC, UNDERSCORE: FRAC_US, EXP_E: EXP0, WS: T_WS1, QUOTE: T_Q},
        FRAC_US: {DIG: FRAC},
        EXP0: {PLUS: EXPS, MINUS: EXPS, DIG: EXPD},
        EXPS: {DIG: EXPD},
        EXPD: {DIG: EXPD, UNDERSCORE: EXP_US, WS: T_WS1, QUOTE: T_Q},
        EXP_US: {DIG: EXPD},
        T_WS1: {WS: T_WS1, QUOTE: T_Q},
        T_Q: {QUOTE: T_Q, WS: T_WS2},
        T_WS2: {WS: T_WS2},
    }.items():
        for cls, to in moves.items():
            table[state, cls] = to
    return table


def char_code(char: str) -> int:
    """The reader's code of one decoded character (module doc)."""
    point = ord(char)
    if 0 < point < 128:
        return point
    if char.isspace():
        return SPACE
    digit = unicodedata.decimal(char, None)
    return OTHER if digit is None else DIGIT0 + digit


def _code_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per code: is whitespace, digit value (-1: none), number-machine class."""
    is_space = np.zeros(NUM_CODES, bool)
    digit = np.full(NUM_CODES, -1, np.int32)
    cls = np.full(NUM_CODES, ELSE, np.int32)
    for code in range(1, 128):
        is_space[code] = chr(code).isspace()
        if chr(code).isdigit():
            digit[code] = code - ord("0")
    is_space[SPACE] = True
    digit[DIGIT0 : DIGIT0 + 10] = np.arange(10)
    cls[is_space] = WS
    cls[digit >= 0] = DIG
    for chars, value in (("'\"", QUOTE), ("+", PLUS), ("-", MINUS), (".", DOT)):
        cls[[ord(c) for c in chars]] = value
    cls[[ord("e"), ord("E")]] = EXP_E
    cls[ord("_")], cls[ord(",")] = UNDERSCORE, COMMA
    return is_space, digit, cls


@flax.struct.dataclass
class Reading:
    """``decision [N]`` FULL/REGION, ``box [N, 4]`` float32 in the model's frame (zeros for
    FULL), ``outcome [N]`` int32 index into ``OUTCOMES``."""

    decision: jax.Array
    box: jax.Array
    outcome: jax.Array


@dataclasses.dataclass(frozen=True)
class ToolReader:
    """``codes [V, M]`` uint8: each token id's characters (``PAD`` after its last)."""

    codes: np.ndarray

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int | None = None) -> ToolReader:
        """The table of every id below ``vocab_size`` (default: the tokenizer's length; ids
        the tokenizer lacks, e.g. a checkpoint's padded embedding rows, decode to nothing)."""
        size = len(tokenizer) if vocab_size is None else vocab_size
        texts = [tokenizer.decode([i], skip_special_tokens=True) for i in range(len(tokenizer))]
        texts += [""] * max(0, size - len(texts))
        width = max(1, *map(len, texts[:size]))
        codes = np.zeros((size, width), np.uint8)
        for i, text in enumerate(texts[:size]):
            codes[i, : len(text)] = [char_code(c) for c in text]
        return cls(codes)

    def characters(self, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Each completion's character codes ``[N, L * M]`` (masked tokens dropped, the rest
        packed to the left, ``PAD`` after) and its length ``[N]``."""
        codes = jnp.asarray(self.codes)[jnp.where(mask, tokens, 0)]
        codes = jnp.where(mask[..., None], codes, PAD).reshape(tokens.shape[0], -1)
        valid = codes != PAD
        width = codes.shape[1]
        slot = jnp.where(valid, jnp.cumsum(valid, axis=1) - 1, width)
        rows = jnp.arange(codes.shape[0])[:, None]
        packed = jnp.zeros_like(codes).at[rows, slot].set(codes, mode="drop")
        return packed, valid.sum(axis=1)

    def read(self, tokens: jax.Array, mask: jax.Array) -> Reading:
        """The action of every completion ``tokens [N, L]`` (``mask``: the generated ones)."""
        text, length = self.characters(tokens, mask)
        return read_characters(text, length)


def _starts(text: jax.Array, pattern: str) -> jax.Array:
    """``[N, C]``: the pattern's characters start at each position."""
    width = text.shape[1]
    padded = jnp.pad(text, ((0, 0), (0, len(pattern))))
    hits = [padded[:, k : k + width] == ord(c) for k, c in enumerate(pattern)]
    return jnp.all(jnp.stack(hits), axis=0)


def _first(hits: jax.Array, start: jax.Array | int = 0) -> jax.Array:
    """``[N]``: the first position at or after ``start`` where ``hits``, else the width."""
    width = hits.shape[1]
    hits = hits & (jnp.arange(width) >= jnp.asarray(start)[..., None])
    return jnp.where(hits.any(axis=1), jnp.argmax(hits, axis=1), width)


def _next(where: jax.Array) -> jax.Array:
    """``[N, C + 1]``: for every position, the first position at or after it where ``where``
    (the width when none; index C is the width itself)."""
    width = where.shape[1]
    index = jnp.where(where, jnp.arange(width), width)
    index = jax.lax.cummin(index, axis=1, reverse=True)
    return jnp.pad(index, ((0, 0), (0, 1)), constant_values=width)


def _at(table: jax.Array, index: jax.Array) -> jax.Array:
    """``table[n, index[n]]`` with index clamped into the row."""
    index = jnp.clip(index, 0, table.shape[1] - 1)
    return jnp.take_along_axis(table, index[:, None], axis=1)[:, 0]


def read_characters(text: jax.Array, length: jax.Array) -> Reading:
    """``ToolReader.read`` on packed character codes ``[N, C]`` and their lengths ``[N]``."""
    width = text.shape[1]
    is_space, _, _ = (jnp.asarray(t) for t in _code_tables())
    opens = _starts(text, CALL_OPEN)
    first_open = _first(opens)
    has_call = first_open < width
    body = first_open + len(CALL_OPEN)
    close = _first(_starts(text, CALL_CLOSE), body)
    closed = has_call & (close < width)
    end = jnp.where(closed, close, length)
    several = closed & (_first(opens, close + len(CALL_CLOSE)) < width)
    no_crop = _starts(text, NO_CROP).any(axis=1)

    # The regex's first match in the body: key, ws, ':', ws, '[', >= 1 non-']', ']'.
    non_space = _next(~is_space[text])
    bracket = _next(text == ord("]"))
    position = jnp.arange(width)[None, :]
    colon = jnp.take_along_axis(non_space, jnp.minimum(position + len(BBOX_KEY), width), axis=1)
    colon_ok = jnp.take_along_axis(jnp.pad(text, ((0, 0), (0, 1))), colon, axis=1) == ord(":")
    opening = jnp.take_along_axis(non_space, jnp.minimum(colon + 1, width), axis=1)
    opening_ok = jnp.take_along_axis(jnp.pad(text, ((0, 0), (0, 1))), opening, axis=1) == ord("[")
    closing = jnp.take_along_axis(bracket, jnp.minimum(opening + 1, width), axis=1)
    match = (
        _starts(text, BBOX_KEY)
        & (position >= body[:, None])
        & colon_ok
        & opening_ok
        & (closing > opening + 1)
        & (closing < end[:, None])
    )
    found = has_call & match.any(axis=1)
    first_match = jnp.argmax(match, axis=1)
    list_start = _at(opening, first_match) + 1
    list_end = _at(closing, first_match)
    box, box_ok = _read_numbers(text, list_start, jnp.where(found, list_end, list_start))
    box_ok = found & box_ok

    region = has_call & box_ok
    outcome = jnp.select(
        [
            ~has_call & no_crop,
            ~has_call,
            ~closed & region,
            ~closed,
            ~box_ok,
            several,
        ],
        [OUTCOMES.index(o) for o in ("no_crop", "no_tool_call", "truncated_recovered",
                                     "truncated", "malformed", "multiple_calls_first_used")],
        OUTCOMES.index("tool_call"),
    )  # fmt: skip
    decision = jnp.where(region, REGION, FULL).astype(jnp.int32)
    return Reading(decision, jnp.where(region[:, None], box, 0.0), outcome.astype(jnp.int32))


def _read_numbers(text: jax.Array, start: jax.Array, stop: jax.Array):
    """The four comma-separated numbers of each row's ``text[start:stop]``: ``[N, 4]``
    float32 and whether there were exactly four, each valid and finite."""
    _, digit_of, class_of = (jnp.asarray(t) for t in _code_tables())
    moves = jnp.asarray(_transitions())
    accepting = jnp.isin(jnp.arange(18), jnp.asarray(ACCEPTING))
    powers = jnp.asarray(np.float32(10.0) ** np.arange(39, dtype=np.float32))
    rows = text.shape[0]
    zeros_i = jnp.zeros(rows, jnp.int32)
    zeros_f = jnp.zeros(rows, jnp.float32)
    false = jnp.zeros(rows, bool)

    def value(item):
        mantissa, shift, frac, exponent, negative_exp, negative, _ = item
        scale = shift - frac + jnp.where(negative_exp, -exponent, exponent)
        big = powers[jnp.clip(jnp.abs(scale), 0, 38)]
        big = jnp.where(jnp.abs(scale) > 38, jnp.inf, big)
        magnitude = jnp.where(scale >= 0, mantissa * big, mantissa / big)
        magnitude = jnp.where(mantissa == 0, 0.0, magnitude)
        return jnp.where(negative, -magnitude, magnitude)

    def finish(carry):
        """Close the current item: store its value, count it, reset the machine."""
        state, item, numbers, ok, acc = carry
        good = accepting[state]
        number = value(acc)
        good = good & jnp.isfinite(number) & (item < 4)
        slot = jnp.arange(4) == item[:, None]
        numbers = jnp.where(slot, number[:, None], numbers)
        return jnp.full(rows, S0), item + 1, numbers, ok & good

    fresh = (zeros_f, zeros_i, zeros_i, zeros_i, false, false, zeros_i)

    def body(carry):
        column, state, item, numbers, ok, acc = carry
        active = start + column < stop
        code = _at(text, start + column)
        cls = class_of[code]
        digit = digit_of[code]
        is_comma = active & (cls == COMMA)
        new_state, new_item, new_numbers, new_ok = finish((state, item, numbers, ok, acc))
        mantissa, shift, frac, exponent, negative_exp, negative, significant = acc
        is_digit = cls == DIG
        in_mantissa = is_digit & jnp.isin(state, jnp.asarray((S0, S1, S2, SIGN, INT, INT_US)))
        in_fraction = is_digit & jnp.isin(state, jnp.asarray((DOT0, FRAC0, FRAC, FRAC_US)))
        in_exponent = is_digit & jnp.isin(state, jnp.asarray((EXP0, EXPS, EXPD, EXP_US)))
        room = significant < MANTISSA_DIGITS
        counted = (in_mantissa | in_fraction) & ((mantissa > 0) | (digit > 0))
        keep = (in_mantissa | in_fraction) & room
        acc_next = (
            jnp.where(keep, mantissa * 10 + digit, mantissa),
            shift + (in_mantissa & ~room).astype(jnp.int32),
            frac + (in_fraction & room).astype(jnp.int32),
            jnp.where(in_exponent, jnp.minimum(exponent * 10 + digit, 10_000), exponent),
            negative_exp | ((state == EXP0) & (cls == MINUS)),
            negative | (jnp.isin(state, jnp.asarray((S0, S1, S2))) & (cls == MINUS)),
            significant + counted.astype(jnp.int32),
        )
        stepped = moves[state, cls]
        pick = lambda a, b, c: jnp.where(is_comma, a, jnp.where(active, b, c))
        state = pick(new_state, stepped, state)
        acc = tuple(pick(f, n, o) for f, n, o in zip(fresh, acc_next, acc, strict=True))
        return (
            column + 1,
            state,
            jnp.where(is_comma, new_item, item),
            jnp.where(is_comma[:, None], new_numbers, numbers),
            jnp.where(is_comma, new_ok, ok),
            acc,
        )

    longest = jnp.max(stop - start)
    start_carry = (jnp.zeros((), jnp.int32), jnp.full(rows, S0), zeros_i,
                   jnp.zeros((rows, 4), jnp.float32), jnp.ones(rows, bool), fresh)  # fmt: skip
    carry = jax.lax.while_loop(lambda c: c[0] < longest, body, start_carry)
    _, state, item, numbers, ok, acc = carry
    _, item, numbers, ok = finish((state, item, numbers, ok, acc))
    return numbers, ok & (item == 4)
