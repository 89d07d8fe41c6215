"""The synthetic world: determinism, geometry, rendered pixels against bookkeeping, tokenizer."""

import dataclasses
import itertools

import numpy as np
import pytest

from jaxrank.data import layout, render
from jaxrank.data.gallery import render_gallery, world_gallery
from jaxrank.data.synthetic import (
    ATTRIBUTE_VALUES,
    ATTRIBUTES,
    QUERY_PRESETS,
    REGION_PHRASES,
    QueryConfig,
    World,
    WorldConfig,
    query_preset,
    world_vocabulary,
)
from jaxrank.data.vocabulary import BOS, EOS, PAD, UNK, Vocabulary, tokenize

SCENE = 96


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(num_entities=256, image_size=SCENE, seed=0))


@pytest.fixture(scope="module")
def labelled(world) -> list[dict]:
    """Queries with their label maps, shared by the geometry tests; the crowded hard preset is
    where a careless layout would put a distractor in the target's region."""
    return [
        world.query("val", i, query_preset(name), with_labels=True)
        for name, count in (("default", 40), ("hard", 100))
        for i in range(count)
    ]


def _mask_bbox(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _all_boxes(q: dict) -> np.ndarray:
    return np.concatenate([q["box"][None], q["distractor_boxes"]])


def _palette_counts(pixels: np.ndarray) -> np.ndarray:
    """How many pixels are each palette colour, up to jitter and noise. Anti-aliased blends of
    two colours are left out: red into blue, say, passes for purple."""
    distances = ((pixels[:, None, :].astype(np.float32) - render.PALETTE[None]) ** 2).sum(-1)
    pure = distances.min(axis=1) < 30**2
    return np.bincount(distances.argmin(axis=1)[pure], minlength=len(render.PALETTE))


def _shows_entity_colours(counts: np.ndarray, colour: int, pattern_colour: int) -> bool:
    top_two = set(np.argsort(counts)[-2:].tolist())
    share = (counts[colour] + counts[pattern_colour]) / counts.sum()
    return top_two == {colour, pattern_colour} and share > 0.75


# --- determinism and splits ---------------------------------------------------------------


def test_query_is_a_pure_function_of_seed_split_index(world):
    again = World(WorldConfig(seed=0))
    for split, index in [("train", 0), ("val", 7), ("test", 123)]:
        a, b = world.query(split, index), again.query(split, index)
        assert a["image"].tobytes() == b["image"].tobytes()
        assert a["question"] == b["question"] and a["entity"] == b["entity"]
        np.testing.assert_array_equal(a["box"], b["box"])
        np.testing.assert_array_equal(a["distractors"], b["distractors"])


def test_index_split_and_seed_change_the_scene(world):
    base = world.query("train", 5)["image"]
    assert not np.array_equal(base, world.query("train", 6)["image"])
    assert not np.array_equal(base, world.query("val", 5)["image"])
    assert not np.array_equal(base, World(WorldConfig(seed=1)).query("train", 5)["image"])


def test_splits_share_no_scene(world):
    qcfg = query_preset("easy")  # the least varied scenes: the likeliest to collide
    seen = {}
    for split in ("train", "val", "test"):
        for index in range(40):
            key = world.query(split, index, qcfg)["image"].tobytes()
            assert seen.setdefault(key, split) == split
    with pytest.raises(ValueError):
        world.query("validation", 0)


def test_view_is_deterministic_per_seed_and_varies_across_seeds(world):
    a, b = world.view(3, 11), world.view(3, 11)
    assert a.shape == (SCENE, SCENE, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, world.view(3, 12))
    assert world.view(3, np.random.default_rng(0), size=48).shape == (48, 48, 3)


# --- the knowledge base -------------------------------------------------------------------


def test_entities_are_distinct_valid_combinations(world):
    attrs = world.attributes
    assert attrs.shape == (256, len(ATTRIBUTES))
    assert len({tuple(row) for row in attrs}) == 256
    for column, name in enumerate(ATTRIBUTES):
        assert attrs[:, column].min() >= 0 and attrs[:, column].max() < len(ATTRIBUTE_VALUES[name])
    assert np.all(attrs[:, 1] != attrs[:, 3])  # the pattern is always visible
    assert not np.array_equal(attrs, World(WorldConfig(seed=1)).attributes)
    with pytest.raises(ValueError):
        World(WorldConfig(num_entities=10_000))


def test_entity_text_names_every_attribute(world):
    for i in range(0, 256, 17):
        text = world.entity_text(i)
        for name, value in zip(ATTRIBUTES, world.attributes[i], strict=True):
            assert ATTRIBUTE_VALUES[name][value] in text
    assert len(set(world.entity_texts())) == 256


def test_entity_image_is_centred_on_plain_background(world):
    images = world.entity_images(size=64)
    assert images.shape == (256, 64, 64, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0], world.entity_image(0, 64))
    background = np.round(render.BACKGROUND).astype(np.uint8)
    np.testing.assert_array_equal(images[:, :4, :4], np.broadcast_to(background, (256, 4, 4, 3)))
    centre = images[:, 16:48, 16:48].reshape(256, -1, 3)
    for i in range(0, 256, 9):
        _, colour, _, pattern_colour = world.attributes[i]
        assert _shows_entity_colours(_palette_counts(centre[i]), colour, pattern_colour)


