"""The Ray edge of `raysft lang`: one Ray job per language, as many at once as the cluster's resources allow.

Each job trains one language SFT in its own process (:mod:`raysft.train.lang`) and hands the finished delta back
as safetensors bytes; the driver writes it into the store. The store therefore only has to be reachable from the
driver, and a job that dies leaves nothing half-written there.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from raysft.config import Config
from raysft.errors import RaysftError


def train_one_language(cfg_json: str, lang: str, method: str | None, device: str | None = None) -> tuple[bytes, dict]:
    """Inside a Ray worker: train one language SFT; returns (the delta file's bytes, its metrics). ``device`` None:
    CUDA when the job was given a GPU (``lang.gpus_per_job > 0``: Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    import time

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from raysft.train.lang import prepare_lang, train_lang_sft
    from raysft.train.recipe import peak_memory_bytes

    started = time.time()
    run = prepare_lang(Config.model_validate_json(cfg_json), lang, method, device=device)
    delta, metrics = train_lang_sft(run)
    # The job's real start and end (its MLflow run is written by the driver afterwards) and this process's peak memory.
    metrics.update(started_at=started, ended_at=time.time(), peak_memory_bytes=peak_memory_bytes())
    with tempfile.TemporaryDirectory(prefix="raysft-lang-") as d:
        path = Path(d) / f"{lang}.safetensors"
        delta.save(path)
        return path.read_bytes(), metrics


def write_bytes_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train_languages(
    cfg: Config,
    langs: list[str],
    paths: dict[str, Path],
    *,
    method: str | None = None,
    address: str | None = None,
    verbose: bool = False,
    on_done: Callable[[str, dict | None, str | None], None] = lambda lang, metrics, error: None,
    device: str | None = None,
) -> dict[str, dict | str]:
    """Run one Ray job per language; each finished SFT is written to ``paths[lang]`` at once. Returns, per language,
    its metrics or the one-line reason it failed (a failure does not stop the other languages)."""
    import ray

    from raysft.sweep.tune import connect

    connect(address, verbose)
    job = ray.remote(train_one_language).options(
        num_cpus=cfg.lang.cpus_per_job, num_gpus=cfg.lang.gpus_per_job, max_retries=1, retry_exceptions=False,
    )
    cfg_json = cfg.model_dump_json()
    pending = {job.remote(cfg_json, lang, method, device): lang for lang in langs}
    results: dict[str, dict | str] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        lang = pending.pop(done[0])
        try:
            data, metrics = ray.get(done[0])
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, BaseException) else e
            lines = str(cause).strip().splitlines() or [""]
            results[lang] = (lines[0] if isinstance(cause, RaysftError) else f"{type(cause).__name__}: {lines[0]}")[:300]
            on_done(lang, None, results[lang])
            continue
        write_bytes_atomically(paths[lang], data)
        results[lang] = metrics
        on_done(lang, metrics, None)
    return results
