"""Parameter snapshots kept on disk instead of in memory (θ0 during a run).

A run needs θ0 three times (selection's θ1 − θ0, the rewind before the sparse phase, the rewind before evaluation),
each time one tensor after another. :class:`SpilledParams` writes the tensors once to an unlinked temporary file and
reads each one back on access (bitwise: raw bytes), so θ0 costs one tensor of memory at a time instead of a copy
of the whole model; the file's pages live in the page cache, not in the process. Pure torch.

Heap hygiene: :func:`trim_heap` and :class:`HeapTrimmer` only hand free pages back to the OS (glibc ``malloc_trim``)
and change no setting. :func:`keep_heap_top` changes glibc's allocator settings (``mallopt``) for the whole process
and for good: glibc has no getter for the previous values, and setting either threshold turns off its dynamic mmap
threshold, so it cannot be undone. Only code that owns its process calls it, directly or through
``HeapTrimmer(keep_top=True)``: the ``raysft train`` / ``raysft lang`` CLI commands and Ray Train workers; library
callers (a notebook importing raysft, an embedding application) never do, and get glibc's settings untouched.
"""

from __future__ import annotations

import ctypes
import functools
import os
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor


def _byte_view(t: Tensor) -> memoryview:
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


class SpilledParams(Mapping):
    """A read-only ``name → tensor`` mapping whose tensors live in an unlinked temp file (gone when this object is
    collected or :meth:`close` d). Each ``[name]`` reads a fresh CPU tensor back, bitwise equal to the one saved."""

    def __init__(self, tensors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]], dir: str | None = None):  # noqa: A002
        items = tensors.items() if isinstance(tensors, Mapping) else tensors
        fd, path = tempfile.mkstemp(prefix="raysft-spill-", dir=dir)
        os.unlink(path)  # the file lives as long as the descriptor: nothing is left behind, even after a crash
        self._fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)
        self._index: dict[str, tuple[int, tuple[int, ...], torch.dtype]] = {}
        offset = 0
        try:
            for name, t in items:
                t = t.detach()
                if t.device.type != "cpu" or not t.is_contiguous():  # host: spilled from host memory
                    t = t.to("cpu").contiguous()  # host: spilled from host memory
                view = _byte_view(t)
                written = 0
                while written < len(view):
                    written += os.pwrite(fd, view[written:], offset + written)
                self._index[name] = (offset, tuple(t.shape), t.dtype)
                offset += len(view)
        except BaseException:
            self.close()
            raise
        self.nbytes = offset

    def __getitem__(self, name: str) -> Tensor:
        offset, shape, dtype = self._index[name]
        out = torch.empty(shape, dtype=dtype, device="cpu")  # host: read back into host memory
        view = _byte_view(out)
        got = 0
        while got < len(view):
            n = os.preadv(self._fd, [view[got:]], offset + got)
            if n == 0:
                raise OSError(f"spilled tensor {name!r} is truncated on disk")
            got += n
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def close(self) -> None:
        self._finalizer()



@functools.cache
def _glibc():
    """The C library when it is glibc (``malloc_trim`` and ``mallopt`` are glibc's), else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def trim_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere). glibc keeps the
    memory a phase freed (activations, optimizer state) resident; trimming between phases lets the next phase start
    from what is really in use."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20  # what glibc's dynamic threshold grows to on 64-bit
HEAP_SLACK = 256 * 2**20  # what a training loop's heap may hold above its level before it is trimmed


def keep_heap_top(trim_threshold: int) -> bool:
    """Let glibc keep up to ``trim_threshold`` bytes of free memory at the top of its heap instead of handing it
    back to the OS at every ``free`` (glibc's own threshold follows the largest mapped chunk freed). A training
    step frees its activations at the top of the heap; handed back, the next step page-faults every one of those
    pages in again (each a fresh zeroed page), a measurable share of a sparse step on a small CPU
    (bench/sparse_step.py --heap kept vs --heap glibc-default measures it). Setting the trim threshold also freezes
    glibc's mmap threshold, so it is set to glibc's own maximum (32 MB), where a process that has loaded a model
    already has it. Returns whether it was set (glibc only). Values are untouched: this only changes when memory
    goes back to the OS; :class:`HeapTrimmer` still trims when the heap grows past its slack.

    Process-wide and permanent (see the module's docstring): call it only from code that owns its process (the
    ``raysft train`` / ``raysft lang`` CLI commands, Ray Train workers), never from library code."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD_MAX)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))


class HeapTrimmer:
    """Keeps a training loop's resident memory near what it uses. Steps allocate their activations anew, at sizes
    that follow each batch's length; glibc keeps what they freed inside its heap (it maps back only allocations
    above a threshold that grows to 32 MB), so the holes pile up: between two steps of sa-cpu's dense phase the
    process can stay far above what is in use (bench/memory.py measures a run's peak resident memory).
    The level is what one step leaves resident from a clean heap (its state and the heap its own activations grew):
    the largest resident size after the first step and after each step that follows a trim. When a step leaves
    more than ``slack`` bytes above it, the heap's free pages go back to the OS (:func:`trim_heap`, plus the page
    faults of re-touching them): a few trims per phase, each bounding the pile. Values are untouched.

    ``keep_top=True`` also keeps up to ``slack`` bytes freed at the heap's top mapped between trims
    (:func:`keep_heap_top`), so a step reuses its predecessor's pages instead of faulting them in again. That changes
    glibc's settings for the whole process, for good: pass it only from code that owns its process (the
    ``raysft train`` / ``raysft lang`` CLI commands, Ray Train workers), never from library callers. By default
    (``keep_top=False``) the trimmer changes no allocator setting."""

    def __init__(self, slack: int = HEAP_SLACK, keep_top: bool = False):
        self.slack = slack
        self.keep_top = keep_top and keep_heap_top(slack)  # whether glibc's settings were changed (glibc only)
        self.trims = 0
        self.level = 0
        self._clean = True  # the next step starts from a clean heap (the first one, or one after a trim)

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None  # not Linux: nothing to watch

    def after_step(self) -> None:
        rss = self._rss()
        if rss is None:
            return
        if self._clean:
            self.level, self._clean = max(self.level, rss), False
        elif rss - self.level > self.slack:
            trim_heap()
            self.trims += 1
            self._clean = True