# --- query geometry against the rendered pixels -------------------------------------------


def test_boxes_lie_inside_the_image_and_match_the_rendered_masks(labelled):
    for q in labelled:
        boxes = _all_boxes(q)
        assert boxes.dtype == np.float32
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= SCENE)
        assert np.all(boxes[:, 2:] > boxes[:, :2])
        for slot, box in enumerate(boxes):
            np.testing.assert_allclose(_mask_bbox(q["labels"] == 2 + slot), box, atol=2)


def test_object_boxes_do_not_overlap(labelled):
    for q in labelled:
        boxes = _all_boxes(q)
        for a, b in itertools.combinations(boxes, 2):
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_pixels_outside_the_boxes_are_background_or_clutter(labelled):
    for q in labelled:
        inside = np.zeros((SCENE, SCENE), bool)
        for x1, y1, x2, y2 in _all_boxes(q).astype(int):
            inside[y1:y2, x1:x2] = True
        assert set(np.unique(q["labels"][~inside])) <= {0, 1}
        background = q["image"][(q["labels"] == 0) & ~inside]
        assert background.min() >= 190  # light backdrop, only noise and a gradient on it
        clutter = q["image"][(q["labels"] == 1) & ~inside].astype(np.float32)
        # Clutter is muted: never as saturated as a palette colour.
        assert np.all(clutter.max(-1) - clutter.min(-1) < 80)


def test_target_pixels_carry_the_entity_colours(world, labelled):
    for q in labelled:
        _, colour, _, pattern_colour = world.attributes[q["entity"]]
        counts = _palette_counts(q["image"][q["labels"] == 2])
        assert _shows_entity_colours(counts, colour, pattern_colour)


def test_question_identifies_exactly_one_object(world, labelled):
    kinds = set()
    for q in labelled:
        kinds.add(q["question_kind"])
        entities = [q["entity"], *q["distractors"]]
        if q["question_kind"] == "position":
            region = layout.REGIONS.index(q["question_cue"])
            assert REGION_PHRASES[q["question_cue"]] in q["question"]
            centres = [_mask_bbox(q["labels"] == 2 + k) for k in range(len(entities))]
            hits = [
                k
                for k, (x1, y1, x2, y2) in enumerate(centres)
                if layout.in_region((x1 + x2) / 2, (y1 + y2) / 2, region, SCENE)
            ]
        else:
            colour = ATTRIBUTE_VALUES["colour"].index(q["question_cue"])
            assert f" {q['question_cue']} " in q["question"]
            hits = [k for k, e in enumerate(entities) if colour in world.attributes[e, [1, 3]]]
        assert hits == [0]
    assert kinds == {"position", "colour"}


def test_question_kind_knob(world):
    for kind in ("position", "colour"):
        qcfg = dataclasses.replace(query_preset("default"), question_kind=kind)
        assert {world.query("train", i, qcfg)["question_kind"] for i in range(20)} == {kind}
    with pytest.raises(ValueError):
        QueryConfig(question_kind="size")


