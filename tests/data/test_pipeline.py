"""File-backed batches: images decoded and squared like the reference, every example once per
epoch, deterministic per seed, resumed exactly from a saved iterator state, split across JAX
processes so the processes' batches make up the one-process batch, and a file that vanished
after reading is an error naming it."""

import jax
import numpy as np
import PIL.Image
import pytest
from skimage import data as skimage_data

from jaxrank.data import arrays
from jaxrank.data.errors import DataError
from jaxrank.data.images import centre_square, image_loader

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon")


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rows = []
    for i in range(12):
        image = PIL.Image.fromarray(getattr(skimage_data, PHOTOS[i % 6])()).convert("RGB")
        image = image.resize((40 + 4 * i, 48))
        image.save(root / f"{i}.png")
        rows.append({"path": root / f"{i}.png", "label": i})
    return rows


def _batches(examples, seed, size=16, batch=4):
    load = image_loader(lambda e: e["path"], size, lambda e: {"label": e["label"]})
    return arrays.source_batches(examples, batch, seed, load)


def test_images_match_the_reference_and_each_epoch_covers_every_example(examples):
    it = iter(_batches(examples, seed=0))
    first_epoch = [next(it) for _ in range(3)]
    labels = np.concatenate([b["label"] for b in first_epoch])
    assert sorted(labels.tolist()) == list(range(12))
    for batch in first_epoch:
        for image, label in zip(batch["image"], batch["label"], strict=True):
            reference = np.asarray(PIL.Image.open(examples[label]["path"]).convert("RGB"))
            np.testing.assert_array_equal(image, centre_square(reference, 16))
    second = np.concatenate([next(it)["label"] for _ in range(3)])
    assert sorted(second.tolist()) == list(range(12)) and second.tolist() != labels.tolist()
    again = np.concatenate([b["label"] for b in [next(iter(_batches(examples, 0)))]])
    assert again.tolist() == labels[:4].tolist()
    other = next(iter(_batches(examples, seed=1)))["label"]
    assert other.tolist() != labels[:4].tolist()


def test_saved_state_resumes_exactly(examples):
    it = iter(_batches(examples, seed=3))
    for _ in range(2):
        next(it)
    state = it.get_state()
    expected = [next(it)["label"].tolist() for _ in range(4)]
    resumed = iter(_batches(examples, seed=3))
    resumed.set_state(state)
    assert [next(resumed)["label"].tolist() for _ in range(4)] == expected


def test_processes_share_each_global_batch(examples, monkeypatch):
    single = [b["label"].tolist() for b, _ in zip(_batches(examples, 5), range(5), strict=False)]
    parts = []
    for index in (0, 1):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        ds = _batches(examples, 5)
        parts.append([b["label"].tolist() for b, _ in zip(ds, range(5), strict=False)])
    for whole, a, b in zip(single, *parts, strict=True):
        assert len(a) == len(b) == 2 and sorted(a + b) == sorted(whole)
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    with pytest.raises(ValueError, match="split over 3 processes"):
        _batches(examples, 5)


def test_a_vanished_file_is_named(examples, tmp_path):
    moved = tmp_path / "gone.png"
    rows = [*examples[:3], {"path": moved, "label": 99}]
    with pytest.raises(DataError, match=r"gone\.png"):
        for _ in zip(_batches(rows, 0), range(3), strict=False):
            pass
