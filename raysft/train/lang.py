"""One language SFT in one process: masked-language modelling of a language's unlabeled text through any selector.

As composable-sft does it: the MLM decoder is untied from the word embeddings and frozen (so the word embeddings
change only through their role as inputs), the rest of the MLM head trains densely in every phase and is saved as
"abs" (never applied when the language SFT is composed with a task SFT). A base without an MLM head (the e5 model)
gets a fresh head whose decoder is a frozen copy of the word embeddings; that head is first fitted on θ0
(``lang.head_warmup_steps``), so "before" means θ0 with a fitted head and the dense phase does not bend the encoder
toward a random head.

The MLM loss is computed on the masked positions only: the 250k-word output layer runs on ~15 % of the tokens,
not all of them (a full-logits loss costs gigabytes per batch on XLM-R's vocabulary).

Held-out MLM loss (the last 5 % of the lines, masked once with a fixed seed) is measured three times: ``before``
(θ0 with the initial or fitted head), ``head_only`` (θ0 with the final head: what the head alone gained) and
``after`` (θ0 + the language SFT with the final head).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raysft import __version__
from raysft.config import Config
from raysft.errors import RaysftError
from raysft.models import load_for_mlm, load_tokenizer, model_id
from raysft.sft.delta import SparseDelta, base_metadata
from raysft.sft.groups import ParamSpace
from raysft.sft.methods import Method, make_method
from raysft.tasks.base import TaskData, take_first, take_shuffled
from raysft.tasks.mlm import corpus_of, load_text, mlm_collator, tokenize_for_mlm
from raysft.train.device import resolve_device
from raysft.train.loop import Reporter, SilentReporter, model_device, restore, train_head
from raysft.train.parallel import sharded_loader
from raysft.train.phases import SFTJob, snapshot, train_sft


def mlm_head(model: nn.Module) -> nn.Module:
    """The MLM head module (BERT's ``cls``, RoBERTa/XLM-R's ``lm_head``): hidden states → vocabulary logits."""
    for attr in ("cls", "lm_head"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            return head
    raise RaysftError(f"{type(model).__name__} has no MLM head (cls or lm_head): use a BERT/RoBERTa/XLM-R model")


def mlm_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Cross-entropy over the masked positions only (labels != -100)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.base_model(**inputs).last_hidden_state
    picked = labels != -100
    if not bool(picked.any()):  # a short batch where nothing was masked: no signal, but keep the graph
        return hidden.sum() * 0.0
    logits = mlm_head(model)(hidden[picked])
    return F.cross_entropy(logits.float(), labels[picked])


def untie_output_embeddings(model: nn.Module) -> str:
    """Give the decoder its own frozen copy of the word embeddings; returns the decoder weight's full name."""
    decoder = model.get_output_embeddings()
    decoder.weight = nn.Parameter(model.get_input_embeddings().weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    for name, p in model.named_parameters():
        if p is decoder.weight:
            return name
    raise RaysftError("the MLM decoder weight is not a parameter of the model: use a BERT/RoBERTa/XLM-R model")


@torch.no_grad()
def heldout_loss(model: nn.Module, batches: list[dict]) -> float:
    """Mean MLM loss per masked token over fixed (pre-masked) batches."""
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        n = int((batch["labels"] != -100).sum())
        if n:
            total += float(mlm_loss(model, batch)) * n
            count += n
    return total / max(1, count)


def fixed_batches(ds, collate, batch_size: int) -> list[dict]:
    """Batches masked once (the collator is seeded), so every measurement sees the same masked tokens."""
    return [collate([ds[i] for i in range(s, min(s + batch_size, len(ds)))]) for s in range(0, len(ds), batch_size)]


@dataclass
class LangRun:
    cfg: Config
    lang: str
    method: Method
    tokenizer: object
    model: nn.Module
    space: ParamSpace
    k: int
    head_fresh: bool
    train_text: object
    heldout_text: object
    corpus: str
    corpus_lines: int


def prepare_lang(
    cfg: Config, lang: str, method_name: str | None = None, device: str | torch.device | None = None
) -> LangRun:
    """Resolve and check everything (text, model, method, K) before any training. ``device`` None: CUDA when the
    space gives each language job a GPU (``lang.gpus_per_job > 0``) and there is one, else the CPU."""
    lc = cfg.lang
    method_name = method_name or lc.method
    method = make_method(method_name, cfg.method_settings(method_name))
    data = TaskData(data_dir=cfg.data.dir, source=cfg.data.source)
    train, heldout = load_text(lang, data)  # no text, or too little, is refused here with the count
    corpus = corpus_of(lang, data)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    model, head_fresh = load_for_mlm(cfg.model, with_info=True)
    decoder = untie_output_embeddings(model)
    if device is None:
        device = "auto" if cfg.lang.gpus_per_job > 0 else "cpu"  # host: a job Ray gave no GPU
    model.to(resolve_device(device))
    space = ParamSpace(model, freeze_embeddings=cfg.sft.freeze_embeddings, freeze=[decoder], **method.space_options())
    k = lc.resolve_k(cfg.sft, space.n) if method.uses_k else method.fixed_k(space)
    method.validate(space, k)
    return LangRun(
        cfg, lang, method, tokenizer, model, space, k, head_fresh,
        take_shuffled(train, lc.max_train_lines, cfg.seed), take_first(heldout, lc.max_heldout_lines),
        corpus, len(train) + len(heldout),
    )


def lang_delta_meta(run: LangRun, k: int, losses: dict[str, float]) -> dict[str, str]:
    return {
        "kind": "lang", "method": run.method.name, "base_model": model_id(run.cfg.model), **base_metadata(run.space),
        "k": str(k), "task": "mlm", "language": run.lang, "corpus": run.corpus, "corpus_lines": str(run.corpus_lines),
        "train_lines": str(len(run.train_text)), "heldout_lines": str(len(run.heldout_text)),
        **{f"mlm_loss_{name}": f"{v:.6f}" for name, v in losses.items()},
        "created_by": f"raysft {__version__}", "config": run.cfg.model_dump_json(),
    }


def lang_job(run: LangRun, train_ds) -> SFTJob:
    """The language SFT's job for :func:`raysft.train.phases.train_sft`: seeded MLM masking (each loader's
    collator draws its masks from the loader's seed), the masked-positions loss, and no embedding rows (MLM's random
    replacement draws tokens from the whole vocabulary, so every row can appear)."""
    cfg, lc = run.cfg, run.cfg.lang
    return SFTJob(
        model=run.model, space=run.space, method=run.method, k=run.k, dataset=train_ds,
        collate=lambda seed: mlm_collator(run.tokenizer, lc.mlm_probability, seed=seed),
        dense=lc.dense, mask=cfg.mask_phase, sparse=lc.sparse, seed=cfg.seed, rows=None, loss_fn=mlm_loss,
    )


def train_lang_sft(run: LangRun, reporter: Reporter = SilentReporter()) -> tuple[SparseDelta, dict]:
    """Head warm-up (fresh head only) → the training sequence (:func:`raysft.train.phases.train_sft`: first phase →
    select → rewind → sparse phase); returns (delta, metrics)."""
    cfg, lc, space, model = run.cfg, run.cfg.lang, run.space, run.model
    train_ds = tokenize_for_mlm(run.train_text, run.tokenizer, lc.max_seq_len)
    heldout = fixed_batches(
        tokenize_for_mlm(run.heldout_text, run.tokenizer, lc.max_seq_len),
        mlm_collator(run.tokenizer, lc.mlm_probability, seed=cfg.seed + 7), lc.sparse.batch_size,
    )
    job = lang_job(run, train_ds)
    losses: dict[str, list[float]] = {}
    t = time.perf_counter()
    if run.head_fresh and lc.head_warmup_steps:
        loader, _ = sharded_loader(train_ds, job.collate(cfg.seed + 3), lc.sparse.batch_size, cfg.seed + 3)
        losses["head"] = train_head(
            model, space, loader, lc.head_warmup_steps, lc.head_warmup_lr,
            reporter=reporter, loss_fn=mlm_loss, precision=lc.dense.precision,
        )
    head_s = time.perf_counter() - t
    theta0 = snapshot(space)
    loss_before = heldout_loss(model, heldout)

    trained = train_sft(job, theta0, reporter=reporter)
    delta = trained.delta
    losses.update(trained.losses)

    loss_after = heldout_loss(model, heldout)
    restore(space, theta0)  # the final head stays: what did the head alone gain?
    loss_head_only = heldout_loss(model, heldout)
    mlm = {"before": loss_before, "head_only": loss_head_only, "after": loss_after}
    k = trained.selection["k"]
    delta.meta = lang_delta_meta(run, k, mlm)
    metrics = {
        "kind": "lang", "language": run.lang, "method": run.method.name, "k": k, "n": space.n,
        "corpus": run.corpus, "corpus_lines": run.corpus_lines, "train_lines": len(run.train_text),
        "heldout_lines": len(run.heldout_text), "head_fresh": run.head_fresh, "mlm_loss": mlm,
        "timings": {"head_s": head_s, **trained.timings},
        "entries_per_group": trained.selection["entries_per_group"],
        "delta_bytes": delta.nbytes(),
        "losses": {phase: [round(x, 5) for x in v] for phase, v in losses.items()},
        "phases": trained.phases,
    }
    return delta.to(device="cpu"), metrics  # host: the delta is saved by the caller
