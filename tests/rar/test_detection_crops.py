"""RAR's detection crops against independent references: the blur against
``scipy.ndimage.gaussian_filter`` on a real photo (sharp inside the box, blurred outside), the
margin rule on hand-worked boxes, each crop against scipy blur + numpy composite + Pillow's
float resize of the expanded box, jit / vmap / chunked shapes, and the retrieved classes against
a numpy brute-force cosine ranking."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data

from jaxrank import imaging
from jaxrank.rar import detection_crops as dc
from jaxrank.rar.class_memory import ClassMemory, class_text_embeddings


@pytest.fixture(scope="module")
def photos():
    """Two real photos cut to one shape ``[2, 400, 512, 3]`` float32."""
    astronaut = data.astronaut()[:400, :512]
    coffee = data.coffee()[:400, :512]
    return np.stack([astronaut, coffee]).astype(np.float32)


def _scipy_blur(image, sigma, truncate=4.0):
    return ndimage.gaussian_filter(
        image.astype(np.float64), sigma=(sigma, sigma, 0), mode="reflect", truncate=truncate
    )


def _numpy_mask(box, height, width):
    """Pixel centres inside the box, written independently of the module."""
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    return (xx >= box[0]) & (xx < box[2]) & (yy >= box[1]) & (yy < box[3])


def _numpy_region(box, height, width, context=32.0, lo=0.1, hi=1.0):
    scale = np.sqrt(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))
    margin = min(max(context, lo * scale), hi * scale)
    x0, y0, x1, y1 = box
    grown = (x0 - margin, y0 - margin, x1 + margin, y1 + margin)
    return tuple(
        float(np.clip(v, 0, lim)) for v, lim in zip(grown, (width, height) * 2, strict=True)
    )


@pytest.mark.parametrize("sigma,truncate", [(1.0, 4.0), (2.5, 4.0), (3.0, 2.0)])
def test_gaussian_blur_equals_scipy(photos, sigma, truncate):
    got = np.asarray(dc.gaussian_blur(jnp.asarray(photos), sigma, truncate))
    for image, out in zip(photos, got, strict=True):
        np.testing.assert_allclose(out, _scipy_blur(image, sigma, truncate), atol=2e-3)
    assert dc.gaussian_kernel(sigma, truncate).size == 2 * int(truncate * sigma + 0.5) + 1


@pytest.mark.parametrize("box", [(100.0, 80.0, 260.0, 200.0), (100.4, 80.6, 259.5, 200.2)])
def test_blur_outside_keeps_the_box_sharp_and_blurs_the_rest(photos, box):
    image, sigma = photos[1], 3.0
    out = np.asarray(dc.blur_outside(image, jnp.asarray(box), sigma))
    inside = np.zeros(image.shape[:2], bool)
    inside[81 if box[1] % 1 else 80 : 200, 100 : 259 if box[2] % 1 else 260] = True  # by hand
    np.testing.assert_array_equal(inside, _numpy_mask(box, *image.shape[:2]))
    np.testing.assert_array_equal(out[inside], image[inside])
    np.testing.assert_allclose(out[~inside], _scipy_blur(image, sigma)[~inside], atol=2e-3)
    assert np.abs(out[~inside] - image[~inside]).mean() > 1.0  # the blur did change the photo


def test_margin_rule_on_hand_worked_boxes():
    height, width = 400, 512
    boxes = jnp.asarray(
        [
            [100, 100, 110, 110],  # s = 10: margin capped at max_ratio * s = 10
            [200, 200, 264, 264],  # s = 64: the context, 32
            [50, 50, 450, 350],  # s = sqrt(400 * 300) = 346.4: min_ratio * s = 34.64
            [300, 50, 304, 350],  # thin, s = sqrt(4 * 300) = 34.6: 32, on both axes
            [0, 0, 20, 20],  # s = 20 at the top-left corner: 20, clipped at 0
            [500, 378, 512, 400],  # s = sqrt(12 * 22) = 16.25 at the bottom-right corner
            [5, 5, 5, 9],  # empty: no margin
        ],
        jnp.float32,
    )
    big = np.sqrt(400 * 300) * 0.1
    corner = np.sqrt(12 * 22)
    np.testing.assert_allclose(
        dc.box_margin(boxes), [10, 32, big, 32, 20, corner, 0], rtol=1e-6, atol=1e-6
    )
    want = [
        [90, 90, 120, 120],
        [168, 168, 296, 296],
        [50 - big, 50 - big, 450 + big, 350 + big],
        [268, 18, 336, 382],
        [0, 0, 40, 40],
        [500 - corner, 378 - corner, 512, 400],
        [5, 5, 5, 9],
    ]
    np.testing.assert_allclose(dc.expand_boxes(boxes, height, width), want, atol=1e-4)
    # The relative margin falls as the object grows: 1.0, 0.5, 0.1.
    relative = dc.box_margin(boxes[:3]) / jnp.sqrt(jnp.asarray([100.0, 4096.0, 120000.0]))
    np.testing.assert_allclose(relative, [1.0, 0.5, 0.1], rtol=1e-5)
    # Other settings follow the same formula: no context means min_ratio of the scale.
    np.testing.assert_allclose(
        dc.box_margin(boxes[:3], context=0.0, min_ratio=0.25), [2.5, 16, 0.25 * np.sqrt(120000)]
    )


def test_crops_equal_blur_composite_and_pillow_resize(photos):
    boxes = np.asarray(
        [
            [[120.0, 60.0, 300.0, 260.0], [10.5, 20.25, 40.75, 44.5], [470.0, 360.0, 512.0, 400.0]],
            [[200.0, 150.0, 232.0, 180.0], [0.0, 0.0, 512.0, 400.0], [60.3, 300.7, 260.2, 390.9]],
        ],
        np.float32,
    )
    size, sigma = 48, 2.0
    got = np.asarray(dc.detection_crops(jnp.asarray(photos), jnp.asarray(boxes), size, sigma))
    assert got.shape == (2, 3, size, size, 3) and got.dtype == np.float32
    for b, image in enumerate(photos):
        blurred = _scipy_blur(image, sigma)
        for n, box in enumerate(boxes[b]):
            composite = np.where(_numpy_mask(box, 400, 512)[..., None], image, blurred)
            region = _numpy_region(box, 400, 512)
            want = np.stack(
                [
                    Image.fromarray(composite[..., c].astype(np.float32), mode="F").resize(
                        (size, size), Image.BILINEAR, box=region
                    )
                    for c in range(3)
                ],
                axis=-1,
            )
            np.testing.assert_allclose(got[b, n], want, atol=0.02, err_msg=f"box {b},{n}")


def test_jit_vmap_and_chunked_boxes_agree(photos):
    images = jnp.asarray(photos[:, :96, :128]).astype(jnp.uint8)  # uint8 in, float32 out
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 80, size=(2, 5, 2))
    boxes = jnp.asarray(np.concatenate([corner, corner + rng.uniform(2, 40, (2, 5, 2))], -1))
    run = dc.detection_crops  # jitted, size / sigma / box_chunk static
    whole = run(images, boxes, size=24, sigma=1.5)
    chunked = run(images, boxes, size=24, sigma=1.5, box_chunk=2)
    assert whole.shape == chunked.shape == (2, 5, 24, 24, 3) and whole.dtype == jnp.float32
    np.testing.assert_allclose(whole, chunked, atol=1e-4)

    # Box by box, image by image: blur_outside then crop_and_resize of the expanded box.
    @jax.jit
    def one(image, box):
        sharp = dc.blur_outside(image, box, 1.5)
        return imaging.crop_and_resize(sharp, dc.expand_boxes(box, 96, 128), 24)

    for b in range(2):
        for n in range(5):
            np.testing.assert_allclose(whole[b, n], one(images[b], boxes[b, n]), atol=1e-3)
    # vmap of blur_outside over boxes equals the loop.
    many = jax.vmap(dc.blur_outside, in_axes=(None, 0, None))(images[0], boxes[0], 1.5)
    np.testing.assert_allclose(many[3], dc.blur_outside(images[0], boxes[0, 3], 1.5), atol=1e-4)
    # sigma 0: no blur, crop of the raw pixels.
    raw = run(images, boxes, size=24, sigma=0.0)
    regions = dc.expand_boxes(boxes, 96, 128)
    np.testing.assert_allclose(
        raw,
        jax.jit(imaging.crop_and_resize, static_argnums=2)(
            images[:, None].repeat(5, 1), regions, 24
        ),
        atol=1e-3,
    )


def _text_vector(text, dim):
    return np.random.default_rng(zlib.crc32(text.encode())).normal(size=dim)


def test_top_classes_equal_numpy_cosine_ranking(photos):
    dim, size, k = 24, 16, 5
    names = [f"class {i}" for i in range(30)]
    templates = ["a photo of a {}.", "a blurry photo of the {}."]
    text = class_text_embeddings(
        lambda texts: np.stack([_text_vector(t, dim) for t in texts]), names, templates
    )
    memory = ClassMemory.from_embeddings(text, np.arange(len(names)))

    boxes = jnp.asarray(
        [
            [[120, 60, 300, 260], [10, 20, 40, 44], [470, 360, 512, 400], [0, 0, 1, 1]],
            [[200, 150, 232, 180], [0, 0, 512, 400], [60, 300, 260, 390], [0, 0, 1, 1]],
        ],
        jnp.float32,
    )
    crops = dc.detection_crops(jnp.asarray(photos), boxes, size, 2.0)
    projection = np.random.default_rng(1).normal(size=(size * size * 3, dim)) / size
    weights = jnp.asarray(projection, jnp.float32)
    encode = jax.jit(lambda x: (x.reshape(x.shape[0], -1) / 255.0 - 0.5) @ weights)
    valid = np.array([[True, True, True, False], [True, True, True, False]])
    classes, scores = dc.detection_top_classes(encode, memory, crops, k, valid=valid)
    assert classes.shape == scores.shape == (2, 4, k)

    # Brute force in float64: the projected crop against each name's template mean.
    flat = np.asarray(crops, np.float64).reshape(8, -1) / 255.0 - 0.5
    queries = flat @ projection
    names_mean = np.zeros((len(names), dim))
    for template in templates:
        rows = np.stack([_text_vector(template.format(n), dim) for n in names])
        names_mean += rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        names_mean / np.linalg.norm(names_mean, axis=1, keepdims=True)
    ).T
    order = np.argsort(-cosine, axis=1)[:, :k].reshape(2, 4, k)
    best = np.take_along_axis(cosine, order.reshape(8, k), 1).reshape(2, 4, k)
    np.testing.assert_array_equal(classes[valid], order[valid])
    np.testing.assert_allclose(scores[valid], best[valid], atol=1e-4)
    assert (classes[~valid] == -1).all() and np.isneginf(scores[~valid]).all()

    listed = dc.candidate_names(classes, names)
    assert listed[0][1] == [names[c] for c in order[0, 1]] and listed[1][3] == []
