import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage import data

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
