"""Files on a sweep's storage, whatever its URI: a local path, ``file://``, ``s3://``, ``gs://``, ``hdfs://``…

Ray resolves ``storage_path`` with ``pyarrow.fs.FileSystem.from_uri``; the files raysft keeps beside Ray's (θ1 of
the dense-phase cache) go through the same resolution, so they live wherever Ray's do. Pure pyarrow, no Ray: the
sweep driver and the Train workers both use it. ``filesystem`` (optional everywhere) is Ray's
``storage_filesystem`` convention: a custom pyarrow filesystem, with the location a path on it instead of a URI.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

# Object stores make an uploaded object visible whole (a multipart upload too, when it completes), and their "move"
# is copy + delete: one put to the final name is the atomic write there.
_ATOMIC_PUT = {"s3", "gcs"}


def _scheme(uri: str) -> str:
    scheme = urlsplit(uri).scheme
    return scheme if len(scheme) > 1 else ""  # "C:\\x" is a path, not a URI


def join(root: str, *parts: str) -> str:
    """``root`` joined with ``parts``, keeping a URI a URI: ``s3://bucket/x`` + ``dense`` → ``s3://bucket/x/dense``
    (``Path`` would collapse ``//``), and a query (``?endpoint_override=…``) stays at the end."""
    parts = tuple(str(p).strip("/") for p in parts if str(p).strip("/"))
    if not _scheme(root):
        return str(Path(root).joinpath(*parts))
    u = urlsplit(root)
    path = posixpath.join(u.path or "/", *parts) if parts else u.path
    return f"{u.scheme}://{u.netloc}{path}" + (f"?{u.query}" if u.query else "")


def sibling(uri: str, name: str) -> str:
    """The file ``name`` in the folder of ``uri`` (a path or a URI, whose query stays at the end)."""
    if not _scheme(uri):
        return str(Path(uri).with_name(name))
    u = urlsplit(uri)
    path = posixpath.join(posixpath.dirname(u.path), name)
    return f"{u.scheme}://{u.netloc}{path}" + (f"?{u.query}" if u.query else "")


def resolve(uri: str, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path on it, as Ray resolves its storage_path."""
    if filesystem is not None:
        return filesystem, uri
    if not _scheme(uri):
        uri = os.path.abspath(os.path.expanduser(uri))  # from_uri wants an absolute local path
    return pafs.FileSystem.from_uri(uri)


def exists(uri: str, filesystem: pafs.FileSystem | None = None) -> bool:
    """Whether a file (not a folder) is at ``uri``."""
    fs, path = resolve(uri, filesystem)
    return fs.get_file_info(path).type == pafs.FileType.File


def write_atomic(uri: str, data: bytes, filesystem: pafs.FileSystem | None = None) -> None:
    """Write ``data`` so that a reader sees the whole file or none: a temporary name then a move where the file
    system renames atomically (local, HDFS…), one put on an object store."""
    fs, path = resolve(uri, filesystem)
    parent = posixpath.dirname(path.rstrip("/"))
    if parent:
        fs.create_dir(parent, recursive=True)
    if fs.type_name in _ATOMIC_PUT:
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise


def move(src: str, dst: str, filesystem: pafs.FileSystem | None = None) -> None:
    """Give the file at ``src`` the name ``dst`` (same file system) so that a reader of ``dst`` sees it whole or not
    at all: a rename where the file system renames atomically, a copy then a delete on an object store (a copy
    makes the object visible whole)."""
    fs, src_path = resolve(src, filesystem)
    _, dst_path = resolve(dst, filesystem)
    if fs.type_name in _ATOMIC_PUT:
        fs.copy_file(src_path, dst_path)
        fs.delete_file(src_path)
        return
    fs.move(src_path, dst_path)


def delete(uri: str, filesystem: pafs.FileSystem | None = None) -> None:
    """Remove the file at ``uri``, if there is one."""
    fs, path = resolve(uri, filesystem)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def read_bytes(uri: str, filesystem: pafs.FileSystem | None = None) -> bytes:
    fs, path = resolve(uri, filesystem)
    with fs.open_input_stream(path) as src:
        return src.readall()
