"""Ray Train workers for one trial: two workers vs one process, and a worker lost mid sparse phase.

One local Ray for the module (never `ray stop`); the smoke space (tiny model, NusaX slice), a few steps per phase.
"""

import math
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "90")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # the controller polls workers (and registers
# reported checkpoints) this often

import pytest
import torch
from torch.utils.data import DataLoader

from raysft.config import load_config
from raysft.distributed.train_workers import TimedLoader, fit_trial, timed_loaders
from raysft.train.parallel import ShardedBatchSampler
from raysft.sft.delta import SparseDelta
from raysft.train.loop import cycle
from raysft.train.recipe import prepare, run_training
from tests.conftest import needs_data
from tests.worker_faults import FOLDER_ENV

REPO = Path(__file__).resolve().parent.parent
FAULTS = Path(tempfile.mkdtemp(prefix="raysft-worker-faults-"))

DENSE_STEPS, SPARSE_STEPS = 4, 8
ATOL = 1e-5  # two workers vs one process: same global batches, float sums in another order


def smoke_cfg():
    data = needs_data()
    return load_config("smoke", [
        f"data.dir={data}", f"dense.max_steps={DENSE_STEPS}", f"sparse.max_steps={SPARSE_STEPS}",
        "data.max_eval_examples=16", "eval.splits=[dev]",
    ])


def test_timed_loaders_yield_the_same_batches_and_time_each_whole_pass():
    import time

    loaders = {("jav", "dev"): DataLoader(range(10), batch_size=4), ("jav", "test"): DataLoader(range(3), batch_size=4)}
    totals: dict[str, float] = {}
    timed = timed_loaders(loaders, totals)
    assert isinstance(timed[("jav", "dev")], TimedLoader)
    seen = []
    for batch in timed[("jav", "dev")]:
        time.sleep(0.01)  # the consumer's work between batches (predict's forward pass) counts
        seen.append(batch.tolist())
    assert seen == [b.tolist() for b in loaders[("jav", "dev")]] and set(totals) == {"dev/jav"}
    assert totals["dev/jav"] >= 0.03
    first = totals["dev/jav"]
    assert [b.tolist() for b in timed[("jav", "dev")]] == seen  # a second pass: same batches, time added
    assert totals["dev/jav"] > first and set(totals) == {"dev/jav"}
    assert [b.tolist() for b in timed[("jav", "test")]] == [[0, 1, 2]] and "test/jav" in totals


@pytest.mark.parametrize("n,batch,world", [(240, 16, 2), (37, 8, 3), (5, 4, 3)])
def test_shards_are_the_single_process_batches(n, batch, world):
    """Per step, the ranks' slices concatenate to the single-process recipe's batch; the scales average to 1."""
    ref = cycle(DataLoader(list(range(n)), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(7)))
    samplers = [ShardedBatchSampler(n, batch, r, world, 7) for r in range(world)]
    shards = [cycle(DataLoader(list(range(n)), batch_sampler=s)) for s in samplers]
    for _ in range(3 * len(samplers[0])):
        want = next(ref).tolist()
        parts = [next(s).tolist() for s in shards]
        assert sum((p for p, s in zip(parts, samplers) if s.scale > 0), []) == want
        assert sum(s.scale for s in samplers) == pytest.approx(world)


