"""Device-correct by construction, checked without a GPU: the tensor code of a trial on (fake) CUDA tensors.

Everything a run reads from disk (θ1, DeFT-X's shared SVD factors, deltas, language SFTs, sparse checkpoints) must
reach the run's device; an op that mixes a CUDA tensor with a CPU one fails on a GPU, never on a CPU-only suite. Here
the model's parameters, θ0 and θ1 are fake CUDA tensors (tests/fake_cuda.py: real values, ``device == cuda:0``,
every op checked as CUDA checks it), and the selection of every method (DeFT-X with a basis cached on disk by an
earlier trial, as a rank sweep reuses it), delta apply/revert, the sparse update and a checkpoint restore run under
it, with the same results as on the CPU.

Before ``raysft.train.device.onto`` the worker handed DeFT-X the cached factors as CPU tensors
(``safetensors.torch.load``): ``test_deft_x_reuses_a_cached_basis_on_the_run_device`` then fails with
``DeviceMismatch`` at DeFT-X's ``(delta @ v)`` (and ``test_the_crash_torch_fake_tensors_show`` shows the same op
with torch's own ``FakeTensorMode``).
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError, FakeTensorMode

from raysft.config import PhaseConfig
from raysft.distributed.train_workers import (
    read_checkpoint_folder,
    restore_sparse_state,
    save_sparse_state,
    select_with_shared_cache,
    selection_cache_path,
)
from raysft.sft.delta import SparseDelta
from raysft.sft.groups import ParamSpace
from raysft.sft.methods import METHODS, SelectionContext, make_method
from raysft.sft.sparse import SparseUpdater
from raysft.train.phases import zero_delta_selected
from tests.conftest import tiny_classifier
from tests.fake_cuda import CUDA, DeviceMismatch, FakeCuda, fake_cuda, host, to_fake_cuda
from tests.test_methods_contract import SETTINGS

K = 500


def theta(space: ParamSpace, seed: int) -> tuple[dict, dict, dict]:
    """(θ0, θ1, learned mask scores) on the parameters' device: θ1 = θ0 + a sparse-ish update."""
    g = torch.Generator().manual_seed(seed)
    theta0 = space.snapshot()
    theta1, scores = {}, {}
    for name, t in theta0.items():
        noise = torch.randn(t.shape, generator=g) * (torch.rand(t.shape, generator=g) < 0.3)
        theta1[name] = t + noise.to(t.device)
        scores[name] = torch.randn(t.shape, generator=g).to(t.device)
    return theta0, theta1, scores


def spaces(method_name: str):
    """The same tiny model and method twice: on the CPU, and on fake CUDA (inside :func:`fake_cuda`)."""
    method = make_method(method_name, SETTINGS.get(method_name))
    cpu = ParamSpace(MODELS[0], **method.space_options())
    return method, cpu, ParamSpace(MODELS[1], **method.space_options())


MODELS: list = []


@pytest.fixture(autouse=True)
def models():
    """The tiny model twice, built outside the fake device (the second one's parameters moved there in the test)."""
    MODELS[:] = [tiny_classifier(seed=0), tiny_classifier(seed=0)]
    yield
    MODELS.clear()


def select(method, space, seed=3, **kwargs):
    theta0, theta1, scores = theta(space, seed)
    ctx = SelectionContext(space, K if method.uses_k else method.fixed_k(space), theta0, seed=0,
                           theta1=theta1 if method.first_phase == "dense" else None,
                           scores=scores if method.first_phase == "mask" else None)
    return ctx, (select_with_shared_cache(method, ctx, device=CUDA, **kwargs) if kwargs else method.select(ctx))


def test_the_fake_device_fails_as_cuda_does(monkeypatch):
    with fake_cuda(monkeypatch) as cuda:
        a = torch.randn(4, 3, device=cuda)
        assert isinstance(a, FakeCuda) and a.device == cuda
        assert (a @ torch.ones(3, 2, device=cuda)).device == cuda
        assert (a * torch.tensor(2.0)).device == cuda  # a 0-dim CPU tensor is a scalar: allowed
        assert a[torch.tensor([0, 2])].shape == (2, 3)  # CPU indices into a CUDA tensor: allowed
        with pytest.raises(DeviceMismatch, match="two devices"):
            a @ torch.ones(3, 2)
        with pytest.raises(DeviceMismatch):
            a.view(-1).index_add_(0, torch.tensor([0]), torch.ones(1))
        assert float(a.sum()) == pytest.approx(float(host(a).sum()))  # values are real


