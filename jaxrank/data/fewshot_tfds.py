"""RAR's few-shot datasets (PAPERS.md §3), read through tensorflow-datasets by builder name.

Reading goes through ``tfds.data_source`` over array_record files: random access, records come
back as dicts of numpy arrays (images decoded by TFDS with PIL), and no TensorFlow is needed.
Preparing a dataset is the user's step (``tfds build NAME --file_format=array_record``); this
module only reads, so a missing or wrongly formatted dataset is a ``DataError`` that says what
to do, never a download started behind the user's back.

TFDS splits are not CoOp's ``split_zhou_*.json`` splits (DATA_FORMATS.md §5), so numbers read
this way are comparable across jaxrank runs, not digit-for-digit with the paper's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from jaxrank.data.errors import DataError
from jaxrank.data.images import centre_square

# Records materialised per data-source read: array_record serves a batch of keys in one call.
_READ_BATCH = 64
# Below this many records a progress bar is noise.
_PROGRESS_FROM = 512


@dataclass(frozen=True)
class FewshotDataset:
    """Where one few-shot dataset lives in TFDS and how to read it.

    ``builder`` is the TFDS name (``name[/config]``) or None when TFDS has none; ``unsupported``
    is non-empty when ``load_split`` refuses the dataset and says why and where to get it;
    ``note`` records how the TFDS version differs from CoOp's protocol."""

    builder: str | None
    train_split: str
    test_split: str
    image_key: str = "image"
    label_key: str = "label"
    unsupported: str = ""
    note: str = ""


# The paper's 11 datasets plus CoOp's UCF101 (CoOp's set has UCF101 where the paper lists
# RAF-DB). Builder names, configs, splits and feature keys are read from tensorflow-datasets
# 4.9.10's builder code; names and feature keys are also checked in tests/test_fewshot_tfds.py
# (split names only exist once a dataset is prepared).
FEWSHOT_DATASETS: Mapping[str, FewshotDataset] = MappingProxyType(
    {
        "imagenet": FewshotDataset(
            "imagenet2012",
            "train",
            "validation",
            note="manual download (ILSVRC2012 tars into <data_dir>/downloads/manual); TFDS's "
            "test split is unlabelled, so the 50K validation images are the test set, as in "
            "CoOp; label names are WordNet ids (n01440764), readable names need CoOp's "
            "classnames.txt",
        ),
        "caltech101": FewshotDataset(
            "caltech101",
            "train",
            "test",
            note="102 classes incl. background_google and faces_easy, which CoOp drops; TFDS "
            "train = 30 images per class (seed 1234), test = the rest",
        ),
        "dtd": FewshotDataset("dtd", "train", "test", note="TFDS uses DTD's split 1"),
        "sun397": FewshotDataset(
            "sun397/tfds",
            "train",
            "test",
            note="label names are paths such as /a/abbey",
        ),
        "eurosat": FewshotDataset(
            "eurosat/rgb",
            "train[:70%]",
            "train[70%:]",
            note="TFDS has only a train split (27,000 images); the 70/30 slice is jaxrank's "
            "(CoOp: 13,500 train + 5,400 val / 8,100 test)",
        ),
        "stanford_cars": FewshotDataset("cars196", "train", "test"),
        "flowers102": FewshotDataset("oxford_flowers102", "train", "test"),
        "food101": FewshotDataset(
            "food101",
            "train",
            "validation",
            note="TFDS's validation split is Food-101's official 25,250-image test set",
        ),
        "oxford_pets": FewshotDataset("oxford_iiit_pet", "train", "test"),
        "fgvc_aircraft": FewshotDataset(
            None,
            "",
            "",
            unsupported="FGVC-Aircraft has no TFDS builder (tensorflow/datasets issue 1216 is "
            "still open; visual_domain_decathlon/aircraft is downsampled to 72 px with an "
            "unlabelled test split); get it from "
            "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ "
            "(images_variant_{train,val,test}.txt, variants.txt)",
        ),
        "raf_db": FewshotDataset(
            None,
            "",
            "",
            unsupported="RAF-DB has no TFDS builder; it is released on request to its authors "
            "(http://www.whdeng.cn/RAF/model1.html), 7 basic-emotion classes, "
            "12,271 train / 3,068 test",
        ),
        "ucf101": FewshotDataset(
            "ucf101",
            "train",
            "test",
            unsupported="TFDS's ucf101 holds videos (and its builder needs TensorFlow even to be "
            "constructed), while CoOp classifies one middle frame per video "
            "(UCF-101-midframes, linked from CoOp's DATASETS.md); extract those frames instead",
        ),
    }
)


