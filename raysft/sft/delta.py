"""SparseDelta: a sparse fine-tuning as data (design §5): apply, revert, compose, save, load, import.

Per maskable parameter (base-relative name, see :mod:`raysft.sft.groups`) a delta holds sorted unique row-major flat
indices and the values to add there; head parameters (full names) are held as absolute values ("abs") and copied.
``idx is None`` marks a dense diff over every entry of the parameter (method ``full``); on disk that is ``<param>/val``
with no ``<param>/idx``, an extension of the design's format.

File: safetensors with string metadata ``format`` plus the delta's ``meta``; ``meta["base_params"]`` (JSON list of
the base's maskable ``[name, shape, dtype]`` in model order) lets :meth:`SparseDelta.load` name the first tensor that
differs when the fingerprint does not match. Tensor keys ``<param>/val`` (the values, fp32 unless the delta was cast),
``<param>/abs`` (head), and the indices:

- ``raysft.sft/2`` (written by default): per parameter, the smaller of two exact encodings of its sorted indices:
  ``<param>/gap``: gap-encoded, g_0 = i_0 and g_j = i_j − i_{j−1} − 1 ≥ 0, in the smallest of uint8, uint16, uint32
  that gives the smallest file; a gap ≥ the type's maximum is stored as that maximum (the escape) and its true value
  goes, in order, into ``<param>/esc`` (int64). Or ``<param>/bits``: a bitmap of the parameter's entries (uint8,
  ``numpy.packbits`` little-endian bit order), when more than about one entry in eight is selected.
- ``raysft.sft/1`` (still read; written with ``save(..., version=1)``): ``<param>/idx``, int32 when every index is
  < 2**31, else int64.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from raysft.errors import RaysftError

FORMAT_V1 = "raysft.sft/1"
FORMAT_V2 = "raysft.sft/2"
FORMAT = FORMAT_V2  # what save() writes by default
FORMATS = (FORMAT_V1, FORMAT_V2)
_INT32_LIMIT = 2**31
_SUFFIXES = ("idx", "val", "abs", "gap", "esc", "bits")
_GAP_TYPES = ((np.uint8, torch.uint8), (np.uint16, torch.uint16), (np.uint32, torch.uint32))


def encode_indices(idx: Tensor, numel: int | None = None) -> dict[str, Tensor]:
    """Sorted unique non-negative flat indices → the smallest exact ``raysft.sft/2`` encoding: ``{"gap": …}``
    (+ ``"esc"`` when a gap needs it) or, given ``numel``, ``{"bits": …}`` when a bitmap is smaller."""
    i = idx.detach().cpu().to(torch.int64).numpy()  # host: encoded with numpy for the file
    n = i.size
    if n == 0:
        return {"gap": torch.zeros(0, dtype=torch.uint8, device="cpu")}  # host: file contents
    gaps = np.empty(n, dtype=np.int64)
    gaps[0] = i[0]
    np.subtract(i[1:], i[:-1], out=gaps[1:])
    gaps[1:] -= 1
    if gaps.min() < 0:
        raise ValueError("indices must be sorted, unique and non-negative to be gap-encoded")
    best: tuple[int, dict] | None = None
    big = gaps.max()
    for np_t, torch_t in _GAP_TYPES:
        esc_code = np.iinfo(np_t).max
        n_esc = int(np.count_nonzero(gaps >= esc_code)) if big >= esc_code else 0
        cost = n * np.dtype(np_t).itemsize + 8 * n_esc
        if best is None or cost < best[0]:
            best = (cost, {"np_t": np_t, "torch_t": torch_t, "esc_code": esc_code, "n_esc": n_esc})
        if n_esc == 0:
            break  # a wider type only costs more
    cost, choice = best
    if numel is not None and (numel + 7) // 8 < cost:
        bitmap = np.zeros(numel, dtype=np.bool_)
        bitmap[i] = True
        return {"bits": torch.from_numpy(np.packbits(bitmap, bitorder="little"))}
    esc_code = choice["esc_code"]
    out: dict[str, Tensor] = {}
    if choice["n_esc"]:
        big_at = gaps >= esc_code
        out["esc"] = torch.from_numpy(gaps[big_at].copy())
        gaps[big_at] = esc_code
    out["gap"] = torch.from_numpy(gaps.astype(choice["np_t"]))
    return out


def encoded_nbytes(enc: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in enc.values())


def decode_indices(enc: dict[str, Tensor], path="delta", name: str = "?") -> Tensor:
    """The int64 indices an :func:`encode_indices` result holds; a damaged encoding raises RaysftError naming the
    file and the parameter."""
    damaged = "the file is damaged: export the delta again"
    where = f"{path}: {name}"
    if "bits" in enc:
        bits = enc["bits"]
        if bits.dtype != torch.uint8 or bits.dim() != 1:
            raise RaysftError(f"{where}/bits is {bits.dtype} with {bits.dim()} dims, expected 1-D uint8; {damaged}")
        return torch.from_numpy(np.flatnonzero(np.unpackbits(bits.numpy(), bitorder="little")))
    gap = enc["gap"]
    if gap.dtype not in (torch.uint8, torch.uint16, torch.uint32) or gap.dim() != 1:
        raise RaysftError(f"{where}/gap is {gap.dtype} with {gap.dim()} dims, expected 1-D uint8/16/32; {damaged}")
    g = gap.numpy()
    d = g.astype(np.int64)
    esc = enc.get("esc")
    at = np.flatnonzero(g == np.iinfo(g.dtype).max)
    n_esc = 0 if esc is None else esc.numel()
    if at.size != n_esc or (esc is not None and (esc.dtype != torch.int64 or esc.dim() != 1)):
        raise RaysftError(
            f"{where}/gap has {at.size} escaped gaps but {name}/esc holds {n_esc} int64 values; {damaged}"
        )
    if n_esc:
        e = esc.numpy()
        if e.min() < 0 or e.max() >= 2**62:
            raise RaysftError(f"{where}/esc holds a gap outside [0, 2**62); {damaged}")
        d[at] = e
    d += 1
    out = np.cumsum(d)
    out -= 1
    return torch.from_numpy(out)


def _base_params(space) -> str:
    return json.dumps([[p.name, list(p.shape), str(p.dtype).replace("torch.", "")] for p in space.base])


def base_metadata(space) -> dict[str, str]:
    """What a delta records about its base model so that loading can refuse another one by name."""
    return {"base_fingerprint": space.fingerprint(), "base_params": _base_params(space)}


def _shape(s) -> str:
    return str(tuple(int(x) for x in s))


def _strictly_increasing(idx: Tensor) -> bool:
    return idx.numel() < 2 or bool((idx[1:] > idx[:-1]).all())


class AppliedDelta:
    """The handle :meth:`SparseDelta.apply` returns: it holds the exact values the apply overwrote.

    ``revert()`` writes them back bitwise (not by subtraction). Revert stacked applies in reverse order (last applied,
    first reverted), as nested ``with`` blocks do.
    """

    def __init__(self, saved: list[tuple[Tensor, Tensor | None, Tensor]]):
        self._saved = saved  # (parameter, device index or None for the whole tensor, original values)
        self.reverted = False

    def revert(self) -> None:
        if self.reverted:
            raise RuntimeError("this delta application was already reverted; revert each apply() exactly once")
        with torch.no_grad():
            for param, idx, orig in reversed(self._saved):
                flat = param.detach().view(-1)
                if idx is None:
                    flat.copy_(orig)
                else:
                    flat.index_copy_(0, idx, orig)
        self._saved = []
        self.reverted = True

    @staticmethod
    def stack(handles: list[AppliedDelta]) -> AppliedDelta:
        """One handle for several applies made in this order: its ``revert()`` undoes them all, the last first."""
        if any(h.reverted for h in handles):
            raise RuntimeError("a delta application in the stack was already reverted; stack only applied deltas")
        return AppliedDelta([entry for h in handles for entry in h._saved])

    def __enter__(self) -> AppliedDelta:
        return self

    def __exit__(self, *exc) -> None:
        if not self.reverted:
            self.revert()


class SparseDelta:
    def __init__(
        self,
        diffs: dict[str, tuple[Tensor | None, Tensor]] | None = None,
        abs: dict[str, Tensor] | None = None,  # noqa: A002 - the format's name for absolute head values
        meta: dict[str, str] | None = None,
    ):
        self.diffs: dict[str, tuple[Tensor | None, Tensor]] = dict(diffs or {})
        self.abs: dict[str, Tensor] = dict(abs or {})
        self.meta: dict[str, str] = {k: str(v) for k, v in (meta or {}).items()}

    # ------------------------------------------------------------------ build
    @classmethod
    def from_params(
        cls,
        space,
        theta0: dict[str, Tensor],
        mask: dict[str, Tensor | None] | None,
        *,
        with_head: bool = True,
        dtype: torch.dtype = torch.float32,
        meta: dict[str, str] | None = None,
    ) -> SparseDelta:
        """The delta from θ0 to the space's current parameters at the masked entries.

        ``mask`` maps base-relative names to flat row-major indices (or a bool mask); ``mask=None`` or an entry
        ``None`` gives a dense diff of that parameter; parameters with no entry or no index are left out.
        The differences are taken on the parameters' device; the delta itself is kept in host memory (host copies:
        a delta is what gets saved, composed and shipped between processes, and apply moves it to any device).
        """
        names = [p.name for p in space.maskable]
        if mask is not None:
            known = set(names)
            unknown = [n for n in mask if n not in known]
            if unknown:
                raise ValueError(f"mask names parameters that are not maskable here: {unknown[:5]}")
        diffs: dict[str, tuple[Tensor | None, Tensor]] = {}
        with torch.no_grad():
            for name in names:
                if mask is not None and name not in mask:
                    continue
                cur = space.param(name).detach().reshape(-1)
                t0 = theta0[name].detach().reshape(-1)
                if t0.numel() != cur.numel():
                    raise ValueError(f"theta0[{name!r}] has {t0.numel()} entries, the parameter {cur.numel()}")
                idx = None if mask is None else mask[name]
                if idx is None:
                    val = cur.float() - t0.to(cur.device).float()
                    diffs[name] = (None, val.to(dtype).cpu())  # host: see the docstring
                    continue
                idx = idx.detach().reshape(-1)
                if idx.dtype == torch.bool:
                    idx = idx.nonzero().squeeze(1)
                idx = idx.to(device="cpu", dtype=torch.int64)  # host: see the docstring
                if idx.numel() == 0:
                    continue
                if not _strictly_increasing(idx):
                    idx = torch.unique(idx)
                if int(idx[0]) < 0 or int(idx[-1]) >= cur.numel():
                    raise ValueError(f"mask[{name!r}] has indices outside [0, {cur.numel()})")
                val = cur[idx.to(cur.device)].float() - t0[idx.to(t0.device)].to(cur.device).float()
                diffs[name] = (idx, val.to(dtype).cpu())  # host: see the docstring
            abs_ = {n: space.param(n).detach().cpu().clone() for n in space.head} if with_head else {}  # host
        out = cls(diffs, abs_, meta)
        out.meta.update(base_metadata(space))
        out.meta["k"] = str(out.nnz())
        return out

    # ------------------------------------------------------------------ sizes
    def nnz(self) -> int:
        """Number of entries the delta adds to (dense diffs count every entry; abs tensors not counted)."""
        return sum(int(val.numel()) for _, val in self.diffs.values())

    def nbytes(self, version: int = 2) -> int:
        """Bytes of tensor data as :meth:`save` writes them in format ``version`` (2: encoded indices; 1: int32
        indices where they fit), abs tensors included. Without the parameter sizes (``meta["base_params"]``) a
        bitmap is not considered, so the figure may exceed the file's."""
        numels = self._numels()
        total = 0
        for name, (idx, val) in self.diffs.items():
            total += val.numel() * val.element_size()
            if idx is not None and idx.numel():
                if version == 1:
                    total += idx.numel() * (4 if int(idx[-1]) < _INT32_LIMIT else 8)
                else:
                    total += encoded_nbytes(encode_indices(idx, numels.get(name)))
        return total + sum(t.numel() * t.element_size() for t in self.abs.values())

    def _numels(self) -> dict[str, int]:
        """Entries per maskable parameter of the base model, from ``meta["base_params"]`` ({} without it)."""
        try:
            return {n: int(np.prod(s, dtype=np.int64)) for n, s, _ in json.loads(self.meta["base_params"])}
        except (KeyError, ValueError, TypeError):
            return {}

    def __repr__(self) -> str:
        kind = self.meta.get("kind", "?")
        return f"SparseDelta(kind={kind}, params={len(self.diffs)}, nnz={self.nnz()}, abs={len(self.abs)})"

    # ------------------------------------------------------------------ apply
    def _check_against(self, space, source: str) -> None:
        """Every name, index and shape fits the space: raises RaysftError before anything is modified."""
        maskable = space.appliable
        for name, (idx, val) in self.diffs.items():
            if name not in maskable:
                raise RaysftError(
                    f"{source}: tensor {name!r} names no maskable parameter of this model; "
                    "apply the delta to the model it was trained on"
                )
            numel = space.param(name).numel()
            if idx is None:
                if val.numel() != numel:
                    raise RaysftError(
                        f"{source}: dense diff {name!r} has {val.numel()} values but the parameter has {numel} "
                        "entries; apply the delta to the model it was trained on"
                    )
            elif idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= numel):
                bad = int(idx[-1]) if int(idx[-1]) >= numel else int(idx[0])
                raise RaysftError(
                    f"{source}: {name}/idx holds index {bad} but the parameter has {numel} entries; "
                    "the delta is corrupt or for another model: apply it to the model it was trained on or re-export it"
                )
        head = set(space.head)
        for name, t in self.abs.items():
            if name not in head:
                raise RaysftError(
                    f"{source}: abs tensor {name!r} names no head parameter of this model; "
                    "apply it without its head (with_abs=False) or to a model with that head"
                )
            shape = tuple(space.param(name).shape)
            if tuple(t.shape) != shape:
                raise RaysftError(
                    f"{source}: abs tensor {name!r} has shape {_shape(t.shape)} but the head has {_shape(shape)} "
                    "(a different number of labels?); apply it without its head (with_abs=False) or to a matching model"
                )

    def check(self, space, source="delta", *, check_abs: bool = True) -> None:
        """Refuse, with one line naming the first tensor that differs, a delta made for another base model (by its
        fingerprint) or one whose names, indices or shapes do not fit the space (its abs tensors too, unless
        ``check_abs`` is False: a language SFT's MLM head fits no classification model). Nothing is modified."""
        _check_base(self, space, source)
        (self if check_abs else SparseDelta(self.diffs, None, self.meta))._check_against(space, str(source))

    def apply(self, space, *, with_abs: bool = True) -> AppliedDelta:
        """Add the delta to the space's parameters in place (abs tensors copied); returns the revert handle."""
        source = f"delta ({self.meta.get('kind', 'unnamed')})"
        (self if with_abs else SparseDelta(self.diffs, None, self.meta))._check_against(space, source)
        saved: list[tuple[Tensor, Tensor | None, Tensor]] = []
        with torch.no_grad():
            for name, (idx, val) in self.diffs.items():
                param = space.param(name)
                flat = param.detach().view(-1)
                v = val.to(device=flat.device, dtype=flat.dtype)
                if idx is None:
                    saved.append((param, None, flat.clone()))
                    flat.add_(v)
                else:
                    i = idx.to(flat.device)
                    saved.append((param, i, flat[i]))  # advanced indexing copies
                    flat.index_add_(0, i, v)
            if with_abs:
                for name, t in self.abs.items():
                    param = space.param(name)
                    saved.append((param, None, param.detach().reshape(-1).clone()))
                    param.detach().copy_(t.to(device=param.device, dtype=param.dtype))
        return AppliedDelta(saved)

    # ------------------------------------------------------------------ compose
    def __add__(self, other: SparseDelta) -> SparseDelta:
        if not isinstance(other, SparseDelta):
            return NotImplemented
        return SparseDelta.compose(self, other)

    def __radd__(self, other):  # sum(deltas)
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    @staticmethod
    def compose(*deltas: SparseDelta) -> SparseDelta:
        """Sum of deltas: union of indices (sorted), values added; for a shared abs name the last delta's wins."""
        if not deltas:
            raise ValueError("compose needs at least one delta")
        fps = {d.meta["base_fingerprint"] for d in deltas if d.meta.get("base_fingerprint")}
        if len(fps) > 1:
            raise RaysftError(
                "cannot compose deltas made for different base models (their base_fingerprint metadata differ); "
                "compose only deltas trained on the same base model"
            )
        names: dict[str, None] = {}
        for d in deltas:
            names.update(dict.fromkeys(d.diffs))
        diffs: dict[str, tuple[Tensor | None, Tensor]] = {}
        for name in names:
            parts = [d.diffs[name] for d in deltas if name in d.diffs]
            out_dtype = parts[0][1].dtype
            for _, v in parts[1:]:
                out_dtype = torch.promote_types(out_dtype, v.dtype)
            if len(parts) == 1:
                diffs[name] = parts[0]
                continue
            acc_dtype = torch.promote_types(out_dtype, torch.float32)
            dense = [v for i, v in parts if i is None]
            if dense:
                numel = dense[0].numel()
                if any(v.numel() != numel for v in dense):
                    raise ValueError(f"dense diffs of {name!r} differ in length")
                acc = torch.zeros(numel, dtype=acc_dtype, device=dense[0].device)
                for i, v in parts:
                    if i is None:
                        acc += v.to(acc.device, acc_dtype)
                    else:
                        if i.numel() and int(i[-1]) >= numel:
                            raise ValueError(f"{name}: index {int(i[-1])} outside the dense diff's {numel} entries")
                        acc.index_add_(0, i.to(acc.device, torch.int64), v.to(acc.device, acc_dtype))
                diffs[name] = (None, acc.to(out_dtype))
            else:
                where = parts[0][1].device
                cat_idx = torch.cat([i.to(where, torch.int64) for i, _ in parts])
                cat_val = torch.cat([v.to(where, acc_dtype) for _, v in parts])
                uniq, inverse = torch.unique(cat_idx, sorted=True, return_inverse=True)
                acc = torch.zeros(uniq.numel(), dtype=acc_dtype, device=where).index_add_(0, inverse, cat_val)
                diffs[name] = (uniq, acc.to(out_dtype))
        abs_: dict[str, Tensor] = {}
        for d in deltas:
            abs_.update(d.abs)
        out = SparseDelta(diffs, abs_, deltas[0].meta)
        out.meta["k"] = str(out.nnz())
        out.meta["composed_of"] = ",".join(d.meta.get("kind", "?") for d in deltas)
        return out

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> SparseDelta:
        """A delta with values cast to ``dtype`` (e.g. torch.bfloat16 for smaller files) and/or moved to ``device``.

        Abs tensors keep their dtype (the head is small and copied exactly); indices stay int64.
        """
        diffs = {
            n: (
                None if i is None else i.to(device or i.device),
                v.to(device=device or v.device, dtype=dtype or v.dtype),
            )
            for n, (i, v) in self.diffs.items()
        }
        abs_ = {n: t.to(device or t.device) for n, t in self.abs.items()}
        return SparseDelta(diffs, abs_, self.meta)

    # ------------------------------------------------------------------ files
    def save(self, path, *, metadata: dict[str, str] | None = None, version: int = 2) -> None:
        """Write the delta as safetensors, atomically (a temp file in the same folder, then os.replace).

        ``version=2`` (default) encodes indices (gaps or bitmap, see the module's doc); ``version=1`` writes the
        first format (int32/int64 ``idx``), which older raysft reads. Values are written as the delta holds them:
        cast with ``.to(torch.bfloat16)`` first for half-size values."""
        from safetensors.torch import save_file

        if version not in (1, 2):
            raise ValueError(f"delta file format version {version} does not exist: use 1 or 2")
        numels = self._numels()
        tensors: dict[str, Tensor] = {}
        for name, (idx, val) in self.diffs.items():
            if idx is not None:
                if version == 1:
                    small = idx.numel() == 0 or int(idx[-1]) < _INT32_LIMIT
                    idx_host = idx.detach().to("cpu", torch.int32 if small else torch.int64)  # host: file contents
                    tensors[f"{name}/idx"] = idx_host.contiguous()
                else:
                    for suffix, t in encode_indices(idx.detach().cpu(), numels.get(name)).items():  # host: a file is written from host memory
                        tensors[f"{name}/{suffix}"] = t.contiguous()
            tensors[f"{name}/val"] = val.detach().cpu().contiguous()  # host: a file is written from host memory
        for name, t in self.abs.items():
            tensors[f"{name}/abs"] = t.detach().cpu().contiguous()  # host: a file is written from host memory
        fmt = FORMAT_V2 if version == 2 else FORMAT_V1
        meta = {**self.meta, **{k: str(v) for k, v in (metadata or {}).items()}, "format": fmt}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    @classmethod
    def load(cls, path, space=None, *, check_abs: bool = True) -> SparseDelta:
        """Read a delta saved by :meth:`save`; with ``space``, refuse one made for another base model. A language
        SFT's abs tensors (its MLM head) fit no classification model: load it with ``check_abs=False``."""
        path = Path(path)
        header = _read_safetensors_header(path)
        file_meta = dict(header.get("__metadata__") or {})
        fmt = file_meta.pop("format", None)
        if fmt not in FORMATS:
            raise RaysftError(
                f"{path} is a safetensors file but not a raysft delta (metadata format={fmt!r}, expected one of "
                f"{', '.join(FORMATS)}); "
                "pass a delta saved by raysft, or convert a composable-sft pytorch_diff.bin with import_composable_sft"
            )
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as e:  # safetensors raises its own SafetensorError and OSError subclasses
            raise RaysftError(
                f"{path} could not be read as safetensors ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                "the file is damaged: copy or export the delta again"
            ) from None
        parts: dict[str, dict[str, Tensor]] = {}
        for key, t in tensors.items():
            name, _, suffix = key.rpartition("/")
            if not name or suffix not in _SUFFIXES:
                raise RaysftError(
                    f"{path}: unexpected tensor key {key!r} (expected <param>/val, /abs, /idx, /gap, /esc or /bits); "
                    "the file was not written by raysft: export the delta again"
                )
            parts.setdefault(name, {})[suffix] = t
        diffs: dict[str, tuple[Tensor | None, Tensor]] = {}
        abs_: dict[str, Tensor] = {}
        for name, p in parts.items():
            if "abs" in p:
                abs_[name] = p["abs"]
            index_keys = sorted(set(p) & {"idx", "gap", "esc", "bits"})
            if "val" not in p:
                if index_keys:
                    raise RaysftError(
                        f"{path}: {name}/{index_keys[0]} has no {name}/val; the file is damaged: export the delta again"
                    )
                continue
            val = p["val"].reshape(-1)
            allowed = {"idx"} if fmt == FORMAT_V1 else {"gap", "esc", "bits"}
            if set(index_keys) - allowed or ("gap" in p and "bits" in p) or ("esc" in p and "gap" not in p):
                raise RaysftError(
                    f"{path}: {name} has index tensors {index_keys}, which a {fmt} file does not combine; "
                    "the file is damaged: export the delta again"
                )
            idx = p.get("idx")
            if fmt == FORMAT_V2 and index_keys:
                idx = decode_indices(p, path, name)
                if idx.numel() != val.numel():
                    raise RaysftError(
                        f"{path}: {name} has {idx.numel()} encoded indices but {name}/val {val.numel()} values; "
                        "the file is damaged: export the delta again"
                    )
            elif idx is not None:
                if idx.dtype not in (torch.int32, torch.int64) or idx.dim() != 1:
                    raise RaysftError(
                        f"{path}: {name}/idx is {idx.dtype} with {idx.dim()} dims, expected 1-D int32/int64; "
                        "the file is damaged: export the delta again"
                    )
                idx = idx.to(torch.int64)
                if idx.numel() != val.numel():
                    raise RaysftError(
                        f"{path}: {name}/idx has {idx.numel()} indices but {name}/val {val.numel()} values; "
                        "the file is damaged: export the delta again"
                    )
                if not _strictly_increasing(idx) or (idx.numel() and int(idx[0]) < 0):
                    raise RaysftError(
                        f"{path}: {name}/idx is not sorted, unique and non-negative; "
                        "the file is damaged or was not written by raysft: export the delta again"
                    )
            diffs[name] = (idx, val)
        delta = cls(diffs, abs_, file_meta)
        if space is not None:
            delta.check(space, path, check_abs=check_abs)
        return delta


