"""raysft.storage: θ1 of the dense-phase cache on any storage URI Ray accepts (local, file://, s3://…), written
atomically, found with get_file_info, read back bitwise. No Ray: the helper is pure pyarrow."""

from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest
import torch

from raysft import storage
from raysft.distributed.train_workers import load_theta1, save_theta1


def test_join_keeps_uris_intact():
    assert storage.join("s3://bucket/sweeps", "dense", "k1", "theta1.safetensors") == \
        "s3://bucket/sweeps/dense/k1/theta1.safetensors"
    assert storage.join("s3://bucket", "smoke") == "s3://bucket/smoke"
    assert storage.join("gs://b/x/", "/dense/") == "gs://b/x/dense"
    # pyarrow's URI options (endpoint, region…) stay a query at the end
    assert storage.join("s3://b/x?region=eu-west-1&scheme=http", "dense") == "s3://b/x/dense?region=eu-west-1&scheme=http"
    assert storage.join("file:///tmp/runs", "smoke") == "file:///tmp/runs/smoke"
    assert storage.join("/tmp/runs", "dense", "k") == "/tmp/runs/dense/k"


def _theta1():
    g = torch.Generator().manual_seed(0)
    theta1 = {"encoder.layer.0.w": torch.randn(4, 3, generator=g), "embeddings.b": torch.randn(5, generator=g)}
    head = {"classifier.weight": torch.randn(3, 4, generator=g).t()}  # non-contiguous, as a transposed view is
    return theta1, head


def test_theta1_round_trips_through_a_file_uri(tmp_path):
    theta1, head = _theta1()
    uri = storage.join(tmp_path.as_uri(), "dense", "k1", "theta1.safetensors")
    assert uri.startswith("file:///") and not storage.exists(uri)
    save_theta1(uri, theta1, head)
    assert storage.exists(uri) and not storage.exists(storage.join(tmp_path.as_uri(), "dense", "k1"))  # a folder
    assert os.listdir(tmp_path / "dense" / "k1") == ["theta1.safetensors"]  # no temporary file left
    back = load_theta1(uri)
    assert back.keys() == {**theta1, **head}.keys()
    assert all(torch.equal(back[k], v) for k, v in {**theta1, **head}.items())
    assert torch.equal(load_theta1(str(tmp_path / "dense" / "k1" / "theta1.safetensors"))["embeddings.b"],
                       theta1["embeddings.b"])  # the same file as a plain path


def _memory_fs():
    fsspec_memory = pytest.importorskip("fsspec.implementations.memory")
    return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_memory.MemoryFileSystem()))


@pytest.mark.parametrize("kind", ["subtree", "memory"])
def test_atomic_write_on_other_pyarrow_filesystems(tmp_path, kind):
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()) if kind == "subtree" else _memory_fs()
    path = "sweep/dense/k1/theta1.safetensors"  # a path on `fs` (Ray's storage_filesystem convention)
    assert not storage.exists(path, fs)
    storage.write_atomic(path, b"first", fs)
    storage.write_atomic(path, b"second", fs)  # replaces
    assert storage.exists(path, fs) and storage.read_bytes(path, fs) == b"second"
    listed = fs.get_file_info(pafs.FileSelector("sweep/dense/k1"))
    assert [i.base_name for i in listed] == ["theta1.safetensors"]
    if kind == "subtree":
        assert (tmp_path / path).read_bytes() == b"second"


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    target = tmp_path / "dense" / "theta1.safetensors"
    with pytest.raises(TypeError):
        storage.write_atomic(str(target), object())  # fails inside the write
    assert not storage.exists(str(target)) and os.listdir(tmp_path / "dense") == []


@pytest.fixture(scope="module")
def s3_root():
    """A local S3 server (moto, in a thread; offline) and a storage URI on it, as a user would pass --storage."""
    moto_server = pytest.importorskip("moto.server", reason="moto is a test extra: pip install -e '.[test]'")
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    root = f"s3://raysft-test/sweeps?region=us-east-1&scheme=http&endpoint_override={host}:{port}"
    admin, _ = pafs.FileSystem.from_uri(f"{root}&allow_bucket_creation=true")
    admin.create_dir("raysft-test")  # the bucket, made once as an operator would
    yield root
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_theta1_round_trips_through_s3(s3_root):
    theta1, head = _theta1()
    uri = storage.join(s3_root, "dense", "k1", "theta1.safetensors")
    assert uri.startswith("s3://raysft-test/sweeps/dense/k1/theta1.safetensors?")
    assert not storage.exists(uri)
    save_theta1(uri, theta1, head)
    assert storage.exists(uri)
    back = load_theta1(uri)
    assert all(torch.equal(back[k], v) for k, v in {**theta1, **head}.items())
    fs, path = storage.resolve(uri)
    assert fs.type_name == "s3" and path == "raysft-test/sweeps/dense/k1/theta1.safetensors"
