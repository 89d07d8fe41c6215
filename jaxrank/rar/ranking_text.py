"""RAR's ranker as text (PAPERS.md §3): the prompt that asks an MLLM to sort the retrieved
classes, and the reading of its answer back into an order over those classes.

The printed template puts the names in as ``{[names]}``; jaxrank writes them as a Python list
literal of quoted names (``['Boeing 707', 'Airbus A320']``), the form that template gives when
filled with ``str(list)``. Reading is lenient about the answer's form and strict about its
content:

- the first ``[...]`` in the output is the answer; quoted or bare names, any case, stray
  spaces and a trailing full stop are accepted;
- a name that is not one of the candidates is counted as unknown and skipped; a repeated one
  counts as a duplicate, and only its first place is kept; candidates the answer leaves out
  follow in retrieval order, counted as missing;
- no list, a list that is never closed (a truncated output), or a list with no known name is
  a format error: the order is the retrieval order, as in the paper.

The prediction is the first class of the order.

The prompt's wording differs between RAR's released files (``PROMPTS``): the fine-tuning data
(``finetune/build_finetuning_data.ipynb``) reads "a aircraft classification expert, and sort the
provided categories", the few-shot evaluation (``Few_shot/retrieve_and_rerank.py``) "a
classification expert, and sort the provided {k} categories"; the paper prints the first without
the domain word, jaxrank's ``"generic"``. Each config names the prompt of the file its number
came from (``ranker.train_prompt``, ``ranker.eval_prompt``).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Sequence

_TAIL = (
    "from high to low according to the top {k} similarity with the input image. Here are the "
    "optional categories:{names}."
)
PROMPTS = {
    "generic": "Please play the role of a classification expert, and sort the provided "
    "categories " + _TAIL,
    "finetune": "Please play the role of a aircraft classification expert, and sort the "
    "provided categories " + _TAIL,
    "fewshot": "Please play the role of a classification expert, and sort the provided {k} "
    "categories " + _TAIL,
}
PROMPT = PROMPTS["generic"]
OUTCOMES = ("ranked", "no_list", "truncated", "no_known_name")
_SPACES = re.compile(r"\s+")


def ranking_prompt(names: Sequence[str], style: str = "generic") -> str:
    """The prompt ``style`` (``PROMPTS``) for ``names`` in retrieval order (k = their number)."""
    if style not in PROMPTS:
        raise ValueError(f"ranking prompt must be one of {tuple(PROMPTS)}, got {style!r}")
    return PROMPTS[style].format(k=len(names), names=str([str(name) for name in names]))


def _normalise(name: str) -> str:
    return _SPACES.sub(" ", name.strip().strip("'\"`").strip().rstrip(".").casefold())


_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def _items(body: str) -> list[str]:
    """The names inside the brackets: a Python list literal if it is one (and did not glue
    neighbouring strings that lack a comma into one), else the quoted names, else comma-split."""
    quoted = [a or b for a, b in _QUOTED.findall(body)]
    try:
        value = ast.literal_eval(f"[{body}]")
        if all(isinstance(v, str) for v in value) and len(value) >= len(quoted):
            return value
    except (ValueError, SyntaxError, RecursionError):
        pass
    return quoted or [part for part in body.split(",") if part.strip()]


@dataclasses.dataclass(frozen=True)
class Ranking:
    """``order``: every candidate's index, best first; ``outcome`` one of ``OUTCOMES``."""

    order: tuple[int, ...]
    outcome: str
    unknown: int = 0
    duplicates: int = 0
    missing: int = 0

    @property
    def prediction(self) -> int:
        return self.order[0]


def parse_ranking(text: str, candidates: Sequence[str]) -> Ranking:
    """The order the model's ``text`` gives to ``candidates`` (names in retrieval order)."""
    if not candidates:
        raise ValueError("parse_ranking needs at least one candidate")
    fallback = tuple(range(len(candidates)))
    start = text.find("[")
    if start < 0:
        return Ranking(fallback, "no_list")
    end = text.find("]", start)
    if end < 0:
        return Ranking(fallback, "truncated")
    exact: dict[str, list[int]] = {}
    loose: dict[str, list[int]] = {}
    for i, name in enumerate(candidates):
        exact.setdefault(name.strip(), []).append(i)
        loose.setdefault(_normalise(name), []).append(i)
    order: list[int] = []
    unknown = duplicates = 0
    for item in _items(text[start + 1 : end]):
        # An exact name wins over a normalised one, and candidates that normalise alike stay
        # distinct: each match takes the first of them not ranked yet.
        matches = exact.get(item.strip()) or loose.get(_normalise(item)) or []
        fresh = [i for i in matches if i not in order]
        found = fresh[0] if fresh else (matches[0] if matches else None)
        if found is None:
            unknown += 1
        elif found in order:
            duplicates += 1
        else:
            order.append(found)
    if not order:
        return Ranking(fallback, "no_known_name", unknown, duplicates)
    missing = [i for i in fallback if i not in order]
    return Ranking((*order, *missing), "ranked", unknown, duplicates, len(missing))


def ranking_report(rankings: Iterable[Ranking]) -> dict[str, int]:
    """Counts over many answers: each outcome, and unknown, duplicate and missing names."""
    rankings = list(rankings)
    outcomes = Counter(r.outcome for r in rankings)
    return {
        **{outcome: outcomes.get(outcome, 0) for outcome in OUTCOMES},
        "unknown_names": sum(r.unknown for r in rankings),
        "duplicate_names": sum(r.duplicates for r in rankings),
        "missing_names": sum(r.missing for r in rankings),
    }
