"""jaxrank's CLIP/SigLIP pre-processing equals transformers' (PIL backend) on real photos, and
its tokenizer wrapper gives transformers' ids with the family's fixed-shape mask convention."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hf_tokenizer_fixtures import (
    CLIP_EOS_ID,
    CLIP_VOCAB_SIZE,
    SIGLIP_EOS_ID,
    SIGLIP_VOCAB_SIZE,
    write_tiny_clip_tokenizer,
    write_tiny_siglip_tokenizer,
)
from PIL import Image
from skimage import data
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPProcessor,
    SiglipImageProcessorPil,
)

from jaxrank.models.hf.preprocessing import ImagePreprocessor
from jaxrank.models.hf.tokenization import TextTokenizer


def _photos() -> dict[str, np.ndarray]:
    astronaut, coffee, chelsea = data.astronaut(), data.coffee(), data.chelsea()
    return {
        "astronaut": astronaut,  # 512x512
        "coffee": coffee,  # 400x600
        "chelsea": chelsea,  # 300x451
        "camera": data.camera(),  # 512x512 grayscale
        "rocket": data.rocket(),  # 427x640
        "tall_crop": astronaut[40:290, 150:255],  # 250x105
        "odd_crop": chelsea[13:50, 101:154],  # 37x53: smaller than every crop below
        "tiny_crop": coffee[200:220, 300:315],  # 20x15
        "elongated": coffee[180:196, :],  # 16x600
        "gray_strip": data.camera()[:300, 200:209],  # 300x9 grayscale
    }


PHOTOS = _photos()


def _rgba(pixels: np.ndarray) -> np.ndarray:
    """An RGBA photo whose alpha ramps 0..255 across, so compositing onto white matters."""
    alpha = np.broadcast_to(np.linspace(0, 255, pixels.shape[1]).astype(np.uint8), pixels.shape[:2])
    return np.concatenate([pixels, alpha[:, :, None]], axis=2)


def _inputs(kind: str) -> tuple[list, list]:
    """(what jaxrank gets, what transformers gets): the same photos as PIL images, or as numpy
    arrays (transformers cannot take an HxW array, so its gray photos stay PIL "L" images)."""
    ours, theirs = [], []
    for pixels in [*PHOTOS.values(), _rgba(PHOTOS["chelsea"]), _rgba(PHOTOS["odd_crop"])]:
        image = Image.fromarray(pixels)
        ours.append(image if kind == "pil" else pixels)
        theirs.append(image if kind == "pil" or pixels.ndim == 2 else pixels)
    return ours, theirs


def _reference(processor, images: list) -> np.ndarray:
    """transformers' pixel_values, one image at a time, made channels-last."""
    return np.stack(
        [processor(images=[image], return_tensors="np")["pixel_values"][0] for image in images]
    ).transpose(0, 2, 3, 1)


CUSTOM_MEAN = [0.3, 0.5, 0.7]
CUSTOM_STD = [0.2, 0.25, 0.3]
PROCESSORS = {
    "clip_default": lambda: CLIPImageProcessorPil(),
    "siglip_default": lambda: SiglipImageProcessorPil(),
    "clip_small": lambda: CLIPImageProcessorPil(
        size={"shortest_edge": 48},
        crop_size={"height": 40, "width": 40},
        image_mean=CUSTOM_MEAN,
        image_std=CUSTOM_STD,
    ),
    # The resize leaves the height shorter than the crop: transformers zero-pads before
    # rescaling, with its own offset rounding.
    "clip_padded_crop": lambda: CLIPImageProcessorPil(
        size={"shortest_edge": 33}, crop_size={"height": 45, "width": 30}, resample=2
    ),
    "clip_no_resize": lambda: CLIPImageProcessorPil(
        do_resize=False, crop_size={"height": 41, "width": 38}, do_normalize=False
    ),
    "siglip_rect": lambda: SiglipImageProcessorPil(
        size={"height": 40, "width": 56},
        resample=Image.Resampling.BILINEAR,
        image_mean=CUSTOM_MEAN,
        image_std=0.25,
    ),
    "siglip_raw": lambda: SiglipImageProcessorPil(
        size={"height": 31, "width": 29}, do_rescale=False, do_normalize=False
    ),
}


