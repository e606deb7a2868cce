"""One training sequence, every path: for every method, a one-worker Ray Train trial (what every sweep and confirm
trial runs) and ``raysft train``'s in-process run write bitwise-identical deltas, with the phase settings that used
to be honoured on one path only (activation checkpointing, embedding rows, bf16) switched on, and both record that
they ran with them. A setting that one path ignored would change the delta on one side only.

One local Ray for the module (never `ray stop`); the smoke space (tiny model, NusaX slice), a few steps per phase.
"""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "90")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest
import torch

from raysft.config import load_config
from raysft.sft.delta import SparseDelta
from raysft.sft.methods import METHODS
from raysft.train.recipe import prepare, run_training
from tests.conftest import needs_data

pytestmark = pytest.mark.slow

# Settings that used to differ by path: checkpointed activations (the Ray worker ignored them), the dense phase's
# embedding rows (another base per path), bf16 in the second phase (Ada-SFT's gated phase dropped it).
SETTINGS = [
    "dense.max_steps=3", "sparse.max_steps=3", "mask_phase.max_steps=3",
    "dense.checkpoint_activations=true", "sparse.checkpoint_activations=true", "mask_phase.checkpoint_activations=true",
    "dense.embedding_rows=true", "sparse.embedding_rows=true",
    "sparse.precision=bf16", "mask_phase.precision=bf16",
    "data.max_eval_examples=8", "eval.splits=[dev]",
]


def parity_cfg(method: str):
    settings = list(SETTINGS)
    if method.startswith("ada-sft"):  # W ⊙ M is computed outside the layers: no recomputation (a clear error)
        settings.append("mask_phase.checkpoint_activations=false")
        if method == "ada-sft":
            settings.append("sparse.checkpoint_activations=false")
    return load_config("smoke", [f"data.dir={needs_data()}", *settings])


@pytest.fixture(scope="module")
def ray_session():
    needs_data()
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_trials(ray_session, tmp_path_factory):
    """{method: (delta path, metrics)} of one-worker Ray Train trials (``fit_trial``, as every sweep trial), four at
    a time (a trial mostly waits for its worker group to start)."""
    from concurrent.futures import ThreadPoolExecutor

    from raysft.distributed.train_workers import fit_trial

    root = tmp_path_factory.mktemp("parity")

    def trial(method):
        return fit_trial(parity_cfg(method), method, num_workers=1, cpus_per_worker=1, storage_path=root / "ray",
                         name=f"parity-{method}", controller_failure_limit=1, out_dir=root / method)

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(sorted(METHODS), pool.map(trial, sorted(METHODS))))


def assert_bitwise(got: SparseDelta, want: SparseDelta, what: str) -> None:
    assert set(got.diffs) == set(want.diffs), what
    for name, (idx, val) in want.diffs.items():
        gidx, gval = got.diffs[name]
        assert (idx is None and gidx is None) or torch.equal(gidx.long(), idx.long()), f"{what}: {name} indices"
        assert torch.equal(gval, val), f"{what}: {name} values"
    assert set(got.abs) == set(want.abs), what
    for name, t in want.abs.items():
        assert torch.equal(got.abs[name], t), f"{what}: head {name}"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_ray_trial_and_raysft_train_write_the_same_delta(ray_trials, method):
    cfg = parity_cfg(method)
    # Ray gives a worker with 1 CPU one thread; the in-process run uses as many, so no sum is split differently.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = prepare(cfg, method)
        local, local_metrics = run_training(run)
    finally:
        torch.set_num_threads(threads)
    path, ray_metrics = ray_trials[method]
    assert_bitwise(SparseDelta.load(path, run.space), local, method)
    assert ray_metrics["phases"] == local_metrics["phases"]
    ran = local_metrics["phases"]
    assert ran, f"{method} ran no phase"
    for phase, record in ran.items():
        assert record["checkpoint_activations"] is (phase in ("dense", "sparse")), (method, phase)
    if "sparse" in ran:
        assert ran["sparse"]["precision"] == "bf16" and ran["sparse"]["embedding_rows"] is True
    if "gated" in ran:
        assert ran["gated"]["precision"] == "bf16"
    if "dense" in ran:
        assert ran["dense"]["embedding_rows"] is True


def test_gated_passes_refuse_activation_checkpointing_with_one_line():
    from raysft.errors import RaysftError

    cfg = load_config("smoke", [f"data.dir={needs_data()}", "mask_phase.checkpoint_activations=true",
                                "mask_phase.max_steps=1", "sparse.max_steps=1", "data.max_eval_examples=8"])
    with pytest.raises(RaysftError, match="mask_phase.checkpoint_activations: false"):
        run_training(prepare(cfg, "ada-sft-topk"))