def delta_format(path) -> str | None:
    """The raysft delta format a safetensors file declares, from its header alone; None for a readable safetensors
    file that is not a raysft delta (a model's weights). A damaged or truncated file raises RaysftError."""
    fmt = (_read_safetensors_header(Path(path)).get("__metadata__") or {}).get("format")
    return fmt if fmt in FORMATS else None


def read_metadata(path) -> dict[str, str]:
    """A delta file's metadata, from its header alone (no tensor is read); refuses a file that is not a raysft delta."""
    path = Path(path)
    meta = dict(_read_safetensors_header(path).get("__metadata__") or {})
    if meta.get("format") not in FORMATS:
        raise RaysftError(f"{path} is not a raysft delta (metadata format={meta.get('format')!r}): remove it or re-export it")
    return meta


def _read_safetensors_header(path: Path) -> dict:
    if not path.is_file():
        raise RaysftError(
            f"delta file {path} does not exist; check the path (a raysft delta is the .safetensors file a run saved)"
        )
    size = path.stat().st_size
    not_st = (
        "; pass a raysft delta (.safetensors), or convert a composable-sft pytorch_diff.bin with import_composable_sft"
    )
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise RaysftError(f"{path} is not a safetensors file ({size} bytes, too short for a header){not_st}")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            if n > 100_000_000:
                raise RaysftError(f"{path} is not a safetensors file (no valid header length){not_st}")
            raise RaysftError(
                f"{path} is truncated (its header needs {n} bytes, the file has {size - 8} after the length); "
                "the save was interrupted or the copy is incomplete: copy or export the delta again"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = 0
        for key, entry in header.items():
            if key != "__metadata__":
                end = max(end, int(entry["data_offsets"][1]))
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError):
        raise RaysftError(f"{path} is not a safetensors file (its header is not valid JSON){not_st}") from None
    if 8 + n + end > size:
        raise RaysftError(
            f"{path} is truncated (it should hold {8 + n + end} bytes, it has {size}); "
            "the save was interrupted or the copy is incomplete: copy or export the delta again"
        )
    return header