@pytest.mark.parametrize("kind", ["pil", "numpy"])
@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_images_match_transformers(tmp_path, name, kind):
    reference = PROCESSORS[name]()
    reference.save_pretrained(tmp_path)
    ours = ImagePreprocessor.from_pretrained(tmp_path)
    assert ours.family == name.split("_")[0]
    our_images, their_images = _inputs(kind)
    out = ours(our_images)
    expected = _reference(reference, their_images)
    assert out.dtype == np.float32
    assert out.shape == expected.shape == (len(our_images), *ours.output_size, 3)
    np.testing.assert_array_equal(out, expected)  # bit-exact: same PIL calls, same float32 math


def test_legacy_clip_config_matches_auto_image_processor(tmp_path):
    """openai/clip-vit-base-patch32's preprocessor_config.json: ints for size and crop_size, a
    feature_extractor_type instead of image_processor_type, no do_rescale/do_convert_rgb."""
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": 224,
                "do_center_crop": True,
                "do_normalize": True,
                "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor",
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "resample": 3,
                "size": 224,
            }
        )
    )
    reference = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(reference) is CLIPImageProcessorPil
    ours = ImagePreprocessor.from_pretrained(tmp_path)
    assert (ours.shortest_edge, ours.size, ours.crop_size) == (224, None, (224, 224))
    images = [PHOTOS["coffee"], PHOTOS["tall_crop"], PHOTOS["elongated"]]
    np.testing.assert_array_equal(ours(images), _reference(reference, images))


def test_model_type_decides_the_defaults_without_a_processor_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": [32, 48]}))
    reference = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(reference) is SiglipImageProcessorPil
    ours = ImagePreprocessor.from_pretrained(tmp_path)
    assert ours.family == "siglip" and ours.image_mean == (0.5, 0.5, 0.5)
    images = [Image.fromarray(PHOTOS["rocket"]), Image.fromarray(PHOTOS["camera"])]
    np.testing.assert_array_equal(ours(images), _reference(reference, images))


def test_reads_the_image_processor_nested_in_processor_config(tmp_path):
    """transformers v5's processor.save_pretrained writes only processor_config.json."""
    write_tiny_clip_tokenizer(tmp_path / "tok")
    image_processor = PROCESSORS["clip_small"]()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp_path)
    assert not (tmp_path / "preprocessor_config.json").exists()
    ours = ImagePreprocessor.from_pretrained(tmp_path)
    assert ours.crop_size == (40, 40) and ours.image_std == tuple(CUSTOM_STD)
    images = [PHOTOS["astronaut"], PHOTOS["tiny_crop"]]
    np.testing.assert_array_equal(ours(images), _reference(image_processor, images))


def test_uncropped_images_of_different_shapes_do_not_batch(tmp_path):
    CLIPImageProcessorPil(do_center_crop=False, size={"shortest_edge": 32}).save_pretrained(
        tmp_path
    )
    ours = ImagePreprocessor.from_pretrained(tmp_path)
    assert ours.output_size is None
    assert ours([PHOTOS["coffee"]]).shape == (1, 32, 48, 3)
    with pytest.raises(ValueError, match="different shapes"):
        ours([PHOTOS["coffee"], PHOTOS["astronaut"]])


def test_missing_processor_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"preprocessor_config\.json"):
        ImagePreprocessor.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "config,key",
    [
        ({"image_processor_type": "CLIPImageProcessor", "do_pad": True}, "do_pad"),
        ({"image_processor_type": "CLIPImageProcessor", "use_square_size": True}, "use_square"),
        ({"image_processor_type": "CLIPImageProcessor", "max_size": 300}, "max_size"),
        ({"image_processor_type": "ViTImageProcessor"}, "image_processor_type"),
        ({"image_processor_type": "SiglipImageProcessor", "size": {"longest_edge": 9}}, "size"),
        ({"image_processor_type": "SiglipImageProcessor", "do_center_crop": True}, "crop_size"),
        ({"image_processor_type": "CLIPImageProcessor", "image_mean": [0.5, 0.5]}, "image_mean"),
        ({"size": 224}, "image_processor_type"),
    ],
)
def test_unsupported_settings_name_file_and_key(tmp_path, config, key):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=key) as err:
        ImagePreprocessor.from_pretrained(tmp_path)
    assert "preprocessor_config.json" in str(err.value)


def test_non_rgb_inputs_without_conversion_are_refused(tmp_path):
    SiglipImageProcessorPil(do_convert_rgb=False).save_pretrained(tmp_path)
    ours = ImagePreprocessor.from_pretrained(tmp_path)
    assert ours([PHOTOS["coffee"]]).shape == (1, 224, 224, 3)
    with pytest.raises(ValueError, match="3-channel"):
        ours([PHOTOS["camera"]])