def test_presets_set_target_scale_and_crowding(world):
    def sides_and_counts(name):
        qs = [world.query("train", i, query_preset(name)) for i in range(40)]
        sides = np.array([q["box"][2] - q["box"][0] for q in qs]) / SCENE
        return sides, np.array([len(q["distractors"]) for q in qs])

    for name in ("clean", "easy", "default", "hard"):
        qcfg = QUERY_PRESETS[name]
        sides, counts = sides_and_counts(name)
        lo, hi = qcfg.target_scale
        assert np.all(sides >= lo - 0.01) and np.all(sides <= hi + 0.01)
        assert counts.max() <= qcfg.num_distractors[1]
    easy, default = sides_and_counts("easy"), sides_and_counts("default")
    assert easy[0].min() > default[0].max()
    assert easy[1].mean() < 1 < 3 <= default[1].mean()
    assert sides_and_counts("clean")[1].max() == 0


def test_rendering_a_hundred_queries(world):
    batch = world.queries("train", 100, query_preset("hard"), start=1000)
    assert batch["images"].shape == (100, SCENE, SCENE, 3) and batch["images"].dtype == np.uint8
    assert batch["boxes"].shape == (100, 4) and batch["entity"].shape == (100,)
    assert len(batch["questions"]) == len(batch["distractors"]) == 100
    np.testing.assert_array_equal(
        batch["images"][7], world.query("train", 1007, query_preset("hard"))["image"]
    )


# --- multi-grain neighbours -----------------------------------------------------------------


def test_neighbours_match_brute_force(world):
    for i in (0, 17, 255):
        for n_diff in range(len(ATTRIBUTES) + 1):
            expected = [j for j in range(256) if world.attribute_distance(i, j) == n_diff]
            np.testing.assert_array_equal(world.neighbours(i, n_diff), expected)
    assert world.neighbours(5, 0).tolist() == [5]
    assert world.attribute_distance(3, 9) == world.attribute_distance(9, 3)
    assert world.attribute_distance(3, 3) == 0


# --- vocabulary -----------------------------------------------------------------------------


def test_vocabulary_round_trips_every_world_text(world):
    vocab = world_vocabulary()
    texts = world.entity_texts() + world.queries("val", 50, query_preset("default"))["questions"]
    ids = vocab.encode(texts, max_len=24)
    assert ids.dtype == np.int32 and ids.shape == (len(texts), 24)
    assert not np.any(ids == UNK)
    assert vocab.decode(ids) == [" ".join(tokenize(t)) for t in texts]
    assert vocab.size == len(vocab.words) == len(set(vocab.words))
    assert vocab.words[:4] == ("<pad>", "<bos>", "<eos>", "<unk>")


def test_vocabulary_padding_truncation_and_unknown_words():
    vocab = Vocabulary(["a", "red", "circle"])
    ids = vocab.encode(["A red circle", "a zebra"], max_len=7)
    np.testing.assert_array_equal(ids[0], [BOS, 4, 5, 6, EOS, PAD, PAD])
    np.testing.assert_array_equal(ids[1], [BOS, 4, UNK, EOS, PAD, PAD, PAD])
    short = vocab.encode(["a red circle"], max_len=3)
    np.testing.assert_array_equal(short[0], [BOS, 4, EOS])
    assert vocab.decode(short) == ["a"]
    assert tokenize("top-left?") == ["top", "-", "left", "?"]
    with pytest.raises(ValueError):
        Vocabulary(["a", "a"])


# --- gallery --------------------------------------------------------------------------------


def test_gallery_writes_pngs(world, labelled, tmp_path):
    images = np.stack([q["image"] for q in labelled[:5]])
    boxes = np.stack([q["box"] for q in labelled[:5]])
    path = render_gallery(
        images, boxes, [q["question"] for q in labelled[:5]], tmp_path / "g.png", boxes + 2
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert world_gallery(world, query_preset("easy"), 3, tmp_path / "w.png").stat().st_size > 0