def _check_base(delta: SparseDelta, space, path) -> None:
    """Refuse a delta whose base model's maskable tensors differ in name or shape from the space's."""
    fp = delta.meta.get("base_fingerprint")
    if not fp or fp == space.fingerprint():
        return
    base = f"base model {delta.meta['base_model']}" if delta.meta.get("base_model") else "another base model"
    fix = "apply it to the model it was trained on"
    try:
        theirs = [(n, tuple(s)) for n, s, _ in json.loads(delta.meta["base_params"])]
    except (KeyError, ValueError, TypeError):
        raise RaysftError(
            f"delta {path} was made for {base} (fingerprint {fp[:12]}…, this model {space.fingerprint()[:12]}…); "
            f"{fix}"
        ) from None
    their_shapes = dict(theirs)
    ours = [(p.name, tuple(p.shape)) for p in space.base]
    our_shapes = dict(ours)
    for name, shape in ours:
        if name not in their_shapes:
            raise RaysftError(
                f"delta {path} was made for {base}: tensor {name} {_shape(shape)} exists here but not in "
                f"the delta's base model; {fix}"
            )
        if their_shapes[name] != shape:
            raise RaysftError(
                f"delta {path} was made for {base}: tensor {name} has shape {_shape(shape)} here but "
                f"{_shape(their_shapes[name])} in the delta; {fix}"
            )
    for name, shape in theirs:
        if name not in our_shapes:
            raise RaysftError(
                f"delta {path} was made for {base}: tensor {name} {_shape(shape)} of the delta's base model "
                f"does not exist here; {fix}"
            )
    # Same names and shapes: only dtypes differ (e.g. a bf16 copy of the base); apply() casts, so accept it.