def test_the_crash_torch_fake_tensors_show():
    """DeFT-X's projection of a CUDA update on a basis read from disk to the host: what a GPU trial that reused a
    cached basis hit, shown with torch's own fake tensors (no values needed for this one op)."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        delta = torch.empty(16, 8, device="cuda")
        with pytest.raises(FakeTensorDeviceMismatchError):
            (delta @ torch.empty(8, 4)) @ torch.empty(4, 8)
        assert ((delta @ torch.empty(8, 4, device="cuda")) @ torch.empty(4, 8, device="cuda")).device.type == "cuda"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_selection_runs_on_the_device_and_selects_what_the_cpu_does(name, monkeypatch):
    with fake_cuda(monkeypatch):
        to_fake_cuda(MODELS[1])
        method, cpu, cuda = spaces(name)
        want = select(make_method(name, SETTINGS.get(name)), cpu)[1]
        ctx, got = select(method, cuda)
        assert got.k == want.k and set(got.mask) == set(want.mask)
        for n, idx in got.mask.items():
            if idx is None:
                assert want.mask[n] is None
                continue
            assert idx.device == CUDA, f"{name}: the mask of {n} left the device"
            assert torch.equal(host(idx), want.mask[n]), n
        if ctx.theta1 is not None:
            zero_delta_selected(got.mask, ctx)  # the metrics' count of zero-Δ picks runs there too


@pytest.mark.parametrize("sweep", [[{"rank_strategy": "uniform", "rank": 2}, {"rank_strategy": "energy", "energy": 0.7}],
                                   [{"energy": 0.9}, {"energy": 0.6, "residual_top_p": 0.1}]])
def test_deft_x_reuses_a_cached_basis_on_the_run_device(sweep, tmp_path, monkeypatch):
    """A rank sweep's trials share θ1; the first factors each matrix and writes the factors beside θ1, the next
    reads them from disk: both on the run's (CUDA) device, selecting what the CPU selects."""
    uri = selection_cache_path(str(tmp_path / "theta1.safetensors"), "deft-x")
    with fake_cuda(monkeypatch):
        to_fake_cuda(MODELS[1])
        _, cpu, cuda = spaces("deft-x")
        statuses = []
        for settings in sweep:
            want = select(make_method("deft-x", settings), cpu)[1]
            _, got = select(make_method("deft-x", settings), cuda, cache_uri=uri)
            statuses.append(got.info["select_cache"])
            for n, idx in got.mask.items():
                assert idx.device == CUDA and torch.equal(host(idx), want.mask[n]), n
    assert statuses == ["computed", "reused"]


def test_delta_read_from_disk_applies_and_reverts_on_the_device(tmp_path, monkeypatch):
    _, cpu, _ = spaces("lt-sft")
    g = torch.Generator().manual_seed(1)
    diffs = {}
    for info in cpu.maskable[:5]:
        idx = torch.sort(torch.randperm(info.numel, generator=g)[: info.numel // 4]).values
        diffs[info.name] = (idx, torch.randn(idx.numel(), generator=g))
    SparseDelta(diffs=diffs, abs=cpu.head_snapshot(), meta={"kind": "task"}).save(tmp_path / "d.safetensors")
    with fake_cuda(monkeypatch):
        to_fake_cuda(MODELS[1])
        _, _, cuda = spaces("lt-sft")
        before = {**cuda.snapshot(), **cuda.head_snapshot()}
        delta = SparseDelta.load(tmp_path / "d.safetensors", cuda)  # a file: host tensors
        with delta.apply(cuda):
            for name, (idx, val) in diffs.items():
                now = host(cuda.param(name)).reshape(-1)
                assert torch.equal(now[idx], host(before[name]).reshape(-1)[idx] + val), name
        for name, t in before.items():
            assert torch.equal(host(cuda.param(name)), host(t)), name  # reverted bitwise
        with SparseDelta.compose(delta, delta).apply(cuda, with_abs=False):
            pass  # composing (language + task) works there too


def test_sparse_update_and_checkpoint_restore_on_the_device(tmp_path, monkeypatch):
    """The K-vector update (AdamW over δ, written back with index_copy_) and a checkpoint read back from disk, on the
    device; the result equals the CPU's bitwise."""
    phase = PhaseConfig(lr=1e-2, weight_decay=0.01, l1=1e-4)

    def run(space, ckpt=None):
        method = make_method("lt-sft")
        mask = select(method, space)[1].mask
        updater = SparseUpdater(space, mask, lr=phase.lr, weight_decay=phase.weight_decay, l1=phase.l1)
        head_opt = torch.optim.AdamW([space.param(n) for n in space.head], lr=phase.lr)
        g = torch.Generator().manual_seed(2)
        for _ in range(3):
            updater.grad.copy_(torch.randn(updater.k, generator=g).to(updater.grad.device))  # what the hooks gather
            updater.step()
            updater.zero_grad()
        if ckpt is not None:
            save_sparse_state(ckpt, updater, head_opt, [], space, step=3, steps=6, rng=[(torch.get_rng_state(), None)],
                              info={"selection": {"k": updater.k}})
        return updater, head_opt

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _, cpu, _ = spaces("lt-sft")
    want, _ = run(cpu, ckpt)
    with fake_cuda(monkeypatch):
        to_fake_cuda(MODELS[1])
        _, _, cuda = spaces("lt-sft")
        got, head_opt = run(cuda)
        assert got.delta.device == CUDA and torch.equal(host(got.delta), want.delta)
        for name in got.names:
            assert torch.equal(host(cuda.param(name)), cpu.param(name).detach()), name
        fresh = SparseUpdater(cuda, got.mask(), lr=phase.lr)
        restore_sparse_state(read_checkpoint_folder(ckpt), fresh, head_opt, [], cuda, rank=0, world=1)
        assert fresh.delta.device == CUDA and torch.equal(host(fresh.delta), want.delta)
