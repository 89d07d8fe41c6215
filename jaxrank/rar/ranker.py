"""RAR's ranker (PAPERS.md §3): a vision-language model shown the query image and the k
retrieved class names in the paper's prompt, answering with the names as a list, best first.

Two ways to read it, both over the same prompt:

- **generate**: greedy decoding, the first ``[...]`` parsed back to classes
  (``ranking_text.parse_ranking``; a format error keeps the retrieval order);
- **score** (no free generation, fixed shapes: the TPU path): each candidate scores the
  log-probability that the answer *starts* with it, i.e. of the text ``['<name>',`` after the
  prompt (k >= 2, so a comma always follows the first name). The closing quote ends the name,
  so a name that prefixes another (``eight`` / ``eighteen``) is not credited with the longer
  one's mass, and the text stops where the answer's own tokens would (a Qwen-style tokenizer
  writes the quote and comma as one token). It is the sum over those tokens, not the mean:
  it is exactly the model's probability of predicting that class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxrank.models.lora import join_lora
from jaxrank.models.qwen_vision import Grid
from jaxrank.rar.class_scoring import class_log_probs
from jaxrank.rar.ranking_text import PROMPTS, Ranking, parse_ranking, ranking_prompt
from jaxrank.vlm.base import VLMBase, load_model_and_inputs
from jaxrank.vlm.programs import vlm_prompt

BASE_DIR = "ranker_base"  # the tiny ranker's tokenizer and image processor, in the workdir


def answer_text(names: Sequence[str]) -> str:
    """The answer that ranks ``names`` in this order: a list literal, as the prompt writes."""
    return str([str(name) for name in names])  # plain str: numpy's would print np.str_(...)


def _corpus(names: Sequence[str], k: int) -> list[str]:
    """Texts the tiny tokenizer is trained on: prompts and answers over random sets of k."""
    rng = np.random.default_rng(0)
    sets = [[names[i] for i in rng.permutation(len(names))[:k]] for _ in range(256)]
    prompts = [ranking_prompt(s, style) for s in sets for style in PROMPTS]
    return [*prompts, *(answer_text(s) for s in sets), *names]


class RankerBase(VLMBase):
    """The ranker's model before LoRA. Candidates are class names, in prompt order."""

    def conversation(self, names: Sequence[str], style: str = "generic") -> list[dict]:
        prompt = ranking_prompt(names, style)
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]

    def prompts(
        self, images: np.ndarray, shown: Sequence[Sequence[str]], style: str = "generic"
    ) -> dict[str, np.ndarray]:
        """The batch asking to rank the names ``shown`` (in prompt order) per image, in the
        prompt ``style`` (``ranking_text.PROMPTS``)."""
        return self.encode([self.conversation(names, style) for names in shown], images)

    def answers(self, ranked: Sequence[Sequence[str]], length: int) -> dict[str, np.ndarray]:
        """Supervised targets: each answer listing the names ``ranked`` in order."""
        return self.targets([answer_text(names) for names in ranked], length)

    def openings(self, shown: Sequence[Sequence[str]], length: int) -> dict[str, np.ndarray]:
        """Completions ``[B*k, length]`` ``['<name>',`` for the score path (row b*k + j:
        query b's j-th shown name), no end-of-turn token."""
        rows = [self.token_ids(f"[{str(name)!r},") for names in shown for name in names]
        if max(map(len, rows)) > length:
            raise ValueError(f"a class name needs {max(map(len, rows))} tokens > {length}")
        tokens = np.zeros((len(rows), length), np.int32)
        mask = np.zeros((len(rows), length), bool)
        for i, row in enumerate(rows):
            tokens[i, : len(row)], mask[i, : len(row)] = row, True
        return {"completion": tokens, "completion_mask": mask}

    def read(
        self, tokens: np.ndarray, mask: np.ndarray, shown: Sequence[Sequence[str]]
    ) -> list[Ranking]:
        """Each generated answer parsed against its shown names (orders index ``shown``)."""
        texts = self.decode(tokens, mask)
        return [parse_ranking(text, names) for text, names in zip(texts, shown, strict=True)]


def build_ranker(
    cfg: ml_collections.ConfigDict, folder: Path, names: Sequence[str], mesh: jax.sharding.Mesh
) -> RankerBase:
    """``cfg.ranker.checkpoint`` when set; else the tiny random ranker of ``cfg.ranker.tiny``,
    its tokenizer trained on prompts over ``names`` (every class it will see) and kept in
    ``folder``."""
    section = cfg.ranker
    model, inputs = load_model_and_inputs(
        section, folder, lambda: _corpus(names, cfg.k), cfg.seed, mesh
    )
    return RankerBase(model, inputs, section.image_size)


def make_scorer(graphdef: nnx.GraphDef, grid: Grid) -> Callable[..., jax.Array]:
    """``score(adapters, rest, batch, openings) -> [B, k]``, jitted: each shown class's
    log-probability of opening the answer (see the module doc)."""

    @jax.jit
    def score(adapters, rest, batch, openings):
        model = nnx.view(join_lora(graphdef, adapters, rest), deterministic=True)
        prompt = vlm_prompt(model, batch, grid)
        return class_log_probs(
            model.language_model,
            prompt,
            openings["completion"],
            openings["completion_mask"],
            per_token=False,
        )

    return score