# ---------------------------------------------------------------------- composable-sft import
def _numpy_safe_globals() -> list:
    """The numpy globals a composable-sft diff file needs: numpy integer scalars (its first index step is a numpy
    int64) and their dtypes. Object, string, void and datetime dtypes stay refused."""
    from numpy import dtypes

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    # Files written under numpy 1.x name the scalar constructor numpy.core.multiarray.scalar.
    allowed: list = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    for cls_name in (
        "BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType", "UInt16DType",
        "UInt32DType", "UInt64DType", "Float16DType", "Float32DType", "Float64DType", "LongDType", "ULongDType",
        "LongLongDType", "ULongLongDType", "ByteDType", "UByteDType", "ShortDType", "UShortDType", "IntDType",
        "UIntDType",
    ):  # fmt: skip
        cls = getattr(dtypes, cls_name, None)
        if cls is not None:
            allowed.append(cls)
    return allowed


def _safe_torch_load(path: Path):
    not_diff = "only composable-sft diff files (pytorch_diff.bin) are accepted"
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)  # host: a file read
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"GLOBAL (\S+)", msg)
        refused = m or any(s in msg for s in ("Can only build", "unrecognized function", "Unsupported class"))
        if refused:
            what = f"it references {m.group(1)}" if m else _first_line(msg)
            raise RaysftError(
                f"{path} holds objects other than tensors ({what}); refusing to unpickle it: {not_diff}"
            ) from None
        raise RaysftError(f"{path} is not a readable torch.save file ({_first_line(msg)}); {not_diff}") from None
    except Exception as e:  # not a zip / truncated / corrupt
        detail = _first_line(str(e)) or type(e).__name__
        raise RaysftError(f"{path} is not a readable torch.save file ({detail}); {not_diff}") from None


