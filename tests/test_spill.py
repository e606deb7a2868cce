"""θ0 kept on disk (SpilledParams) and the low-memory run: the same delta, bitwise."""

from __future__ import annotations

import os

import pytest
import torch

from raysft.train.spill import SpilledParams
from tests.conftest import needs_data


def test_spilled_params_read_back_bitwise_and_leave_no_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(7, 5, generator=g),
        "half": torch.randn(9, generator=g).to(torch.bfloat16),
        "ids": torch.randint(0, 2**40, (4,), generator=g),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "strided": torch.randn(6, 4, generator=g).T,  # not contiguous
        "nan": torch.tensor([float("nan"), -0.0, float("inf")]),
    }
    spilled = SpilledParams(tensors, dir=str(tmp_path))
    assert list(os.listdir(tmp_path)) == []  # unlinked at once
    assert list(spilled) == list(tensors) and len(spilled) == len(tensors)
    for name, t in tensors.items():
        back = spilled[name]
        assert back.dtype == t.dtype and back.shape == t.shape, name
        assert torch.equal(back.contiguous().view(-1).view(torch.uint8), t.contiguous().view(-1).view(torch.uint8)), name
    back = spilled["w"]
    back += 1  # a fresh tensor each time: the spilled values do not change
    assert torch.equal(spilled["w"], tensors["w"])
    spilled.close()


@pytest.mark.parametrize("method", ["lt-sft", "deft-x"])
def test_low_memory_run_gives_the_same_delta_bitwise(method):
    from raysft.config import load_config
    from raysft.train.recipe import prepare, run_training

    data = needs_data()
    cfg = load_config("smoke", [f"data.dir={data}", "dense.max_steps=4", "sparse.max_steps=4",
                                "data.max_eval_examples=16", "eval.splits=[dev]"])
    # low memory: θ0 spilled, selection on the live θ1, activations recomputed in backward in both phases, the dense
    # phase trains the word embedding by its data's rows; the reference trains the whole matrix
    lean = cfg.model_copy(update={
        "dense": cfg.dense.model_copy(update={"checkpoint_activations": True, "embedding_rows": True}),
        "sparse": cfg.sparse.model_copy(update={"checkpoint_activations": True}),
    })
    cfg = cfg.model_copy(update={"dense": cfg.dense.model_copy(update={"embedding_rows": False})})
    out = {}
    for low, c in ((False, cfg), (True, lean)):
        run = prepare(c, method)
        out[low] = run_training(run, low_memory=low)
    (ref, ref_metrics), (low, low_metrics) = out[False], out[True]
    assert ref.diffs.keys() == low.diffs.keys() and ref.abs.keys() == low.abs.keys()
    for name, (idx, val) in ref.diffs.items():
        assert torch.equal(idx, low.diffs[name][0]) and torch.equal(val, low.diffs[name][1]), name
    for name, t in ref.abs.items():
        assert torch.equal(t, low.abs[name]), name
    assert ref_metrics["dev"] == low_metrics["dev"] and ref_metrics["losses"] == low_metrics["losses"]
    assert ref_metrics["selection"] == low_metrics["selection"]


def test_the_sparse_phase_does_not_depend_on_the_generator_state_the_first_phase_left(monkeypatch):
    """A sweep trial that reuses a cached θ1 never runs the dense phase: its sparse phase must draw the same dropout
    masks as the trial that computed θ1 (they once differed: dev 0.5947 vs 0.5981 for one config and seed)."""
    import importlib

    import raysft.train.recipe as recipe
    from raysft.config import load_config

    data = needs_data()
    cfg = load_config("smoke", [f"data.dir={data}", "dense.max_steps=3", "sparse.max_steps=3",
                                "data.max_eval_examples=8", "eval.splits=[dev]"])
    ref, _ = recipe.run_training(recipe.prepare(cfg, "lt-sft"))
    # the module whose train_dense the recipe's phases call (raysft.train.phases since the phases left recipe.py)
    owner = importlib.import_module("raysft.train.phases" if not hasattr(recipe, "train_dense") else recipe.__name__)
    dense = owner.train_dense

    def dense_then_other_draws(*args, **kwargs):
        out = dense(*args, **kwargs)
        torch.rand(1000)  # another history of the global generator before the sparse phase
        return out

    monkeypatch.setattr(owner, "train_dense", dense_then_other_draws)
    other, _ = recipe.run_training(recipe.prepare(cfg, "lt-sft"))
    for name, (idx, val) in ref.diffs.items():
        assert torch.equal(idx, other.diffs[name][0]) and torch.equal(val, other.diffs[name][1]), name