def _describe_data_dir(data_dir: str | os.PathLike | None, root: str | None = None) -> str:
    if data_dir is not None:
        return os.fspath(data_dir)
    default = "TFDS's default: TFDS_DATA_DIR, else ~/tensorflow_datasets"
    return f"{root} ({default})" if root else default


def load_split(
    name_or_builder: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    decode_images: bool = True,
) -> Sequence[dict[str, Any]]:
    """A random-access source over one split of a prepared array_record TFDS dataset.

    ``name_or_builder`` is a ``FEWSHOT_DATASETS`` key or any TFDS name (``name[/config]``),
    also a dataset prepared by code that is not installed (read from its files). ``split`` goes
    to TFDS as given (slices such as ``train[:70%]`` included); the protocol's splits are the
    entry's ``train_split`` / ``test_split``. ``decode_images=False`` leaves every image feature
    as encoded bytes, for reading labels of a large split without decoding its images.
    """
    entry = FEWSHOT_DATASETS.get(name_or_builder)
    if entry is not None:
        if entry.builder is None or entry.unsupported:
            raise DataError(f"{name_or_builder}: not readable through TFDS: {entry.unsupported}")
        builder_name = entry.builder
        label = f"{name_or_builder} (TFDS {builder_name!r})"
    else:
        builder_name = name_or_builder
        label = f"TFDS {builder_name!r}"
    where = _describe_data_dir(data_dir)
    try:
        builder = tfds.builder(builder_name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(
            f"{label}: tensorflow-datasets {tfds.__version__} has no builder of that name and "
            f"no prepared copy of it lies under data_dir {where}"
        ) from e
    where = _describe_data_dir(data_dir, os.fspath(builder.data_dir_root))
    build = (
        f"`tfds build {builder_name} --data_dir {builder.data_dir_root} --file_format=array_record`"
    )
    if not builder.is_prepared():
        manual_dir = os.path.join(builder.data_dir_root, "downloads", "manual")
        manual = (
            f" It needs a manual download into {manual_dir} first."
            if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
            else ""
        )
        raise DataError(
            f"{label} is not prepared under data_dir {where}: expected dataset_info.json and "
            f"{builder.name}-<split>.array_record-* files in {builder.data_dir}. Prepare it "
            f"once with {build}.{manual}"
        )
    formats = builder.info.available_file_formats()
    if tfds.core.file_adapters.FileFormat.ARRAY_RECORD not in formats:
        found = ", ".join(sorted(str(f.value) for f in formats)) or "no recorded format"
        raise DataError(
            f"{label} under data_dir {where} is stored as {found}; expected array_record, "
            f"which gives random access without TensorFlow: rebuild it with {build} or convert "
            "it with `tfds convert_format`"
        )
    decoders = None
    if not decode_images:
        image_keys = [
            key
            for key, feature in builder.info.features.items()
            if isinstance(feature, tfds.features.Image)
        ]
        decoders = {key: tfds.decode.SkipDecoding() for key in image_keys}
    try:
        return tfds.data_source(
            builder_name, split=split, data_dir=data_dir, download=False, decoders=decoders
        )
    except ValueError as e:
        raise DataError(
            f"{label} under data_dir {where}: cannot read split {split!r} (splits: "
            f"{sorted(builder.info.splits)}): {e}"
        ) from e


def class_names(info: Any, label_key: str = "label") -> list[str]:
    """The class names of a ``tfds.core.DatasetInfo`` (or a data source's ``dataset_info``),
    in label order, from its ``ClassLabel`` feature."""
    info = getattr(info, "dataset_info", info)
    feature = info.features[label_key]
    names = getattr(feature, "names", None)
    if not names:
        raise DataError(f"{info.full_name}: feature {label_key!r} is not a ClassLabel with names")
    return list(names)


def _batches(source: Sequence[Any], indices: np.ndarray) -> Iterator[list[Any]]:
    many = getattr(source, "__getitems__", None)
    for start in range(0, len(indices), _READ_BATCH):
        keys = [int(i) for i in indices[start : start + _READ_BATCH]]
        yield list(many(keys)) if many is not None else [source[k] for k in keys]


def split_labels(source: Sequence[dict[str, Any]], label_key: str = "label") -> np.ndarray:
    """Every record's label as int64 ``[N]``, for ``sample_shots``; open the source with
    ``decode_images=False`` so a large split's images are not decoded just to read labels."""
    indices = np.arange(len(source))
    labels = [int(r[label_key]) for batch in _batches(source, indices) for r in batch]
    return np.asarray(labels, np.int64)


def sample_shots(
    labels: Sequence[int] | np.ndarray,
    shots: int,
    seed: int,
    *,
    num_classes: int | None = None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Indices of ``shots`` examples of every class, drawn without replacement by
    ``np.random.default_rng(seed)``: class-major (ascending class), ascending within a class.

    The classes are those present in ``labels``, or ``0..num_classes-1`` when given, so a class
    absent from the split is an error rather than silently skipped. Deterministic per seed, but
    not CoOp's draws (CoOp pickles its own ``shot_{K}-seed_{S}.pkl``)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {labels.shape}")
    if shots < 1:
        raise DataError(f"shots must be >= 1, got {shots}")
    classes = np.unique(labels) if num_classes is None else np.arange(num_classes)
    rng = np.random.default_rng(seed)
    picked = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if len(members) < shots:
            named = f"class {int(c)}" + (f" ({names[int(c)]!r})" if names is not None else "")
            raise DataError(f"{named} has {len(members)} examples, fewer than shots={shots}")
        picked.append(np.sort(rng.choice(members, size=shots, replace=False)))
    return np.concatenate(picked).astype(np.int64) if picked else np.zeros(0, np.int64)


def _to_rgb(image: np.ndarray, where: str) -> np.ndarray:
    if image.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise DataError(f"{where}: expected an [H, W(, 1|3|4)] image, got shape {image.shape}")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def read_arrays(
    source: Sequence[dict[str, Any]],
    size: int,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    image_key: str = "image",
    label_key: str = "label",
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Records (all, or ``indices`` in that order) as uint8 images ``[N, size, size, 3]`` and
    int64 labels ``[N]``; grayscale becomes three equal channels, alpha is dropped.

    ``source`` is a ``load_split`` source or any sequence of such dicts. The progress bar shows
    from 512 records unless ``progress`` says otherwise."""
    indices = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)
    images = np.empty((len(indices), size, size, 3), np.uint8)
    labels = np.empty(len(indices), np.int64)
    show = len(indices) >= _PROGRESS_FROM if progress is None else progress
    with tqdm(total=len(indices), desc="reading images", disable=not show, leave=False) as bar:
        row = 0
        for batch in _batches(source, indices):
            for record in batch:
                where = f"record {int(indices[row])} feature {image_key!r}"
                images[row] = centre_square(_to_rgb(np.asarray(record[image_key]), where), size)
                labels[row] = int(record[label_key])
                row += 1
            bar.update(len(batch))
    return images, labels