def _first_line(msg: str) -> str:
    """The informative part of a torch.load error, on one line."""
    if "WeightsUnpickler error:" in msg:
        msg = msg.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    msg = " ".join(msg.split())
    return msg.split(". ")[0][:200]


def _steps_tensor(steps, path, name) -> Tensor:
    if isinstance(steps, Tensor):
        s = steps.reshape(-1)
        if s.is_floating_point() or s.is_complex():
            raise RaysftError(f"{path}: index_steps of {name!r} are not integers; the file is damaged: re-export it")
        return s.to(torch.int64)
    if isinstance(steps, (list, tuple)):
        if len(steps) == 0:
            return torch.zeros(0, dtype=torch.int64)  # host: read from a file
        arr = np.asarray(steps)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise RaysftError(
                f"{path}: index_steps of {name!r} are not a list of integers; the file is damaged: re-export it"
            )
        return torch.from_numpy(arr.astype(np.int64))
    raise RaysftError(f"{path}: index_steps of {name!r} is a {type(steps).__name__}; the file is damaged: re-export it")


def _column_major_to_row_major(flat: Tensor, size: tuple[int, ...]) -> Tensor:
    """Flat indices with the first dimension fastest → flat indices with the last dimension fastest."""
    if len(size) <= 1:
        return flat
    col_mult = [1]
    for s in size[:-1]:
        col_mult.append(col_mult[-1] * s)
    row_mult = [1] * len(size)
    for d in range(len(size) - 2, -1, -1):
        row_mult[d] = row_mult[d + 1] * size[d + 1]
    out = torch.zeros_like(flat)
    for d, s in enumerate(size):
        out += torch.div(flat, col_mult[d], rounding_mode="floor").remainder_(s) * row_mult[d]
    return out


