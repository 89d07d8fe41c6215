"""RAR's few-shot data through tensorflow-datasets, without TensorFlow: a tiny dataset of real
photographs (scikit-image's samples) is written in array_record by a TFDS builder defined
here, read back by name from its data_dir, and compared with the arrays it was written from;
few-shot sampling is checked for exact counts and seed determinism; the table's builder names
and feature keys are checked against the installed tensorflow-datasets.

Writing without TensorFlow works when images reach TFDS as PIL images (or encoded bytes):
TFDS encodes those with PIL and serialises examples with its own protos; only numpy-array
images go through ``tf.image.encode_png``."""

import re

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds
from skimage import data as skimage_data

from jaxrank.data.fewshot_tfds import (
    FEWSHOT_DATASETS,
    DataError,
    class_names,
    load_split,
    read_arrays,
    sample_shots,
    split_labels,
)

S = 32  # the stored square size, and the size read back
CLASSES = ("astronaut", "coffee", "chelsea", "rocket")
TRAIN_PER_CLASS = (10, 10, 10, 6)  # rocket short, for the too-few-shots error
TEST_PER_CLASS = 2
LANDSCAPE, LARGE = 1, 2  # per class, example 1 is S x 1.5S and example 2 is 2S x 2S


def _photo(name: str, short_side: int) -> np.ndarray:
    image = PIL.Image.fromarray(getattr(skimage_data, name)())
    scale = short_side / min(image.size)
    size = (round(image.size[0] * scale), round(image.size[1] * scale))
    return np.asarray(image.resize(size, PIL.Image.BILINEAR))


