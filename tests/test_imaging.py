import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage import data
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from jaxrank import imaging


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()  # a real 512x512 photo shipped with scikit-image


@pytest.mark.parametrize(
    "box,size", [((100, 50, 356, 306), 64), ((10, 20, 74, 84), 128), ((33, 40, 233, 190), 48)]
)
def test_crop_matches_pillow_inside_the_crop(astronaut, box, size):
    """PIL's antialiased bilinear resize of the cropped image is the reference. At the crop's
    edges PIL clamps to the crop while we read the neighbouring real pixels, so compare away from
    the border."""
    ref = np.asarray(Image.fromarray(astronaut).crop(box).resize((size, size), Image.BILINEAR))
    out = np.asarray(imaging.crop_and_resize(jnp.asarray(astronaut), jnp.asarray(box), size))
    inner = (slice(3, -3), slice(3, -3))
    assert np.abs(out[inner] - ref[inner]).max() <= 2.0
    assert np.abs(out - ref.astype(np.float32)).mean() < 0.6


def test_full_resize_matches_pillow(astronaut):
    ref = np.asarray(Image.fromarray(astronaut).resize((224, 224), Image.BILINEAR))
    out = np.asarray(imaging.resize(jnp.asarray(astronaut), 224))
    assert np.abs(out - ref).max() <= 1.5


def test_batched_boxes_clamped_and_degenerate(astronaut):
    images = jnp.broadcast_to(jnp.asarray(astronaut), (2, 3, 512, 512, 3))
    boxes = jnp.asarray(
        [
            [[-50, -50, 600, 600], [0, 0, 512, 512], [200, 200, 200, 300]],
            [[300, 300, 100, 100], [10, 10, 60, 60], [0, 0, 512, 512]],
        ],
        jnp.float32,
    )
    out = jax.jit(imaging.crop_and_resize, static_argnums=2)(images, boxes, 32)
    assert out.shape == (2, 3, 32, 32, 3)
    assert bool(jnp.all(jnp.isfinite(out)))
    # A box past the borders is clamped to the full frame.
    np.testing.assert_allclose(out[0, 0], out[0, 1], atol=1e-4)
    single = imaging.crop_and_resize(images[1, 1], boxes[1, 1], 32)
    np.testing.assert_allclose(out[1, 1], single, atol=1e-3)
    assert float(imaging.box_area(imaging.clamp_boxes(boxes, 512, 512))[0, 2]) == 0.0
    assert float(imaging.box_area(boxes)[1, 0]) == 0.0


def test_normalize():
    x = jnp.asarray([[0, 255, 128]], jnp.uint8)
    out = imaging.normalize(x[..., None].repeat(3, -1), imaging.UNIT_MEAN, imaging.UNIT_STD)
    np.testing.assert_allclose(out[0, :, 0], [-1.0, 1.0, 128 / 127.5 - 1], atol=1e-6)


def _released_smart_resize(height, width, factor=28, min_pixels=3136, max_pixels=16384 * 784):
    """Region-R1's src/utils.py smart_resize, written out from its text for the reference."""
    h_bar, w_bar = (
        max(factor, round(height / factor) * factor),
        max(factor, round(width / factor) * factor),
    )
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        return math.floor(height / beta / factor) * factor, math.floor(
            width / beta / factor
        ) * factor
    if h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        return math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _released_view(photo, box, smart):
    """The released path: crop_image_with_bbox(resize=smart) then the CLIP processor (PIL)."""
    pil = Image.fromarray(photo)
    width, height = pil.size
    left, top = max(0, min(box[0], width)), max(0, min(box[1], height))
    right, bottom = max(0, min(box[2], width)), max(0, min(box[3], height))
    crop = pil.crop((left, top, right, bottom))
    if smart:
        new_h, new_w = _released_smart_resize(int(bottom - top), int(right - left))
        crop = crop.resize((new_w, new_h), resample=Image.BICUBIC)
    processor = CLIPImageProcessorPil(do_rescale=False, do_normalize=False)  # 224, bicubic
    return np.moveaxis(processor(images=crop, return_tensors="np")["pixel_values"][0], 0, -1)


BOXES = [(40.4, 20.6, 380.2, 250.5), (150, 60, 260, 280), (10.5, 30.5, 130.5, 90.5)]


def test_released_view_matches_pil_and_the_clip_processor():
    """Tolerances: without smart_resize the only difference is PIL's two 8-bit passes against
    one float resample rounded once (99% of values within 1 level on this photo); smart_resize
    adds PIL's second bicubic resample, whose interpolation blur a single resample does not
    have (mean <= 1.5 levels here). The stretched square, the other view, is ~25 levels off."""
    photo = data.chelsea()  # a real 300 x 451 photo
    images = jnp.broadcast_to(jnp.asarray(photo), (len(BOXES), *photo.shape))
    for limits in (None, (28, 3136, 16384 * 784)):
        view = jax.jit(imaging.released_crop_view, static_argnums=(2, 3))
        out = np.asarray(view(images, jnp.asarray(BOXES), 224, limits))
        for box, got in zip(BOXES, out, strict=True):
            diff = np.abs(got - _released_view(photo, box, smart=limits is not None))
            assert diff.mean() <= (0.3 if limits is None else 1.6)
            assert np.percentile(diff, 99) <= (1.0 if limits is None else 8.0)
    box = BOXES[0]
    stretched = np.asarray(imaging.crop_and_resize(jnp.asarray(photo), jnp.asarray(box), 224))
    assert np.abs(stretched - _released_view(photo, box, smart=True)).mean() > 10


def test_released_full_view_is_the_processor_alone():
    photo = data.chelsea()
    ref = _released_view(photo, (0, 0, 451, 300), smart=False)
    out = np.asarray(imaging.released_full_view(jnp.asarray(photo)[None], 224))[0]
    assert np.abs(out - ref).mean() <= 0.3


def test_released_view_geometry_by_hand():
    """A 20 x 10 (w x h) crop at x = 7: smart_resize (10, 20) -> (56, 84) (28 x 28 is below
    min_pixels: beta = sqrt(3136 / 200) = 3.96, ceil(10 beta / 28) = 2, ceil(20 beta / 28) = 3
    sides of 28); the processor takes it to 224 x 336 and keeps columns [56, 280), so a
    horizontal ramp (value = x) reads x in [7 + 56 / 16.8, 7 + 280 / 16.8). The processor-only
    path (20 x 10 -> 448 x 224, columns [112, 336)) reads x in [12, 22)."""
    ramp = np.broadcast_to(np.arange(64, dtype=np.float32)[None, :, None], (32, 64, 3))
    box = jnp.asarray([7.0, 3.0, 27.0, 13.0])
    smart = np.asarray(imaging.released_crop_view(jnp.asarray(ramp), box, 224))[100, :, 0]
    plain = np.asarray(imaging.released_crop_view(jnp.asarray(ramp), box, 224, None))[100, :, 0]
    centres = 7 + (np.arange(224) + 56 + 0.5) / 16.8 - 0.5
    inner = slice(8, -8)  # away from the crop's edges, where the kernel is cut
    np.testing.assert_allclose(smart[inner], np.round(centres[inner]), atol=1)
    centres = 7 + (np.arange(224) + 112 + 0.5) / 22.4 - 0.5
    np.testing.assert_allclose(plain[inner], np.round(centres[inner]), atol=1)
