"""The sweep's storage (--storage, $RAYSFT_STORAGE or runs/tune), and can every node of a cluster share it? (pure: no
Ray)

A sweep's storage holds Tune's experiment state, the Train checkpoints that any node may restore from, and θ1 of
the dense-phase cache: every node must see what any other node wrote. A URI (``s3://``, ``gs://``, …) is shared by
construction; a folder is shared only when it lives on a network file system, or when all nodes are on one machine.
Nodes are told apart by the IP address Ray reports for them (``NodeManagerAddress``), as Ray itself does.
"""

from __future__ import annotations

import os
from pathlib import Path

from raysft.errors import RaysftError

STORAGE_ENV = "RAYSFT_STORAGE"  # set on every node by cluster.yaml; --storage wins
DRIVER_RESOURCE = "raysft_driver"  # advertised by the head node in cluster.yaml: trial drivers run there

# File systems that several machines mount at once (fuse subtypes: the usual object-store and cluster mounts).
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "glusterfs", "ceph", "gpfs", "beegfs", "wekafs", "ocfs2", "gfs2",
    "fuse.s3fs", "fuse.gcsfuse", "fuse.goofys", "fuse.mountpoint-s3", "fuse.juicefs", "fuse.rclone", "fuse.sshfs",
    "fuse.glusterfs", "fuse.blobfuse2", "fuse.alluxio-fuse", "fuse.ceph-fuse",
})


def is_remote_uri(storage: str) -> bool:
    """A URI served by pyarrow.fs from elsewhere (s3://, gs://, abfs://, hdfs://), not a local folder."""
    return "://" in storage and not storage.startswith("file://")


def machines(nodes: list[dict]) -> list[str]:
    """The distinct machines (IP addresses) of the alive nodes of ``ray.nodes()``. A node registered under a loopback
    address (127.0.0.0/8, e.g. started over SSH to 127.0.0.2) reached the head through one, so it is on the head's
    machine (Ray itself registers a head started at 127.0.0.1 under the machine's address)."""
    import ipaddress

    alive = [n for n in nodes if n.get("Alive", True)]
    head = next((n.get("NodeManagerAddress") for n in alive if "node:__internal_head__" in n.get("Resources", {})), None)

    def machine(addr: str) -> str:
        try:
            loopback = ipaddress.ip_address(addr).is_loopback
        except ValueError:
            loopback = False
        return (head or "127.0.0.1") if loopback else addr

    return sorted({machine(n.get("NodeManagerAddress", "?")) for n in alive})


def mount_of(path: str | os.PathLike, mounts_file: str = "/proc/self/mounts") -> tuple[str, str]:
    """(mount point, file system type) holding ``path`` (or its nearest existing parent)."""
    p = Path(path).expanduser()
    while not p.exists() and p != p.parent:
        p = p.parent
    p = p.resolve()
    best = ("/", "")
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:  # not Linux: nothing known
        return best
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        inside = str(p) == mnt or str(p).startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best[0]):
            best = (mnt, parts[2])
    return best


def is_network_fs(fstype: str) -> bool:
    return fstype in NETWORK_FS or fstype.split(".", 1)[0] in NETWORK_FS


def node_local_problem(path: str | os.PathLike, n_machines: int, source: str = "--storage") -> str | None:
    """None when the folder ``path`` can serve a cluster spanning ``n_machines`` machines; else why not, and the fix."""
    if n_machines <= 1:
        return None
    mnt, fstype = mount_of(path)
    if is_network_fs(fstype):
        return None
    return (
        f"storage {path} ({source}) is on a {fstype or 'local'} file system mounted at {mnt} on this machine only, "
        f"but the Ray cluster spans {n_machines} machines: give --storage s3://bucket/path (or set {STORAGE_ENV}), "
        "or a folder on a file system every node mounts (NFS, EFS, Lustre)"
    )


def storage_uri(storage: str | None, n_machines: int = 1) -> str:
    """--storage, else $RAYSFT_STORAGE (cluster.yaml sets it on every node), else runs/tune. A folder that the
    cluster's machines cannot share is refused (:func:`raysft.cluster.storage.node_local_problem`)."""
    source = "--storage"
    if not storage and os.environ.get(STORAGE_ENV, "").strip():
        storage, source = os.environ[STORAGE_ENV].strip(), STORAGE_ENV
    if not storage:
        storage, source = str(Path.cwd() / "runs" / "tune"), "the default"
    if is_remote_uri(storage):
        return storage
    path = Path(storage.removeprefix("file://")).expanduser().resolve()
    problem = node_local_problem(path, n_machines, source)
    if problem:
        raise RaysftError(problem)
    return str(path)
