"""Images past the pixel limit are bad rows (``oversized_image``) read off the header, before
any decoding and without PIL's decompression-bomb warning; the limit is a reader option."""

import struct
import warnings
import zlib

import numpy as np
import PIL.Image
import pytest

from jaxrank.data.errors import BadRows, DataError
from jaxrank.data.images import MAX_PIXELS, read_image


def png_header(path, width, height):
    """A PNG whose header claims ``width x height`` RGB pixels and whose data is empty: only a
    reader that decodes before checking the size would notice the difference."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_a_144_megapixel_header_is_refused_without_a_warning(tmp_path):
    assert PIL.Image.MAX_IMAGE_PIXELS < 144_000_000 < 2 * PIL.Image.MAX_IMAGE_PIXELS  # PIL warns
    bad = BadRows()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert read_image(png_header(tmp_path / "big.png", 12_000, 12_000), "row 3", bad) is None
        # Past PIL's own error threshold: counted the same way.
        assert read_image(png_header(tmp_path / "huge.png", 20_000, 10_000), "row 4", bad) is None
    assert bad.report()["skipped"] == {"oversized_image": 2}
    big = f"row 3: oversized_image: {tmp_path / 'big.png'}: 12000 x 12000 pixels, more than "
    assert bad.report()["examples"][0] == f"{big}max_pixels={MAX_PIXELS}"
    with pytest.raises(DataError, match=r"^row 3: oversized_image: "):
        read_image(tmp_path / "big.png", "row 3", BadRows(strict=True))


def test_the_limit_is_an_option_and_counts_pixels_exactly(tmp_path):
    pixels = np.arange(30 * 20 * 3, dtype=np.uint8).reshape(20, 30, 3)
    PIL.Image.fromarray(pixels).save(tmp_path / "small.png")
    bad = BadRows()
    assert read_image(tmp_path / "small.png", "r", bad, max_pixels=599) is None
    np.testing.assert_array_equal(
        read_image(tmp_path / "small.png", "r", bad, max_pixels=600), pixels
    )
    detail = f"{tmp_path / 'small.png'}: 30 x 20 pixels, more than max_pixels=599"
    assert bad.report() == {
        "read": 0,
        "skipped": {"oversized_image": 1},
        "examples": [f"r: oversized_image: {detail}"],
    }
