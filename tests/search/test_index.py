"""Index building (in pieces, streamed, from an encoder), external ids, and index files."""

import json
import struct

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

from jaxrank.parallel import make_mesh
from jaxrank.search import Index, SearchError
from jaxrank.search import store as store_module

D = 8


def mesh_of(n):
    return make_mesh(n, 1, jax.devices()[:n])


def data(seed=0, n=45, q=6):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, D)).astype(np.float32),
        rng.standard_normal((q, D)).astype(np.float32),
    )


def assert_same(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)


EXTERNAL = 2**40 + 7 * np.arange(45, dtype=np.int64)  # int64 ids beyond int32


def test_add_in_pieces_growing_the_index_equals_one_build():
    x, q = data()
    whole = Index.from_array(x, EXTERNAL, mesh=mesh_of(2), block_rows=8)
    grown = Index(D, mesh=mesh_of(2), block_rows=8, chunk_rows=4)  # capacity 0: grows 4 times
    for lo, hi in [(0, 1), (1, 9), (9, 30), (30, 45)]:
        grown.add(x[lo:hi], EXTERNAL[lo:hi])
    assert len(grown) == 45 and grown.ids.dtype == np.int64
    np.testing.assert_array_equal(grown.ids, EXTERNAL)
    result = grown.search(q, 5)
    assert_same(result, whole.search(q, 5))
    assert set(result.ids.ravel()) <= set(EXTERNAL)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_streaming_build_equals_in_memory_build(metric):
    x, q = data(1)
    options = {"metric": metric, "mesh": mesh_of(8), "block_rows": 8, "chunk_rows": 8}
    whole = Index.from_array(x, EXTERNAL, **options)
    chunks = ((x[i : i + 10], EXTERNAL[i : i + 10]) for i in range(0, 45, 10))
    streamed = Index.from_chunks(chunks, capacity=45, **options)
    assert_same(streamed.search(q, 6), whole.search(q, 6))
    np.testing.assert_array_equal(streamed.database.vectors, whole.database.vectors)


def test_from_encoder_embeds_batch_by_batch_and_compiles_once():
    x, q = data(2)
    weights = np.random.default_rng(3).standard_normal((D, 5)).astype(np.float32)
    encode = jax.jit(lambda batch: jnp.tanh(batch["x"] @ weights))

    # A grain dataset of 45 rows in batches of 8: the last batch has 5 rows and is padded.
    batches = (
        grain.MapDataset.range(45)
        .map(lambda i: {"x": x[i], "id": EXTERNAL[i]})
        .batch(8)
        .to_iter_dataset()
    )
    built = Index.from_encoder(encode, batches, id_key="id", mesh=mesh_of(2), block_rows=8)
    assert encode._cache_size() == 1 and len(built) == 45
    reference = Index.from_array(np.tanh(x @ weights), EXTERNAL, mesh=mesh_of(2))
    result, expected = built.search(q @ weights, 4), reference.search(q @ weights, 4)
    np.testing.assert_array_equal(result.ids, expected.ids)
    np.testing.assert_allclose(result.scores, expected.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("metric", "dtype"), [("ip", "float32"), ("cosine", "bfloat16"), ("l2", "float32")]
)
def test_save_load_round_trip_onto_another_mesh(tmp_path, metric, dtype):
    x, q = data(4)
    path = tmp_path / "kb.safetensors"
    saved = Index.from_array(x, EXTERNAL, metric=metric, dtype=dtype, mesh=mesh_of(8))
    saved.save(path)
    loaded = Index.load(path, metric=metric, mesh=mesh_of(2), chunk_rows=16)
    assert (loaded.dim, loaded.metric, loaded.dtype, len(loaded)) == (D, metric, dtype, 45)
    np.testing.assert_array_equal(loaded.ids, EXTERNAL)
    assert_same(loaded.search(q, 7), saved.search(q, 7))
    # A plain safetensors reader sees the tensors and the description.
    with safe_open(str(path), "numpy") as f:
        meta = f.metadata()
        np.testing.assert_array_equal(f.get_tensor("ids"), EXTERNAL)
        assert f.get_slice("vectors").get_shape() == [45, D]
    assert meta["metric"] == metric and meta["count"] == "45" and meta["dim"] == str(D)
    assert meta["dtype"] == dtype and meta["checksum"].startswith("sha256:")
    assert meta["normalized"] == ("true" if metric == "cosine" else "false")
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_empty_index_round_trip(tmp_path):
    Index(D, "l2", mesh=mesh_of(2)).save(tmp_path / "empty.safetensors")
    loaded = Index.load(tmp_path / "empty.safetensors", mesh=mesh_of(2))
    assert len(loaded) == 0 and loaded.metric == "l2"
    with pytest.raises(SearchError, match="index is empty"):
        loaded.search(np.ones((1, D)), 1)