def read_composable_sft(path) -> dict:
    """composable-sft's ``pytorch_diff.bin`` as read (``{"diffs": {…}, "abs": {…}}``), before any model is known.
    Loaded with ``weights_only=True`` and an allow-list of numpy integer scalars: anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise RaysftError(f"composable-sft file {path} does not exist; pass the path of its pytorch_diff.bin")
    obj = _safe_torch_load(path)
    diffs_in = obj.get("diffs", obj.get("body")) if isinstance(obj, dict) else None
    if not isinstance(diffs_in, dict):
        raise RaysftError(
            f"{path} is not a composable-sft diff file (no 'diffs' dict at the top); pass its pytorch_diff.bin"
        )
    abs_in = obj.get("abs", obj.get("head")) or {}
    if not isinstance(abs_in, dict):
        raise RaysftError(f"{path}: its 'abs' entry is not a dict of tensors; the file is damaged: re-export it")
    return {"diffs": diffs_in, "abs": abs_in}


def import_composable_sft(path, space, contents: dict | None = None) -> SparseDelta:
    """Convert composable-sft's ``pytorch_diff.bin`` (a torch.save dict, column-major flat indices) to a SparseDelta.

    Diff names are full model names; maskable ones become base-relative. Abs tensors of this model's head are kept;
    abs tensors naming no parameter here (e.g. an MLM head) are dropped and counted in ``meta["dropped_abs"]``.
    ``contents``: the file as :func:`read_composable_sft` read it already (else it is read from ``path``).
    """
    path = Path(path)
    obj = contents if contents is not None else read_composable_sft(path)
    diffs_in, abs_in = obj["diffs"], obj["abs"]
    maskable = {p.name for p in space.maskable}
    head = set(space.head)
    frozen = set(space.frozen)

    def relative(full: str) -> str:
        return space.strip_prefix(full)

    diffs: dict[str, tuple[Tensor | None, Tensor]] = {}
    for full, enc in diffs_in.items():
        name = relative(full)
        if name not in maskable:
            why = "is frozen here (LayerNorm or frozen embeddings)" if full in frozen else (
                "is a head parameter here" if full in head else "is no parameter of this model"
            )
            raise RaysftError(
                f"{path}: the diff for {full!r} {why}; import it into the model it was trained on "
                f"(this model's base prefix is {space.prefix!r})"
            )
        shape = tuple(space.param(name).shape)
        numel = space.param(name).numel()
        if isinstance(enc, Tensor):  # composable-sft stores a dense diff as a plain tensor
            if tuple(enc.shape) != shape:
                raise RaysftError(
                    f"{path}: the diff for {full!r} has shape {_shape(enc.shape)} but the parameter here "
                    f"{_shape(shape)}; import it into the model it was trained on"
                )
            diffs[name] = (None, enc.detach().reshape(-1).clone())
            continue
        if not isinstance(enc, dict) or not {"size", "index_steps", "values"} <= set(enc):
            raise RaysftError(
                f"{path}: the diff for {full!r} lacks size/index_steps/values; pass a composable-sft diff file"
            )
        size = tuple(int(s) for s in enc["size"])
        if size != shape:
            raise RaysftError(
                f"{path}: the diff for {full!r} has size {_shape(size)} but the parameter here {_shape(shape)}; "
                "import it into the model it was trained on"
            )
        steps = _steps_tensor(enc["index_steps"], path, full)
        values = enc["values"]
        if not isinstance(values, Tensor):
            raise RaysftError(f"{path}: the values of {full!r} are not a tensor; the file is damaged: re-export it")
        values = values.detach().reshape(-1)
        if values.numel() != steps.numel():
            raise RaysftError(
                f"{path}: the diff for {full!r} has {steps.numel()} index steps but {values.numel()} values; "
                "the file is damaged: re-export it"
            )
        if steps.numel() == 0:
            continue
        col = torch.cumsum(steps, 0)
        if int(col.min()) < 0 or int(col.max()) >= numel:
            raise RaysftError(
                f"{path}: the diff for {full!r} has indices outside its {numel} entries; "
                "the file is damaged: re-export it"
            )
        row = _column_major_to_row_major(col, size)
        row, order = torch.sort(row)
        if not _strictly_increasing(row):
            raise RaysftError(f"{path}: the diff for {full!r} repeats an index; the file is damaged: re-export it")
        diffs[name] = (row, values[order].clone())
    abs_: dict[str, Tensor] = {}
    dropped = 0
    for full, t in dict(abs_in).items():
        if full in head:
            if not isinstance(t, Tensor) or tuple(t.shape) != tuple(space.param(full).shape):
                raise RaysftError(
                    f"{path}: abs tensor {full!r} has shape {_shape(getattr(t, 'shape', ()))} but the head here "
                    f"{_shape(space.param(full).shape)}; import it into a model with the same labels"
                )
            abs_[full] = t.detach().clone()
        elif relative(full) in maskable:
            raise RaysftError(
                f"{path}: abs tensor {full!r} overwrites a maskable parameter, which a raysft delta cannot express; "
                "import only SFTs whose absolute tensors are head parameters"
            )
        else:
            dropped += 1
    out = SparseDelta(
        diffs,
        abs_,
        {
            "kind": "task" if abs_ else "lang",
            "method": "composable-sft",
            "imported_from": str(path),
            "base_fingerprint": space.fingerprint(),
            "base_params": _base_params(space),
            "dropped_abs": str(dropped),
        },
    )
    out.meta["k"] = str(out.nnz())
    return out
