"""A trial on a two-node Ray cluster (`ray.cluster_utils.Cluster`, all nodes on this machine) that loses a node.

Head with 0 CPUs (the driver and the Ray Train controller live there) and two worker nodes of 2 CPUs; each of the
trial's two workers asks for 2 CPUs, so they land on different nodes. Once the sparse phase has written a checkpoint,
the node of rank 1 is removed (its raylet and worker processes killed) and a fresh node added; the worker group is
restarted there and the trial finishes from its last sparse checkpoint.

Only the processes this module starts are stopped (never `ray stop`). Nodes are added and removed from the main
thread; the trial runs in a background thread.
"""

import json
import math
import os
import threading
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

import pytest

from raysft.config import load_config
from tests.conftest import needs_data

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

SPARSE_STEPS = 80  # long enough that the removal lands mid-phase, even on a busy CPU
CHECKPOINT_EVERY = 2
CPUS_PER_NODE = 2
TRIAL_TIMEOUT_S = 480  # the whole trial, removal and restart included
CHECKPOINT_TIMEOUT_S = 300  # until the sparse phase's first checkpoint appears


def smoke_cfg():
    data = needs_data()
    return load_config("smoke", [
        f"data.dir={data}", "data.target_langs=[jav]", "data.max_eval_examples=8", "eval.splits=[dev]",
        "dense.max_steps=4", "sparse.epochs=100", f"sparse.max_steps={SPARSE_STEPS}",
    ])


@pytest.fixture(scope="module")
def cluster():
    needs_data()
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    with pytest.MonkeyPatch.context() as mp:
        # Cluster writes (and on shutdown deletes) /tmp/ray/ray_current_cluster, which a plain `ray.init()` elsewhere
        # on this machine would follow: this cluster is ours alone.
        mp.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
        mp.setattr(ray._common.utils, "reset_ray_address", lambda *a, **k: None)
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        try:
            c.workers = [c.add_node(num_cpus=CPUS_PER_NODE) for _ in range(2)]
            c.wait_for_nodes()
            ray.init(address=c.address, log_to_driver=False)
            yield c
        finally:
            ray.shutdown()
            c.shutdown()


def _sparse_checkpoint(run_dir):
    """(step, node ids per rank) of the newest complete sparse checkpoint under run_dir, or None."""
    for d in sorted(run_dir.glob("sparse-*"), reverse=True):
        try:
            meta = json.loads((d / "sparse_state.json").read_text())
        except (OSError, ValueError):  # not (fully) written yet, or already rotated away
            continue
        return meta["step"], meta["info"]["distributed"]["node_ids"]
    return None


def test_node_removed_mid_sparse_phase(cluster, tmp_path):
    from raysft.distributed.train_workers import fit_trial

    storage, name = tmp_path / "ray", "lose-a-node"
    run_dir = storage / name
    outcome: dict = {}

    def trial():
        try:
            outcome["result"] = fit_trial(
                smoke_cfg(), "lt-sft", num_workers=2, cpus_per_worker=CPUS_PER_NODE, storage_path=storage, name=name,
                max_failures=2, controller_failure_limit=1, checkpoint_every=CHECKPOINT_EVERY, out_dir=tmp_path / "out",
                extra={"verify_sync": True},  # the final weight hashes are gathered only when asked
            )
        except BaseException as e:  # handed to the main thread
            outcome["error"] = e

    start = time.monotonic()
    thread = threading.Thread(target=trial, name="fit_trial", daemon=True)
    thread.start()

    # Wait for the sparse phase's first checkpoint (it names the nodes the ranks run on).
    seen = None
    while seen is None:
        assert thread.is_alive() or "error" in outcome, "the trial finished before its sparse phase was checkpointed"
        assert "error" not in outcome, f"the trial failed before the node removal: {outcome['error']!r}"
        assert time.monotonic() - start < CHECKPOINT_TIMEOUT_S, (
            f"no sparse checkpoint under {run_dir} after {CHECKPOINT_TIMEOUT_S} s: the worker group did not start?"
        )
        seen = _sparse_checkpoint(run_dir)
        time.sleep(0.2)
    step, nodes = seen
    worker_ids = {n.node_id: n for n in cluster.workers}
    assert len(set(nodes)) == 2 and set(nodes) <= set(worker_ids), (
        f"the two workers should run on the two worker nodes {sorted(worker_ids)}, ran on {nodes}"
    )
    # Give the controller a poll or two (0.5 s each) to register the checkpoint before a worker dies.
    time.sleep(2.0)
    assert thread.is_alive(), f"the trial ended before a node could be removed: raise SPARSE_STEPS ({SPARSE_STEPS})"
    seen_at = _sparse_checkpoint(run_dir)
    removed = worker_ids[nodes[1]]
    cluster.remove_node(removed)
    cluster.workers.remove(removed)
    removed_at = time.monotonic() - start
    cluster.workers.append(cluster.add_node(num_cpus=CPUS_PER_NODE))  # room for the restarted worker group

    thread.join(max(1.0, TRIAL_TIMEOUT_S - (time.monotonic() - start)))
    assert not thread.is_alive(), (
        f"the trial did not finish within {TRIAL_TIMEOUT_S} s of starting (node removed at {removed_at:.0f} s, "
        f"last checkpoint step {seen_at}): see the Ray Train logs under {storage}"
    )
    if "error" in outcome:
        raise AssertionError(f"the trial failed after the node removal: {outcome['error']!r}") from outcome["error"]
    path, metrics = outcome["result"]
    d = metrics["distributed"]

    # The node was lost mid sparse phase and the trial went on from a sparse checkpoint, not from the start.
    assert 0 < d["resumed_from_step"] < SPARSE_STEPS, d["resumed_from_step"]
    assert d["resumed_from_step"] % CHECKPOINT_EVERY == 0
    assert len(metrics["losses"]["sparse"]) == SPARSE_STEPS
    first, last = d["node_ids_per_attempt"][0], d["node_ids_per_attempt"][-1]
    assert len(d["node_ids_per_attempt"]) >= 2 and removed.node_id in first, d["node_ids_per_attempt"]
    assert len(set(last)) == 2 and removed.node_id not in last, last
    assert d["node_ids"] == last
    assert len(set(d["worker_param_hashes"])) == 1, "the workers ended with different weights"

    # A full result: per-language dev scores and the delta file.
    assert metrics["target_langs"] == ["jav"]
    assert "jav" in metrics["dev"] and metrics["dev"]
    for lang, scores in metrics["dev"].items():
        assert scores and all(not math.isnan(v) for v in scores.values()), (lang, scores)
    assert not math.isnan(metrics["avg"]["dev"])
    assert path.is_file() and path.stat().st_size > 0, path
    print(f"multinode: first checkpoint at step {step}, node removed at {removed_at:.0f} s, resumed from step "
          f"{d['resumed_from_step']}, finished in {time.monotonic() - start:.0f} s")