@pytest.fixture
def saved_index(tmp_path):
    path = tmp_path / "kb.safetensors"
    Index.from_array(data(5)[0], mesh=mesh_of(2)).save(path)
    return path


def header_size(path):
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize("where", ["ids", "vectors"])
def test_a_changed_byte_fails_the_checksum(saved_index, where):
    raw = bytearray(saved_index.read_bytes())
    offset = header_size(saved_index) + (3 if where == "ids" else 8 * 45 + 5)
    raw[offset] ^= 0x10
    saved_index.write_bytes(bytes(raw))
    with pytest.raises(SearchError, match=f"{saved_index}.*failed its checksum"):
        Index.load(saved_index, mesh=mesh_of(2))


def test_a_metric_edited_in_the_header_fails_the_checksum(saved_index):
    raw = saved_index.read_bytes().replace(b'"metric":"ip"', b'"metric":"l2"')
    saved_index.write_bytes(raw)
    with pytest.raises(SearchError, match="failed its checksum"):
        Index.load(saved_index, mesh=mesh_of(2))


def test_a_truncated_file_is_refused(saved_index):
    raw = saved_index.read_bytes()
    saved_index.write_bytes(raw[:-100])
    with pytest.raises(SearchError, match=f"index file {saved_index} is truncated"):
        Index.load(saved_index, mesh=mesh_of(2))
    saved_index.write_bytes(raw[:50])
    with pytest.raises(SearchError, match="truncated inside its header"):
        Index.load(saved_index, mesh=mesh_of(2))
    saved_index.write_bytes(raw + b"\0")
    with pytest.raises(SearchError, match="1 unexpected trailing bytes"):
        Index.load(saved_index, mesh=mesh_of(2))


def test_an_index_built_with_another_metric_is_refused(saved_index):
    with pytest.raises(SearchError, match="built with metric 'ip', not 'l2'"):
        Index.load(saved_index, metric="l2", mesh=mesh_of(2))


def test_other_files_are_not_indexes(tmp_path):
    other = tmp_path / "weights.safetensors"
    safetensors.numpy.save_file({"w": np.ones((2, 2), np.float32)}, str(other))
    with pytest.raises(SearchError, match="not a readable jaxrank index"):
        Index.load(other)
    text = tmp_path / "notes.safetensors"
    text.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(SearchError, match="header is not valid JSON"):
        Index.load(text)
    with pytest.raises(SearchError, match="does not exist"):
        Index.load(tmp_path / "missing.safetensors")


def test_an_interrupted_save_leaves_the_previous_file(saved_index):
    before = saved_index.read_bytes()
    meta = store_module.IndexMeta(D, 10, "ip", "float32", False)

    def failing_chunks():
        yield np.zeros((5, D), np.float32)
        raise KeyboardInterrupt  # as if the process were stopped mid-write

    with pytest.raises(KeyboardInterrupt):
        store_module.write_index(saved_index, meta, np.arange(10), failing_chunks())
    assert saved_index.read_bytes() == before
    assert list(saved_index.parent.iterdir()) == [saved_index]
    json.loads(saved_index.read_bytes()[8 : header_size(saved_index)])  # still whole
