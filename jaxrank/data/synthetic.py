"""A deterministic synthetic world that reproduces the problem Region-R1 attacks, on CPU.

A knowledge base of entities (shape, colour, pattern, pattern colour) is shown alone on a plain
background; a query is a cluttered scene where the entity asked about is one object among
distractors. A whole-image embedding averages them all and loses the target's fine pattern when
the scene is shrunk; a crop to the target's box restores it. Every query is a pure function of
(world seed, split, index, query config), so any data-loader worker can render any index.
"""

import dataclasses
import itertools
import re
from typing import NamedTuple

import numpy as np

from jaxrank.data import layout, render
from jaxrank.data.layout import REGIONS
from jaxrank.data.vocabulary import Vocabulary, tokenize

ATTRIBUTES = ("shape", "colour", "pattern", "pattern_colour")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "shape": render.SHAPES,
    "colour": render.COLOUR_NAMES,
    "pattern": render.PATTERNS,
    "pattern_colour": render.COLOUR_NAMES,
}
SPLITS = ("train", "val", "test")
QUESTION_KINDS = ("position", "colour", "mixed")

ENTITY_TEMPLATE = "a {colour} {shape} with {pattern_colour} {pattern}"
POSITION_TEMPLATES = (
    "What is the object {where} of the picture?",
    "Which entity is shown {where} of the image?",
    "Tell me about the thing {where} of the photo.",
)
COLOUR_TEMPLATES = (
    "What is the {colour} object?",
    "Which entity is the {colour} one in the image?",
    "Tell me about the {colour} thing in the photo.",
)
REGION_PHRASES = {
    "top-left": "in the top-left corner",
    "top": "at the top",
    "top-right": "in the top-right corner",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom-left": "in the bottom-left corner",
    "bottom": "at the bottom",
    "bottom-right": "in the bottom-right corner",
}

# Independent random streams under one world seed.
_ENTITY_STREAM, _QUERY_STREAM, _VIEW_STREAM = 0, 1, 2
_COLOUR_JITTER = 10  # per-channel, on every rendered view and query (never the KB image)
_NOISE_AMPLITUDE = 3.0  # uniform sensor noise, in grey levels
_KB_SCALE = 0.8  # the entity's share of a knowledge-base image's side


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """``marking``: the share of an entity's side its pattern covers, as a centred square; below
    1 the fine attributes (pattern, pattern colour) become a small detail of the image."""

    num_entities: int = 256
    image_size: int = 96
    seed: int = 0
    marking: float = 1.0

    def __post_init__(self):
        if not 0 < self.marking <= 1:
            raise ValueError(f"marking must be in (0, 1], got {self.marking}")


@dataclasses.dataclass(frozen=True)
class QueryConfig:
    """Difficulty of a query scene. Scales are box sides as fractions of the scene side; ranges
    are inclusive. Clutter density is strokes per 32x32 pixels."""

    target_scale: tuple[float, float] = (0.2, 0.4)
    distractor_scale: tuple[float, float] = (0.15, 0.35)
    num_distractors: tuple[int, int] = (3, 5)
    clutter_density: float = 1.0
    question_kind: str = "mixed"

    def __post_init__(self):
        if self.question_kind not in QUESTION_KINDS:
            raise ValueError(f"question_kind must be one of {QUESTION_KINDS}")
        for lo, hi in (self.target_scale, self.distractor_scale):
            if not 0 < lo <= hi <= 1:
                raise ValueError("scales must satisfy 0 < lo <= hi <= 1")
        if not 0 <= self.num_distractors[0] <= self.num_distractors[1]:
            raise ValueError("num_distractors must satisfy 0 <= lo <= hi")


QUERY_PRESETS: dict[str, QueryConfig] = {
    # The entity alone, filling most of the frame: Recall@1 on clean query images.
    "clean": QueryConfig((0.7, 0.9), (0.15, 0.35), (0, 0), 0.0),
    # A large target with little around it: the full image already works.
    "easy": QueryConfig((0.6, 0.9), (0.1, 0.2), (0, 1), 0.3),
    # The full image fails often; a crop to the target fixes it.
    "default": QueryConfig(),
    # Region-R1's regime: the full image usually puts the entity in the top 20 but often not
    # first (a first stage that works, a re-ranking that a crop can fix).
    "moderate": QueryConfig((0.4, 0.6), (0.15, 0.35), (1, 3), 0.5),
    "hard": QueryConfig((0.18, 0.3), (0.15, 0.3), (6, 8), 2.0),
}


def query_preset(name: str) -> QueryConfig:
    return QUERY_PRESETS[name]


