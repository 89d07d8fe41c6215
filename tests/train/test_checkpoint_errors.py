"""A damaged checkpoint's error is one short line: the library's first line and its reason,
without TensorStore's spec dump, which stays reachable as the error's ``__cause__``."""

import jax.numpy as jnp
import optax
import pytest

from jaxrank.train.checkpoint import Checkpointer, CheckpointError
from jaxrank.train.step import TrainState


def test_damaged_array_data_gives_a_short_error_with_the_full_one_as_cause(tmp_path):
    state = TrainState.create({"w": jnp.arange(3.0)}, optax.adam(0.1), seed=0)
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(7, state, {})
    for chunk in (tmp_path / "7" / "state" / "d").iterdir():
        chunk.write_bytes(b"garbage")
    with Checkpointer(tmp_path) as checkpointer, pytest.raises(CheckpointError) as info:
        checkpointer.restore(state)
    message = str(info.value)
    assert message.startswith(f"checkpoint {tmp_path / '7'} is ")
    assert "is not valid for value of size 7" in message  # the reason: a 7-byte chunk
    assert "tensorstore_spec" not in message and "\n" not in message and len(message) < 600
    assert "tensorstore_spec" in str(info.value.__cause__)