TEXTS = [
    "a photo of a cat",
    "The DOG!",
    "a photo of the dog, a photo of the cat, a photo of a dog",  # longer than max_len
    "zebra",
]


def _expected(folder, max_len: int) -> dict[str, np.ndarray]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = tokenizer(TEXTS, padding="max_length", max_length=max_len, truncation=True)
    return {key: np.asarray(value) for key, value in out.items()}


def test_clip_tokenizer_pads_to_max_len_with_the_tokenizer_mask(tmp_path):
    write_tiny_clip_tokenizer(tmp_path)
    assert CLIP_VOCAB_SIZE <= 100
    tokenizer = TextTokenizer.from_pretrained(tmp_path, max_len=10, pad_to_max=True)
    ids, mask = tokenizer(TEXTS)
    expected = _expected(tmp_path, 10)
    assert ids.shape == mask.shape == (len(TEXTS), 10)
    assert ids.dtype == mask.dtype == np.int32
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])
    assert ids.max() < CLIP_VOCAB_SIZE
    # Each text ends at its first eos (where CLIP pools); padding repeats eos and is masked.
    lengths = mask.sum(axis=1)
    first_eos = (ids == CLIP_EOS_ID).argmax(axis=1)
    np.testing.assert_array_equal(first_eos, lengths - 1)
    np.testing.assert_array_equal(np.argmax(ids, axis=1), first_eos)
    assert lengths[2] == 10  # truncated, still ending with eos
    assert ids[0].tolist()[:7] == tokenizer.tokenizer("a photo of a cat")["input_ids"]


def test_clip_tokenizer_can_pad_to_the_longest_text(tmp_path):
    write_tiny_clip_tokenizer(tmp_path)
    tokenizer = TextTokenizer.from_pretrained(tmp_path, max_len=64, pad_to_max=False)
    ids, mask = tokenizer(TEXTS[:2])
    assert ids.shape == (2, 7)
    np.testing.assert_array_equal(mask.sum(axis=1), [7, 5])


def test_siglip_tokenizer_pads_to_max_len_without_a_mask(tmp_path):
    write_tiny_siglip_tokenizer(tmp_path)
    assert SIGLIP_VOCAB_SIZE <= 100
    tokenizer = TextTokenizer.from_pretrained(
        tmp_path, max_len=12, pad_to_max=True, mask_padding=False
    )
    ids, mask = tokenizer(TEXTS)
    expected = _expected(tmp_path, 12)
    assert ids.shape == mask.shape == (len(TEXTS), 12)
    assert ids.dtype == mask.dtype == np.int32
    np.testing.assert_array_equal(ids, expected["input_ids"])
    assert (mask == 1).all()
    # SigLIP pools the last position: eos (= pad) for every text, truncated or not.
    assert (ids[:, -1] == SIGLIP_EOS_ID).all()
    assert (expected["attention_mask"][2] == 1).all()  # the long text really was truncated
    assert ids[1].tolist()[:3] == tokenizer.tokenizer("the dog")["input_ids"]


def test_unmasked_padding_needs_a_fixed_length(tmp_path):
    write_tiny_siglip_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="pad_to_max"):
        TextTokenizer.from_pretrained(tmp_path, max_len=12, pad_to_max=False, mask_padding=False)


def test_sentencepiece_siglip_tokenizer_of_real_checkpoints(tmp_path):
    """Real SigLIP checkpoints ship a sentencepiece ``SiglipTokenizer``; it loads through the
    family wrapper (all-ones mask, padded and truncated to the tower's length)."""
    import sentencepiece
    from transformers import SiglipTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["a photo of a cat", "the dog", "red striped circle"] * 40))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_path / "spm"),
        vocab_size=18,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    folder = tmp_path / "siglip"
    SiglipTokenizer(vocab_file=str(tmp_path / "spm.model")).save_pretrained(folder)
    texts = ["a photo of a cat", "a red dog striped like a cat, photo of the circle"]

    ids, mask = TextTokenizer.for_family(folder, "siglip", max_len=12)(texts)
    want = SiglipTokenizer.from_pretrained(folder)(
        texts, padding="max_length", max_length=12, truncation=True
    )["input_ids"]
    np.testing.assert_array_equal(ids, np.asarray(want, np.int32))
    assert ids.shape == (2, 12) and (mask == 1).all() and ids[0, -1] == 1  # padded with </s>