def world_vocabulary() -> Vocabulary:
    """Every word of the entity texts and questions, sorted: the same ids for every world."""
    fragments = [
        *(
            re.sub(r"\{\w+\}", " ", t)
            for t in (ENTITY_TEMPLATE, *POSITION_TEMPLATES, *COLOUR_TEMPLATES)
        ),
        *REGION_PHRASES.values(),
        *(value for values in ATTRIBUTE_VALUES.values() for value in values),
    ]
    return Vocabulary(sorted({word for text in fragments for word in tokenize(text)}))


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def _sample_attributes(config: WorldConfig) -> np.ndarray:
    """Distinct attribute combinations; the pattern colour always differs from the body's, so
    the pattern is always visible."""
    sizes = [len(ATTRIBUTE_VALUES[name]) for name in ATTRIBUTES]
    combos = np.array(list(itertools.product(*map(range, sizes))), np.int32)
    combos = combos[combos[:, 1] != combos[:, 3]]
    if config.num_entities > len(combos):
        raise ValueError(f"at most {len(combos)} distinct entities, asked {config.num_entities}")
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _ENTITY_STREAM]))
    return combos[rng.choice(len(combos), config.num_entities, replace=False)]


class _ScenePlan(NamedTuple):
    kind: str
    cue: str
    question: str
    entities: list[int]  # the target first
    boxes: list[tuple[int, int, int]]  # (x, y, side), aligned with entities