@pytest.fixture(scope="module")
def ray_session():
    needs_data()
    import ray

    started = not ray.is_initialized()
    if started:
        # A lost worker is injected from the tests (tests/worker_faults.py), armed by a file in FAULTS.
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env={
            "worker_process_setup_hook": "tests.worker_faults.setup",
            "env_vars": {"PYTHONPATH": str(REPO), FOLDER_ENV: str(FAULTS)},
        })
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def two_workers(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    path, metrics = fit_trial(
        smoke_cfg(), "lt-sft", num_workers=2, storage_path=root / "ray", name="two-workers",
        controller_failure_limit=1, out_dir=root / "out",
        # θ1 also written as the sweep's dense-phase cache does (test_a_trial_reusing_theta1_trains_the_same_delta)
        extra={"verify_sync": True, "no_dropout": True, "theta1_path": str(root / "theta1.safetensors"),
               "theta1_mode": "save"},
    )
    return path, metrics


def assert_same_delta(got: SparseDelta, want: SparseDelta) -> None:
    """The same entries and values, bitwise."""
    assert set(got.diffs) == set(want.diffs)
    for name, (idx, val) in want.diffs.items():
        assert torch.equal(got.diffs[name][0], idx) and torch.equal(got.diffs[name][1], val), name
    for name, t in want.abs.items():
        assert torch.equal(got.abs[name], t), name


def test_two_workers_match_one_process(two_workers):
    path, metrics = two_workers
    cfg = smoke_cfg()
    run = prepare(cfg, "lt-sft")
    for m in run.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    single, single_metrics = run_training(run)
    dist_delta = SparseDelta.load(path, run.space)
    d = metrics["distributed"]

    # Every worker held the same weights after every sparse step, and at the end.
    assert d["world_size"] == 2 and d["sync_checks"] == SPARSE_STEPS
    assert len(d["worker_param_hashes"]) == 2 and len(set(d["worker_param_hashes"])) == 1

    # What crossed the wire per sparse step: K values + the head's gradients, as float32; not N.
    head = sum(run.space.param(n).numel() for n in run.space.head)
    assert metrics["k"] == run.k
    assert d["allreduce_bytes_per_sparse_step"] == (run.k + head) * 4
    assert d["allreduce_bytes_per_sparse_step"] < run.space.n * 4 / 10
    # The dense phase syncs every maskable gradient, but of the word embedding only its data's rows (raysft.train.rows)
    emb = run.model.get_input_embeddings().weight.numel()
    assert (run.space.n - emb) * 4 < d["dense_allreduce_bytes_per_step"] < run.space.n * 4

    # Same global batches: the dense phase, the selection and the sparse phase agree with one process.
    assert metrics["losses"]["dense"] == pytest.approx(single_metrics["losses"]["dense"], abs=1e-4)
    assert metrics["losses"]["sparse"] == pytest.approx(single_metrics["losses"]["sparse"], abs=1e-4)
    assert set(dist_delta.diffs) == set(single.diffs)
    for name, (idx, val) in single.diffs.items():
        d_idx, d_val = dist_delta.diffs[name]
        assert torch.equal(idx, d_idx), f"{name}: the two runs selected different entries"
        torch.testing.assert_close(d_val, val, atol=ATOL, rtol=0)
    for name, t in single.abs.items():
        torch.testing.assert_close(dist_delta.abs[name], t, atol=ATOL, rtol=0)

    # The metrics have run_training's schema; every evaluation language was evaluated by some rank.
    assert set(single_metrics) <= set(metrics)
    assert sorted(metrics["dev"]) == sorted(single_metrics["dev"])
    # The dev score's bootstrap interval is computed after the ranks' results merge: one process's, given its scores
    assert metrics["avg_ci"]["dev"]["examples"] == single_metrics["avg_ci"]["dev"]["examples"]
    if metrics["dev"] == single_metrics["dev"]:
        assert metrics["avg_ci"] == single_metrics["avg_ci"]
    assert sum(d["eval_langs_per_rank"], []) and sorted(sum(d["eval_langs_per_rank"], [])) == sorted(run.eval_langs)


def test_lost_worker_resumes_from_sparse_checkpoint(ray_session, two_workers, tmp_path):
    (FAULTS / "arm").write_text("5 1 2.0")  # rank 1 exits after sparse step 5, 2 s after its checkpoint at step 3
    try:
        path, metrics = fit_trial(
            smoke_cfg(), "lt-sft", num_workers=2, storage_path=tmp_path / "ray", name="lose-a-worker",
            max_failures=1, controller_failure_limit=1, checkpoint_every=3,
            extra={"no_dropout": True, "verify_sync": True},  # the final weight hashes are gathered only when asked
        )
    finally:
        (FAULTS / "arm").unlink()
    assert (FAULTS / "done").exists(), "rank 1 never failed"
    d = metrics["distributed"]
    assert d["resumed_from_step"] == 3
    assert len(metrics["losses"]["sparse"]) == SPARSE_STEPS
    assert set(metrics["dev"]) == set(two_workers[1]["dev"]) and not math.isnan(metrics["avg"]["dev"])
    assert len(set(d["worker_param_hashes"])) == 1

    # The restart continued the same run: same data order, optimizer state, head and RNG, so the same delta bitwise.
    assert_same_delta(SparseDelta.load(path), SparseDelta.load(two_workers[0]))

    # The checkpoints hold the K-sized state only, not the model.
    ckpts = sorted((tmp_path / "ray" / "lose-a-worker").glob("sparse-*"))
    assert ckpts, "no sparse checkpoint was written"
    state = ckpts[-1] / "sparse_state.safetensors"
    assert state.stat().st_size < metrics["n"] * 4


def test_a_trial_reusing_theta1_trains_the_same_delta(ray_session, two_workers, tmp_path):
    """A trial that reads θ1 from the dense-phase cache (memory-mapped) selects and trains exactly what the trial that
    computed it did (the selection reading the model's live θ1, not a copy)."""
    path, metrics = fit_trial(
        smoke_cfg(), "lt-sft", num_workers=2, storage_path=tmp_path / "ray", name="reuse-theta1",
        controller_failure_limit=1,
        extra={"no_dropout": True, "theta1_path": str(Path(two_workers[0]).parent.parent / "theta1.safetensors"),
               "theta1_mode": "load"},
    )
    assert metrics["distributed"]["dense_cache"] == "reused" and two_workers[1]["distributed"]["dense_cache"] == "computed"
    assert metrics["timings"]["theta1_read_s"] > 0 and "dense_steps_s" not in metrics["timings"]
    assert_same_delta(SparseDelta.load(path), SparseDelta.load(two_workers[0]))
    assert metrics["dev"] == two_workers[1]["dev"] and metrics["test"] == two_workers[1]["test"]
