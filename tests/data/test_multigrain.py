"""The multi-grain benchmark: its neighbour structure against a brute-force count over the
world's attributes, its queries against the world's own texts and views, grain gaps against a
hand-worked example, and the task-wise query embedding against the encoder's towers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrank.data import render
from jaxrank.data.multigrain import I2I, I2T, IT2I, T2I, TASKS, MultiGrain
from jaxrank.data.synthetic import ATTRIBUTES, World, WorldConfig, world_vocabulary
from jaxrank.data.vocabulary import EOS, UNK
from jaxrank.elva.task_embedding import candidate_table, candidates_of, query_embedding
from jaxrank.models.dual_encoder import DualEncoder
from jaxrank.models.presets import tiny_clip


@pytest.fixture(scope="module")
def bench():
    return MultiGrain(World(WorldConfig(num_entities=512, image_size=32, seed=3)), 3)


def test_multigrain_targets_have_fine_neighbours_by_brute_force(bench):
    attrs = bench.world.attributes
    for target in bench.targets["multigrain"][:40]:
        fine = [
            j
            for j in range(len(attrs))
            if bench.world.attribute_distance(target, j) == 1
            and attrs[j, 0] == attrs[target, 0]
            and attrs[j, 1] == attrs[target, 1]
        ]
        assert len(fine) == bench.fine_neighbour_counts[target] >= 3
    others = np.setdiff1d(np.arange(len(attrs)), bench.targets["multigrain"])
    assert len(others) and (bench.fine_neighbour_counts[others] < 3).all()


def test_queries_name_the_target(bench):
    world, words = bench.world, world_vocabulary()
    for task, index in itertools.product(range(len(TASKS)), range(6)):
        q = bench.query("test", task, "multigrain", index)
        assert q["entity"] in bench.targets["multigrain"]
        again = bench.query("test", task, "multigrain", index)
        assert np.array_equal(q["image"], again["image"]) and q["text"] == again["text"]
        if task == T2I:
            assert q["text"] == world.entity_text(q["entity"])
        elif task == IT2I:
            assert world.attribute_distance(q["entity"], q["reference"]) == 1
            differing = ATTRIBUTES[
                int(np.argmax(world.attributes[q["entity"]] != world.attributes[q["reference"]]))
            ]
            names = dict(zip(ATTRIBUTES, world.attribute_names(q["entity"]), strict=True))
            half = (
                ("colour", "shape")
                if differing in ("shape", "colour")
                else ("pattern_colour", "pattern")
            )
            assert q["text"].split()[-2:] == " ".join(names[a] for a in half).split()[-2:]
            assert UNK not in words.encode([q["text"]], 16)
        else:
            assert q["text"] == "" and q["reference"] == -1
    a = bench.query("train", I2I, "standard", 0)["image"]
    assert not np.array_equal(a, bench.query("test", I2I, "standard", 0)["image"])


def test_grain_gaps_hand_worked():
    world = World(WorldConfig(num_entities=64, image_size=32, seed=0))
    bench = MultiGrain(world, 1)
    target = int(np.flatnonzero(bench.one_off.any(axis=1))[0])
    scores = np.zeros((1, world.num_entities))
    scores[0, target] = 0.9
    neighbours = np.flatnonzero(bench.one_off[target])
    scores[0, neighbours] = 0.5
    scores[0, neighbours[0]] = 0.7  # the nearest
    which = next(a for a in ATTRIBUTES if bench.one_off_by[a][target, neighbours[0]])
    gaps = bench.grain_gaps(scores, np.array([target]))
    assert gaps["nearest"] == pytest.approx(0.2)
    assert gaps[which] == pytest.approx(0.2)
    for a in ATTRIBUTES:
        if a != which and bench.one_off_by[a][target].any():
            assert gaps[a] == pytest.approx(0.4)


def test_task_embedding_picks_each_tasks_towers():
    config = tiny_clip(
        vocab_size=world_vocabulary().size,
        width=32,
        depth=1,
        heads=2,
        embed_dim=16,
        eos_token_id=EOS,
    )
    model = DualEncoder(config, rngs=nnx.Rngs(0))
    key = jax.random.key(1)
    pixels = jax.random.normal(key, (4, config.vision.image_size, config.vision.image_size, 3))
    tokens = jnp.array(world_vocabulary().encode(["a red circle", "", "", "with blue dots"], 8))
    task = jnp.array([T2I, I2T, I2I, IT2I])
    q = query_embedding(model, pixels, tokens, task)
    np.testing.assert_allclose(q[0], model.encode_text(tokens[:1])[0], atol=1e-6)
    np.testing.assert_allclose(q[1:3], model.encode_image(pixels[1:3]), atol=1e-6)
    np.testing.assert_allclose(q[3], model.encode_pair(pixels[3:], tokens[3:])[0], atol=1e-6)
    table = candidate_table(model, pixels, tokens)
    ids = jnp.array([[2, 0], [1, 3], [3, 3], [0, 1]])
    got = candidates_of(table, task, ids)
    for row in range(4):
        want = table[1 if row == 1 else 0, ids[row]]
        np.testing.assert_array_equal(got[row], want)


def test_marking_keeps_the_pattern_inside_the_centre_square():
    full = render.sprite("square", "checks", 40).astype(int)
    small = render.sprite("square", "checks", 40, 0.5).astype(int)
    alpha = lambda s: s[..., 0] + s[..., 1]
    assert np.abs(alpha(small) - alpha(full)).max() <= 1  # the body is the same; uint8 rounding
    assert small[..., 1].sum() > 0
    outside = np.ones((40, 40), bool)
    outside[10:30, 10:30] = False
    assert (small[..., 1][outside] == 0).all()
    np.testing.assert_array_equal(small[11:29, 11:29], full[11:29, 11:29])
    with pytest.raises(ValueError, match="marking"):
        WorldConfig(marking=0.0)
