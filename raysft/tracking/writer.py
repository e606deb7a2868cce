"""Writing to the tracking store: the buffered :class:`Writer`, one batch of params / metrics / tags, warnings.

Shared by :mod:`raysft.tracking.runs` (a `raysft train` run, a sweep's parent run) and
:mod:`raysft.tracking.callback` (a sweep's child runs), which both import it; it imports neither.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Callable

from raysft.tracking import record
from raysft.tracking.store import client, first_line

# Error codes of a write the store refuses as invalid: retrying cannot help, the write is dropped.
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST", "INVALID_STATE"}


def warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[yellow]tracking:[/] {message}", highlight=False, soft_wrap=True)


class Writer:
    """MLflow writes, in order. A write the store does not answer waits (with every later one) and is retried after
    a backoff (5 s doubling to 60 s); a write the store refuses as invalid is dropped with a warning."""

    def __init__(self, uri: str, warn: Callable[[str], None] = warn):
        self.uri = uri
        self.warn = warn
        self.pending: deque = deque()
        self.retry_at = 0.0
        self.backoff = 5.0
        self.down = False
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = client(self.uri)
        return self._client

    def submit(self, label: str, fn: Callable, *args) -> None:
        self.pending.append((label, fn, args))
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Write what waits; True when nothing is left."""
        if not self.pending:
            return True
        if not force and time.monotonic() < self.retry_at:
            return False
        while self.pending:
            label, fn, args = self.pending[0]
            try:
                fn(self.client, *args)
            except Exception as e:
                if getattr(e, "error_code", None) in PERMANENT:
                    self.warn(f"{label}: refused by {self.uri} ({first_line(e)}); skipped")
                    self.pending.popleft()
                    continue
                if not self.down:
                    self.warn(
                        f"{self.uri} does not answer ({first_line(e)}): keeping results in memory and retrying; "
                        "the sweep goes on"
                    )
                self.down = True
                self.retry_at = time.monotonic() + self.backoff
                self.backoff = min(60.0, self.backoff * 2)
                return False
            self.pending.popleft()
        if self.down:
            self.warn(f"{self.uri} answers again: buffered results written")
        self.down, self.backoff = False, 5.0
        return True

    def drain(self, attempts: int = 4, wait_s: float = 5.0) -> bool:
        for i in range(attempts):
            if self.flush(force=True):
                return True
            if i < attempts - 1:
                time.sleep(wait_s)
        return False


def log_batch(c, run_id: str, params=None, metrics=None, tags=None) -> None:
    """Params (dict), metrics ((key, value, step) list) and tags (dict) of one run, in as many batches as needed."""
    for ms, ps, tg in record.as_entities(params, metrics, tags):
        c.log_batch(run_id, metrics=ms, params=ps, tags=tg)


def local_checkpoint(path: str | None, storage_root: str, scratch: Path) -> Path | None:
    """The folder of a reported Train checkpoint on this machine (copied from remote storage when needed)."""
    if not path:
        return None
    if Path(path).is_dir():
        return Path(path)
    if "://" in storage_root:
        import pyarrow.fs

        fs, _ = pyarrow.fs.FileSystem.from_uri(storage_root)
        dst = scratch / "checkpoint"
        dst.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(path, str(dst), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        return dst
    return None


__all__ = ["PERMANENT", "Writer", "local_checkpoint", "log_batch", "warn"]
