"""The Ray edge of `raysft lang`: one Ray job per language, as many at once as the cluster's resources allow.

Each job trains one language SFT in its own process (:mod:`raysft.train.lang`) and hands the finished delta back
as safetensors bytes; the driver writes it into the store. The store therefore only has to be reachable from the
driver, and a job that dies leaves nothing half-written there.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raysft.cluster.connect import connect
from raysft.config import Config
from raysft.distributed.progress import BoardReporter, get_board, push
from raysft.errors import RaysftError

BOARD_NAME = "raysft-lang-progress"  # not the sweep's board: a `raysft lang` beside a running sweep keeps its own
PROGRESS_EVERY_S = 30.0  # a progress line at least this often while jobs run (RAYSFT_PROGRESS_S overrides)


def train_one_language(
    cfg_json: str, lang: str, method: str | None, device: str | None = None, board: Any = None
) -> tuple[bytes, dict]:
    """Inside a Ray worker: train one language SFT; returns (the delta file's bytes, its metrics). ``device`` None:
    CUDA when the job was given a GPU (``lang.gpus_per_job > 0``: Ray sets CUDA_VISIBLE_DEVICES), else the CPU.
    ``board``: a progress board actor the job tells its phase and step (keyed by language)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from raysft.train.lang import prepare_lang, train_lang_sft
    from raysft.train.recipe import peak_memory_bytes
    from raysft.train.spill import HEAP_SLACK, keep_heap_top

    keep_heap_top(HEAP_SLACK)  # a Ray worker of raysft's own job: its allocator settings are ours to choose
    started = time.time()
    push(board, lang, phase="loading")
    run = prepare_lang(Config.model_validate_json(cfg_json), lang, method, device=device)
    delta, metrics = train_lang_sft(run, BoardReporter(board, lang, every_s=5.0))
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


def connect_for_languages(cfg: Config, address: str | None = None, verbose: bool = False) -> None:
    """Connect to Ray (a no-op once connected) and refuse, in one line, language jobs that no node can hold."""
    import ray

    from raysft.cluster.resources import autoscaling_node_types, check_lang_resources

    connect(address, verbose)
    check_lang_resources(cfg, [n for n in ray.nodes() if n.get("Alive")] + autoscaling_node_types())


def train_languages(
    cfg: Config,
    langs: list[str],
    paths: dict[str, Path],
    *,
    method: str | None = None,
    address: str | None = None,
    verbose: bool = False,
    on_done: Callable[[str, dict | None, str | None], None] = lambda lang, metrics, error: None,
    on_progress: Callable[[str], None] = lambda line: None,
    device: str | None = None,
) -> dict[str, dict | str]:
    """Run one Ray job per language; each finished SFT is written to ``paths[lang]`` at once. Returns, per language,
    its metrics or the one-line reason it failed (a failure does not stop the other languages). While jobs run,
    ``on_progress`` gets a line (each running language's phase, step and loss) at least every 30 s."""
    import ray

    connect_for_languages(cfg, address, verbose)
    job = ray.remote(train_one_language).options(
        num_cpus=cfg.lang.cpus_per_job, num_gpus=cfg.lang.gpus_per_job, max_retries=1, retry_exceptions=False,
    )
    cfg_json = cfg.model_dump_json()
    board = get_board(BOARD_NAME)
    every_s = float(os.environ.get("RAYSFT_PROGRESS_S", PROGRESS_EVERY_S))
    started = time.monotonic()
    pending = {job.remote(cfg_json, lang, method, device, board): lang for lang in langs}
    results: dict[str, dict | str] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=every_s)
            if not done:
                try:
                    states = ray.get(board.read.remote(), timeout=10)[0]
                except Exception:  # a board that does not answer costs a progress line, never the jobs
                    states = {}
                on_progress(progress_line(states, sorted(pending.values()), time.monotonic() - started))
                continue
            _collect(done[0], pending, paths, results, on_done)
    finally:
        ray.kill(board)
    return results


def progress_line(states: dict[str, dict[str, Any]], running: list[str], elapsed_s: float) -> str:
    """``[ 2m30s] gn: dense 40/60, loss 3.2104 · quy: waiting``: each running language's phase, step and loss."""
    parts = []
    for lang in running:
        s = states.get(lang, {})
        text = s.get("phase", "waiting")
        if s.get("total"):
            text += f" {s.get('step', 0)}/{s['total']}"
        if isinstance(s.get("loss"), float) and s["loss"] == s["loss"]:
            text += f", loss {s['loss']:.4f}"
        parts.append(f"{lang}: {text}")
    minutes, seconds = divmod(int(elapsed_s), 60)
    return f"[{minutes:3d}m{seconds:02d}s] " + " · ".join(parts)


def _collect(ref, pending: dict, paths: dict[str, Path], results: dict, on_done) -> None:
    """One finished job: its delta written to the store, or its one-line failure (the other jobs go on)."""
    import ray

    lang = pending.pop(ref)
    try:
        data, metrics = ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if isinstance(e.cause, BaseException) else e
        lines = str(cause).strip().splitlines() or [""]
        results[lang] = (lines[0] if isinstance(cause, RaysftError) else f"{type(cause).__name__}: {lines[0]}")[:300]
        on_done(lang, None, results[lang])
        return
    write_bytes_atomically(paths[lang], data)
    results[lang] = metrics
    on_done(lang, metrics, None)
