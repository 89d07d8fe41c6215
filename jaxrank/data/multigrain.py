"""An MRBench-shaped multi-grain retrieval benchmark on the synthetic world (ELVA, PAPERS.md §2).

Every entity has two coarse attributes (shape, colour) and two fine ones (pattern, pattern
colour), and every query names all four: by text (the entity's description), by image (an
augmented view), or composed (a view of a one-attribute-off neighbour plus a phrase naming the
target's value of the half that differs, as CIRR's reference image + modification text). The
four tasks are MRBench's: text->image, image->text, image->image, (image, text)->image. The
candidates are the whole knowledge base of one modality, as M-BEIR's pools.

The two query sets differ in their targets, as MRBench's queries are the subset of M-BEIR's that
hinge on fine detail: ``standard`` draws any entity; ``multigrain`` only entities with at least
``min_fine_neighbours`` knowledge-base entries that match both coarse attributes and miss exactly
one fine one, so a model that ignores fine grains ranks those above the target.

Every query is a pure function of (world seed, split, task, query set, index).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxrank.data.synthetic import ATTRIBUTES, ENTITY_TEMPLATE, SPLITS, World

TASKS = ("t->i", "i->t", "i->i", "(i,t)->i")
T2I, I2T, I2I, IT2I = range(len(TASKS))
QUERY_SETS = ("standard", "multigrain")
COARSE = ("shape", "colour")
# The template's halves: a composed query's text names the target's half that differs.
_BODY, _MARKING = ENTITY_TEMPLATE.split(" with ")
_HALF_OF = {"shape": _BODY, "colour": _BODY, "pattern": "with " + _MARKING}
_HALF_OF["pattern_colour"] = _HALF_OF["pattern"]
_QUERY_STREAM = 7  # an id of its own under the world seed (synthetic.py uses 0-2)


class MultiGrain:
    """The benchmark's neighbour structure and query renderer over one world."""

    def __init__(self, world: World, min_fine_neighbours: int = 2):
        if min_fine_neighbours < 1:
            raise ValueError(f"min_fine_neighbours must be >= 1, got {min_fine_neighbours}")
        self.world = world
        differs = world.attributes[:, None, :] != world.attributes[None, :, :]  # [N, N, A]
        one_off = differs.sum(axis=-1) == 1
        coarse = [ATTRIBUTES.index(a) for a in COARSE]
        # one_off_by[a][i, j]: j differs from i in attribute a alone.
        self.one_off_by = {name: one_off & differs[..., k] for k, name in enumerate(ATTRIBUTES)}
        self.one_off = one_off
        fine_neighbours = one_off & ~differs[..., coarse].any(axis=-1)
        self.fine_neighbour_counts = fine_neighbours.sum(axis=1)
        self.targets = {
            "standard": np.arange(world.num_entities),
            "multigrain": np.flatnonzero(self.fine_neighbour_counts >= min_fine_neighbours),
        }
        if not len(self.targets["multigrain"]):
            raise ValueError(
                f"no entity of this world has {min_fine_neighbours} fine-grained neighbours; "
                "use more entities or a lower min_fine_neighbours"
            )
        self._composable = one_off.any(axis=1)

    def query(self, split: str, task: int, query_set: str, index: int) -> dict[str, Any]:
        """One query: ``image`` uint8 [S, S, 3] (a view of the target, or of the reference for a
        composed query; unused by text->image), ``text`` ("" for image-only tasks), ``entity``
        (the positive) and ``reference`` (the composed query's reference entity, else -1)."""
        if split not in SPLITS or query_set not in QUERY_SETS or not 0 <= task < len(TASKS):
            raise ValueError(
                f"unknown query: split {split!r} (one of {SPLITS}), task {task} (0-3), "
                f"query set {query_set!r} (one of {QUERY_SETS})"
            )
        world = self.world
        key = [world.config.seed, _QUERY_STREAM, SPLITS.index(split), task]
        key += [QUERY_SETS.index(query_set), index]
        rng = np.random.default_rng(np.random.SeedSequence(key))
        targets = self.targets[query_set]
        if task == IT2I:
            targets = targets[self._composable[targets]]
        entity = int(rng.choice(targets))
        shown, text, reference = entity, "", -1
        if task == T2I:
            text = world.entity_text(entity)
        elif task == IT2I:
            reference = int(rng.choice(np.flatnonzero(self.one_off[entity])))
            differing = ATTRIBUTES[
                int(np.argmax(world.attributes[entity] != world.attributes[reference]))
            ]
            names = dict(zip(ATTRIBUTES, world.attribute_names(entity), strict=True))
            shown, text = reference, _HALF_OF[differing].format(**names)
        image = world.view(shown, rng)
        return {"image": image, "text": text, "entity": entity, "reference": reference}

    def queries(
        self, split: str, task: int, query_set: str, n: int, start: int = 0
    ) -> dict[str, Any]:
        """Queries ``start .. start+n-1`` stacked: images [n, S, S, 3], texts (list), entity,
        reference and task [n] int32."""
        items = [self.query(split, task, query_set, i) for i in range(start, start + n)]
        return {
            "images": np.stack([q["image"] for q in items]),
            "texts": [q["text"] for q in items],
            "entity": np.array([q["entity"] for q in items], np.int32),
            "reference": np.array([q["reference"] for q in items], np.int32),
            "task": np.full(n, task, np.int32),
        }

    def grain_gaps(self, scores: np.ndarray, entity: np.ndarray) -> dict[str, float]:
        """Grain sensitivity: the mean similarity gap between the positive and its nearest
        negative that differs in one attribute only, per attribute and over all four
        (``nearest``), over the queries whose target has such a neighbour. ``scores`` is
        [Q, N] against the whole knowledge base."""
        scores = np.asarray(scores, np.float64)
        entity = np.asarray(entity)
        positive = scores[np.arange(len(entity)), entity]
        gaps = {}
        for name, mask in (*self.one_off_by.items(), ("nearest", self.one_off)):
            rows = mask[entity]  # [Q, N]
            has = rows.any(axis=1)
            nearest = np.where(rows, scores, -np.inf).max(axis=1)
            gaps[name] = float(np.mean((positive - nearest)[has])) if has.any() else float("nan")
        return gaps
