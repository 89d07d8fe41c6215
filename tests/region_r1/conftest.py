"""The tiny vision-language crop policy's base, built once for the MLLM tests."""

import pytest
from mllm_tiny import tiny_base


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("policy"))
