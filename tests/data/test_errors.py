"""Bad rows are counted by reason with the first few named, or raise in strict mode; image
files that are missing or not images are bad rows, real ones read back exactly."""

import numpy as np
import PIL.Image
import pytest
from skimage import data as skimage_data

from jaxrank.data.errors import BadRows, DataError
from jaxrank.data.images import read_image


def test_bad_rows_counts_and_names_the_first_few():
    bad = BadRows(keep=2)
    bad.read(3)
    for row in range(4):
        bad.skip(f"a.csv row {row}", "malformed_row", "expected 5 columns")
    bad.skip("a.csv row 9", "unknown_id", "no entity Q1")
    assert bad.skipped == 5
    assert bad.report() == {
        "read": 3,
        "skipped": {"malformed_row": 4, "unknown_id": 1},
        "examples": [
            "a.csv row 0: malformed_row: expected 5 columns",
            "a.csv row 1: malformed_row: expected 5 columns",
        ],
    }
    with pytest.raises(DataError, match=r"a\.csv row 7: unknown_id: no entity Q2"):
        BadRows(strict=True).skip("a.csv row 7", "unknown_id", "no entity Q2")


def test_read_image_real_missing_and_broken(tmp_path):
    photo = skimage_data.coffee()
    PIL.Image.fromarray(photo).save(tmp_path / "coffee.png")
    PIL.Image.fromarray(skimage_data.camera()).save(tmp_path / "camera.png")  # grayscale
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    bad = BadRows()
    np.testing.assert_array_equal(read_image(tmp_path / "coffee.png", "row 0", bad), photo)
    grey = read_image(tmp_path / "camera.png", "row 1", bad)
    assert grey.shape == (*skimage_data.camera().shape, 3)
    assert read_image(tmp_path / "nope.jpg", "row 2", bad) is None
    assert read_image(tmp_path / "broken.jpg", "row 3", bad) is None
    assert bad.report()["skipped"] == {"missing_image": 1, "undecodable_image": 1}
    assert bad.examples[0].startswith("row 2: missing_image: no file ")