def test_the_heap_trimmer_trims_only_when_a_step_leaves_more_than_its_slack(monkeypatch):
    from raysft.train import spill

    rss = iter([100, 150, 400, 120, 130, 500])  # after each step; slack 200 over the clean level
    monkeypatch.setattr(spill.HeapTrimmer, "_rss", staticmethod(lambda: next(rss)))
    trims = []
    monkeypatch.setattr(spill, "trim_heap", lambda: trims.append(1))
    h = spill.HeapTrimmer(slack=200)
    for _ in range(6):
        h.after_step()
    # level 100 (first step); 150 stays; 400 trims; 120 is the clean level again (max: 120); 130 stays; 500 trims
    assert h.trims == 2 and len(trims) == 2 and h.level == 120


class _FakeGlibc:
    """Stands in for spill._glibc(): records malloc_trim and mallopt calls instead of making them."""

    def __init__(self):
        self.calls = []

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1


def test_a_default_heap_trimmer_changes_no_allocator_setting(monkeypatch):
    """Library hygiene: HeapTrimmer() only trims (malloc_trim changes no setting); glibc's process-wide, permanent
    mallopt thresholds are set only when the process owner asks (keep_top=True)."""
    from raysft.train import spill

    fake = _FakeGlibc()
    monkeypatch.setattr(spill, "_glibc", lambda: fake)
    rss = iter([100, 400, 100, 400])
    monkeypatch.setattr(spill.HeapTrimmer, "_rss", staticmethod(lambda: next(rss)))
    h = spill.HeapTrimmer(slack=200)
    assert fake.calls == [] and h.keep_top is False
    h.after_step()
    h.after_step()  # 300 above the level: trims
    assert fake.calls == [("malloc_trim", 0)] and h.trims == 1

    fake.calls.clear()
    owner = spill.HeapTrimmer(slack=200, keep_top=True)
    assert owner.keep_top is True
    assert fake.calls == [("mallopt", spill._M_MMAP_THRESHOLD, spill._GLIBC_MMAP_THRESHOLD_MAX),
                          ("mallopt", spill._M_TRIM_THRESHOLD, 200)]
    owner.after_step()
    owner.after_step()
    assert fake.calls[2:] == [("malloc_trim", 0)]

    monkeypatch.setattr(spill, "_glibc", lambda: None)  # not glibc: nothing to set, and it says so
    assert spill.HeapTrimmer(keep_top=True).keep_top is False


_STEP_FAULTS = """
import resource, sys, torch
from raysft.train.spill import keep_heap_top
if not keep_heap_top(256 * 2**20):
    print("unsupported"); raise SystemExit
def step():  # a step's activations: 10 x 20 MB from the heap (below glibc's 32 MB mmap threshold), then freed
    ts = [torch.ones(5 * 2**20) for _ in range(10)]
    del ts
for _ in range(3):  # the heap settles over a few steps (it grows to hold one step's activations)
    step()
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(faults))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="page faults are counted this way on Linux only")
def test_with_the_heap_top_kept_a_step_reuses_the_pages_the_step_before_it_freed():
    """HeapTrimmer(keep_top=True) keeps the heap's freed top mapped (keep_heap_top): once the heap has settled, a
    step touching 200 MB of fresh activations takes almost no page faults (glibc's own trimming, depending on the
    heap's layout, hands that top back and the next step faults all 51,200 pages in again; bench/sparse_step.py
    --heap glibc-default shows it on a real step). In its own process: mallopt is process-wide and permanent."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _STEP_FAULTS], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()[-1]
    if out == "unsupported":
        pytest.skip("not glibc: mallopt is not there")
    pages = 200 * 2**20 // 4096
    assert int(out) < pages // 4, out  # at most a stray tensor's pages, never the step's