def _examples(split: str) -> list[dict]:
    """Crops of one photograph per class at seeded offsets; most S x S, a few not."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    rows = []
    for label, name in enumerate(CLASSES):
        count = TRAIN_PER_CLASS[label] if split == "train" else TEST_PER_CLASS
        photos = {1: _photo(name, 4 * S), 2: _photo(name, 8 * S)}
        for k in range(count):
            h, w, scale = (S, S * 3 // 2, 1) if k == LANDSCAPE else (S, S, 1)
            if k == LARGE:
                h, w, scale = 2 * S, 2 * S, 2
            photo = photos[scale]
            y = rng.integers(0, photo.shape[0] - h + 1)
            x = rng.integers(0, photo.shape[1] - w + 1)
            image = np.ascontiguousarray(photo[y : y + h, x : x + w])
            gray = np.round(image.mean(axis=-1)).astype(np.uint8)[..., None]
            rows.append({"image": image, "gray": gray, "label": label, "kind": k})
    return rows


class JaxrankFewshotTiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Not registered: the test reads it back the way a prepared dataset is found on disk."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "gray": tfds.features.Image(shape=(None, None, 1)),
                    "label": tfds.features.ClassLabel(names=list(CLASSES)),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split):
        for i, row in enumerate(_examples(split)):
            yield (
                i,
                {
                    # PIL images, not numpy arrays: TFDS encodes arrays with TensorFlow.
                    "image": PIL.Image.fromarray(row["image"]),
                    "gray": PIL.Image.fromarray(row["gray"][..., 0]),
                    "label": row["label"],
                    "index": i,
                },
            )


NAME = "jaxrank_fewshot_tiny"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    JaxrankFewshotTiny(data_dir=root, file_format="array_record").download_and_prepare()
    return root


def test_reads_back_what_was_written(data_dir):
    written = _examples("train")
    source = load_split(NAME, "train", data_dir)
    assert len(source) == len(written)
    assert class_names(source) == list(CLASSES)
    assert class_names(source.dataset_info) == list(CLASSES)

    record = source[0]  # TFDS decodes to numpy without TensorFlow
    assert isinstance(record["image"], np.ndarray) and record["image"].dtype == np.uint8

    images, labels = read_arrays(source, S)
    assert images.shape == (len(written), S, S, 3) and images.dtype == np.uint8
    index = np.asarray([source[i]["index"] for i in range(len(source))])
    assert sorted(index) == list(range(len(written)))  # TFDS stores records shuffled
    for got_image, got_label, i in zip(images, labels, index, strict=True):
        row = written[i]
        assert got_label == row["label"]
        if row["kind"] == LANDSCAPE:  # shorter side already S: a centre crop, no resampling
            np.testing.assert_array_equal(got_image, row["image"][:, S // 4 : S // 4 + S])
        elif row["kind"] == LARGE:  # halved by bicubic resampling: near a 2x2 mean
            pooled = row["image"].reshape(S, 2, S, 2, 3).astype(np.float64).mean(axis=(1, 3))
            assert np.abs(got_image - pooled).mean() < 4.0
        else:  # PNG is lossless and S x S is left alone
            np.testing.assert_array_equal(got_image, row["image"])

    # indices in the order given, grayscale as three equal channels
    picks = np.asarray([5, 0, 17])
    gray, gray_labels = read_arrays(source, S, picks, image_key="gray", progress=True)
    np.testing.assert_array_equal(gray_labels, labels[picks])
    for got, i in zip(gray, index[picks], strict=True):
        if written[i]["kind"] not in (LANDSCAPE, LARGE):
            np.testing.assert_array_equal(got, np.repeat(written[i]["gray"], 3, axis=-1))
        assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()

    test = load_split(NAME, "test", data_dir)
    assert len(test) == TEST_PER_CLASS * len(CLASSES)
    assert len(load_split(NAME, "train[:50%]", data_dir)) == len(written) // 2


def test_split_labels_without_decoding_images(data_dir):
    decoded = load_split(NAME, "train", data_dir)
    lazy = load_split(NAME, "train", data_dir, decode_images=False)
    assert isinstance(lazy[0]["image"], bytes)
    labels = split_labels(lazy)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [decoded[i]["label"] for i in range(len(decoded))])
    np.testing.assert_array_equal(np.bincount(labels), TRAIN_PER_CLASS)


def test_sample_shots_exact_counts_and_seeded(data_dir):
    labels = split_labels(load_split(NAME, "train", data_dir, decode_images=False))
    for shots in (1, 2, 4):
        picked = sample_shots(labels, shots, seed=0)
        assert len(set(picked.tolist())) == len(picked)
        np.testing.assert_array_equal(np.bincount(labels[picked]), [shots] * len(CLASSES))
        np.testing.assert_array_equal(labels[picked], np.repeat(np.arange(len(CLASSES)), shots))
        np.testing.assert_array_equal(picked, sample_shots(labels, shots, seed=0))
    draws = {tuple(sample_shots(labels, 4, seed=s)) for s in range(5)}
    assert len(draws) == 5  # different seeds, different shots
    # what the sampled indices select from a real split
    source = load_split(NAME, "train", data_dir)
    _, got = read_arrays(source, S, sample_shots(labels, 2, seed=3))
    np.testing.assert_array_equal(got, np.repeat(np.arange(len(CLASSES)), 2))


def test_sample_shots_names_the_short_class():
    labels = np.repeat(np.arange(4), TRAIN_PER_CLASS)
    with pytest.raises(DataError, match=r"class 3 \('rocket'\) has 6 examples, fewer than shots=8"):
        sample_shots(labels, 8, seed=0, names=CLASSES)
    with pytest.raises(DataError, match=r"class 4 has 0 examples, fewer than shots=1"):
        sample_shots(labels, 1, seed=0, num_classes=5)


def test_table_matches_installed_tfds(tmp_path):
    assert len(FEWSHOT_DATASETS) == 12
    for name in ("fgvc_aircraft", "raf_db"):
        assert FEWSHOT_DATASETS[name].builder is None
    assert "video" in FEWSHOT_DATASETS["ucf101"].unsupported
    for name, entry in FEWSHOT_DATASETS.items():
        if entry.unsupported:
            continue
        builder = tfds.builder(entry.builder, data_dir=tmp_path)
        features = builder.info.features
        assert isinstance(features[entry.image_key], tfds.features.Image), name
        assert len(class_names(builder.info, entry.label_key)) > 1, name


def test_error_when_not_prepared(tmp_path, data_dir):
    with pytest.raises(DataError) as e:
        load_split("flowers102", "train", tmp_path)
    message = str(e.value)
    assert "flowers102 (TFDS 'oxford_flowers102') is not prepared" in message
    assert str(tmp_path) in message and "dataset_info.json" in message
    assert "--file_format=array_record" in message
    with pytest.raises(DataError, match="manual download"):
        load_split("imagenet", "validation", tmp_path)
    with pytest.raises(DataError, match=rf"no builder of that name.*{re.escape(str(tmp_path))}"):
        load_split("no_such_dataset_here", "train", tmp_path)
    with pytest.raises(DataError, match=r"cannot read split 'validation' \(splits: \['test', "):
        load_split(NAME, "validation", data_dir)


def test_error_when_tfds_has_no_builder(tmp_path):
    with pytest.raises(DataError, match=r"FGVC-Aircraft has no TFDS builder.*robots\.ox\.ac\.uk"):
        load_split("fgvc_aircraft", "train", tmp_path)
    with pytest.raises(DataError, match=r"RAF-DB has no TFDS builder.*whdeng\.cn"):
        load_split("raf_db", "train", tmp_path)
    with pytest.raises(DataError, match=r"ucf101: not readable through TFDS.*midframes"):
        load_split("ucf101", "train", tmp_path)


def test_read_arrays_rejects_non_uint8():
    with pytest.raises(DataError, match="record 0 feature 'image': expected uint8"):
        read_arrays([{"image": np.zeros((4, 4, 3), np.float32), "label": 0}], S)
