"""The generative embedder's inputs on the multi-grain benchmark: every query and knowledge-base
entry as a prompt row (instruction, text, image, whether the image is shown) with its summary
target, the description of what it shows (the target entity's, for a query).

The instructions follow M-BEIR's per task (PAPERS.md §2: ``<image> <instruction> {query}``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxrank.data.multigrain import I2T, IT2I, T2I, TASKS, MultiGrain

INSTRUCTIONS = {
    T2I: "Find an image that matches the given caption.",
    I2T: "Find a caption that describes the given image.",
    TASKS.index("i->i"): "Find an image of the same object as the given image.",
    IT2I: "Find an image that matches the given image with the given change.",
}
CANDIDATE_INSTRUCTIONS = ("Represent the given image.", "Represent the given caption.")
IMAGE, TEXT = 0, 1  # candidate modalities, the order of the candidate table
Embed = Callable[[dict[str, Any]], np.ndarray]  # rows -> unit embeddings [N, D]


class BenchmarkRows:
    """Prompt rows of a ``MultiGrain`` benchmark's queries and knowledge-base entries."""

    def __init__(self, bench: MultiGrain):
        self.bench = bench
        world = bench.world
        self.kb_images = world.entity_images(world.config.image_size)
        self.kb_texts = world.entity_texts()

    def queries(self, queries: dict[str, Any]) -> dict[str, Any]:
        """``MultiGrain.queries`` as rows: a text->image query shows no image, the others do;
        the summary target is the target entity's description."""
        task = np.asarray(queries["task"])
        return {
            "instructions": [INSTRUCTIONS[int(t)] for t in task],
            "texts": list(queries["texts"]),
            "images": queries["images"],
            "has_image": task != T2I,
            "summaries": [self.kb_texts[e] for e in queries["entity"]],
            "entity": np.asarray(queries["entity"], np.int32),
        }

    def candidates(self, entities: Sequence[int] | np.ndarray, modality: np.ndarray) -> dict:
        """Knowledge-base entries as rows: ``modality`` [N] IMAGE (its image, no text) or TEXT
        (its description, the image slot hidden)."""
        entities = np.asarray(entities)
        modality = np.broadcast_to(np.asarray(modality), entities.shape)
        return {
            "instructions": [CANDIDATE_INSTRUCTIONS[m] for m in modality],
            "texts": [
                "" if m == IMAGE else self.kb_texts[e]
                for e, m in zip(entities, modality, strict=True)
            ],
            "images": self.kb_images[entities],
            "has_image": modality == IMAGE,
            "summaries": [self.kb_texts[e] for e in entities],
            "entity": entities.astype(np.int32),
        }


def candidate_modality(task: np.ndarray) -> np.ndarray:
    """The modality each task retrieves: text for image->text, else image."""
    return np.where(np.asarray(task) == I2T, TEXT, IMAGE)


def concat_rows(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Row dicts joined in order."""
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if isinstance(values[0], np.ndarray):
            out[key] = np.concatenate(values)
        else:
            out[key] = [item for value in values for item in value]
    return out


def take_rows(rows: dict[str, Any], index: np.ndarray) -> dict[str, Any]:
    """Rows ``index`` of a row dict."""
    return {
        k: v[index] if isinstance(v, np.ndarray) else [v[i] for i in index] for k, v in rows.items()
    }


@dataclasses.dataclass
class RLSet:
    """The RL stage's instances: query rows, each with the candidate set (a knowledge-base
    modality, an M-BEIR pool) its positive and negatives come from."""

    queries: dict[str, Any]  # [Q] rows
    group: np.ndarray  # [Q] index into ``sets``
    positive: np.ndarray  # [Q] the positive's row in its set
    sets: list[dict[str, Any]]  # each set's candidate rows