class World:
    """The knowledge base, its renderings and the query scenes about it."""

    def __init__(self, config: WorldConfig = WorldConfig()):
        self.config = config
        self.attributes = _sample_attributes(config)  # [N, len(ATTRIBUTES)]
        self.attributes.flags.writeable = False

    @property
    def num_entities(self) -> int:
        return self.config.num_entities

    def entity_text(self, i: int) -> str:
        names = dict(zip(ATTRIBUTES, self.attribute_names(i), strict=True))
        return ENTITY_TEMPLATE.format(**names)

    def entity_texts(self) -> list[str]:
        return [self.entity_text(i) for i in range(self.num_entities)]

    def entity_image(self, i: int, size: int | None = None) -> np.ndarray:
        """The knowledge-base image, uint8 [size, size, 3]: centred, plain background, no noise."""
        size = size or self.config.image_size
        canvas = np.empty((size, size, 3), np.float32)
        canvas[:] = render.BACKGROUND
        side = round(_KB_SCALE * size)
        corner = (size - side) // 2
        self._paint(canvas, i, corner, corner, side)
        return render.to_uint8(canvas)

    def entity_images(self, size: int | None = None) -> np.ndarray:
        return np.stack([self.entity_image(i, size) for i in range(self.num_entities)])

    def view(
        self, i: int, rng_or_seed: np.random.Generator | int, size: int | None = None
    ) -> np.ndarray:
        """An augmented clean view of entity ``i`` (scale 0.6-1.0, shift, colour jitter, noise,
        plain or graded background), uint8 [size, size, 3]; an int seed makes it reproducible."""
        rng = rng_or_seed
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(
                np.random.SeedSequence([self.config.seed, _VIEW_STREAM, i, rng_or_seed])
            )
        size = size or self.config.image_size
        canvas = render.background(rng, size, textured=bool(rng.integers(2)))
        side = max(1, round(rng.uniform(0.6, 1.0) * size))
        x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
        self._paint(canvas, i, x, y, side, rng)
        render.add_noise(canvas, rng, _NOISE_AMPLITUDE)
        return render.to_uint8(canvas)

    def query(
        self,
        split: str,
        index: int,
        qcfg: QueryConfig = QUERY_PRESETS["default"],
        with_labels: bool = False,
    ) -> dict:
        """One query scene. Keys: image uint8 [S, S, 3]; question, question_kind ('position' or
        'colour'), question_cue (the region or colour named); entity; box float32 (x1, y1, x2,
        y2), x2/y2 exclusive; distractors int32 [D]; distractor_boxes float32 [D, 4]. With
        ``with_labels``: labels uint8 [S, S], 0 background, 1 clutter, 2 target, 3+k distractor k.
        """
        rng = np.random.default_rng(
            np.random.SeedSequence([self.config.seed, _QUERY_STREAM, _split_id(split), index])
        )
        plan = self._plan_scene(rng, qcfg)
        scene = self.config.image_size
        canvas = render.background(rng, scene, textured=True)
        clutter_count = round(qcfg.clutter_density * (scene / 32) ** 2)
        canvas, clutter = render.draw_clutter(canvas, rng, clutter_count)
        labels = clutter.astype(np.uint8)
        for slot, (entity, (x, y, side)) in enumerate(zip(plan.entities, plan.boxes, strict=True)):
            alpha = self._paint(canvas, entity, x, y, side, rng)
            labels[y : y + side, x : x + side][alpha > 0.5] = 2 + slot
        render.add_noise(canvas, rng, _NOISE_AMPLITUDE)

        xyxy = np.array([(x, y, x + side, y + side) for x, y, side in plan.boxes], np.float32)
        result = {
            "image": render.to_uint8(canvas),
            "question": plan.question,
            "question_kind": plan.kind,
            "question_cue": plan.cue,
            "entity": plan.entities[0],
            "box": xyxy[0],
            "distractors": np.array(plan.entities[1:], np.int32),
            "distractor_boxes": xyxy[1:].reshape(-1, 4),
        }
        if with_labels:
            result["labels"] = labels
        return result

    def _plan_scene(self, rng: np.random.Generator, qcfg: QueryConfig) -> _ScenePlan:
        """Target, question and non-overlapping boxes, such that the question's region or colour
        picks out the target alone."""
        scene = self.config.image_size
        margin = scene / 32
        target = int(rng.integers(self.num_entities))
        kind = qcfg.question_kind
        if kind == "mixed":
            kind = ("position", "colour")[rng.integers(2)]

        side = _scaled_side(rng, qcfg.target_scale, scene)
        if kind == "position":
            region = int(rng.choice(layout.feasible_regions(side, scene, margin)))
            x, y = layout.place_in_region(rng, side, scene, region, margin)
            cue = REGIONS[region]
            question = rng.choice(POSITION_TEMPLATES).format(where=REGION_PHRASES[cue])
            eligible = np.ones(self.num_entities, bool)
        else:
            region = None
            x, y = (int(v) for v in rng.integers(0, scene - side + 1, 2))
            colour = self.attributes[target, 1]
            cue = render.COLOUR_NAMES[colour]
            question = rng.choice(COLOUR_TEMPLATES).format(colour=cue)
            # No other object may carry the colour asked about, on its body or its pattern.
            eligible = (self.attributes[:, 1] != colour) & (self.attributes[:, 3] != colour)
        eligible[target] = False

        pool = np.flatnonzero(eligible)
        lo, hi = qcfg.num_distractors
        wanted = min(int(rng.integers(lo, hi + 1)), len(pool))
        candidates = rng.choice(pool, wanted, replace=False)
        # Largest first: a crowded scene then drops small distractors rather than large ones.
        sides = sorted(_scaled_side(rng, qcfg.distractor_scale, scene) for _ in candidates)
        entities, boxes = [target], [(x, y, side)]
        for entity, d_side in zip(candidates, reversed(sides), strict=True):
            placed = layout.place_apart(rng, d_side, scene, boxes, region, margin)
            if placed is not None:  # a full scene drops the distractor
                entities.append(int(entity))
                boxes.append((*placed, d_side))
        return _ScenePlan(kind, cue, str(question), entities, boxes)

    def queries(
        self, split: str, n: int, qcfg: QueryConfig = QUERY_PRESETS["default"], start: int = 0
    ) -> dict:
        """Queries ``start .. start+n-1`` stacked: images [n, S, S, 3], boxes [n, 4], entity
        [n]; questions, question_kinds, question_cues and distractors stay lists."""
        items = [self.query(split, index, qcfg) for index in range(start, start + n)]
        return {
            "images": np.stack([q["image"] for q in items]),
            "boxes": np.stack([q["box"] for q in items]),
            "entity": np.array([q["entity"] for q in items], np.int32),
            "questions": [q["question"] for q in items],
            "question_kinds": [q["question_kind"] for q in items],
            "question_cues": [q["question_cue"] for q in items],
            "distractors": [q["distractors"] for q in items],
        }

    def attribute_distance(self, i: int, j: int) -> int:
        """How many attributes differ: 1 is the finest-grained negative the world has."""
        return int(np.sum(self.attributes[i] != self.attributes[j]))

    def neighbours(self, i: int, n_diff: int) -> np.ndarray:
        """Entities that differ from ``i`` in exactly ``n_diff`` attributes (hard negatives)."""
        return np.flatnonzero((self.attributes != self.attributes[i]).sum(axis=1) == n_diff)

    def attribute_names(self, i: int) -> list[str]:
        return [ATTRIBUTE_VALUES[a][v] for a, v in zip(ATTRIBUTES, self.attributes[i], strict=True)]

    def _paint(
        self,
        canvas: np.ndarray,
        i: int,
        x: int,
        y: int,
        side: int,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        shape, colour, pattern, pattern_colour = self.attributes[i]
        colours = render.PALETTE[[colour, pattern_colour]]
        if rng is not None:
            colours = colours + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, (2, 3))
        return render.paint_entity(
            canvas,
            x,
            y,
            side,
            render.SHAPES[shape],
            render.PATTERNS[pattern],
            *colours,
            self.config.marking,
        )


def _scaled_side(rng: np.random.Generator, scale: tuple[float, float], scene: int) -> int:
    return max(4, min(scene, round(rng.uniform(*scale) * scene)))
