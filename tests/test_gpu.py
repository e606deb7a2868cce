"""The method contract and a short `raysft train` on CUDA (marked ``gpu``; skipped with its reason without CUDA).

Runs without Ray and MLflow (the GPU machine has neither): the contract table of tests/test_methods_contract.py on
CUDA (exact K, unmasked entries bitwise, K-sized optimizer state on the device, θ0 + delta bitwise, apply/revert
bitwise), in fp32 and bf16; CPU and CUDA selecting the same entries from the same scores (ties included, and over
more than one top-K chunk); deltas saved from either device with the same bytes and applied to either with the same
weights; a language SFT and a `raysft train` (tiny model, smoke space, synthetic NusaX-shaped data) on CUDA.
    python -m pytest -m gpu tests/test_gpu.py
"""

import copy
import json
import random

import pytest
import torch

from raysft.config import PhaseConfig
from raysft.sft.delta import SparseDelta
from raysft.sft.groups import ParamSpace
from raysft.sft.mask import mask_size
from raysft.sft.methods import METHODS, SelectionContext, make_method
from raysft.sft.topk import CHUNK, topk_select
from raysft.train.loop import restore
from tests.conftest import tiny_classifier
from tests.test_methods_contract import K, SETTINGS, run_method

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"),
]

PHASE = PhaseConfig(epochs=1, lr=5e-3, batch_size=8)
RUNS = [(name, "fp32") for name in sorted(METHODS)] + [("lt-sft", "bf16"), ("ada-sft", "bf16"), ("full", "bf16")]


@pytest.fixture(scope="module", params=RUNS, ids=[f"{n}-{p}" for n, p in RUNS])
def trained(request):
    name, precision = request.param
    torch.manual_seed(0)
    return name, precision, run_method(name, "cuda", PHASE.model_copy(update={"precision": precision}))


def test_everything_lives_on_cuda_and_exactly_k_is_selected(trained):
    name, _, (model, space, method, selection, updater, delta, theta0) = trained
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert all(t.device.type == "cuda" for t in theta0.values())
    assert mask_size(selection.mask, space) == selection.k
    if method.uses_k:
        assert selection.k == K
    for idx in selection.mask.values():
        if idx is not None:  # selection runs where the scores live
            assert idx.device.type == "cuda" and idx.dtype == torch.int64
            assert bool((idx[1:] > idx[:-1]).all())


def test_unmasked_entries_bitwise_and_k_sized_state_on_cuda(trained):
    name, precision, (model, space, method, selection, updater, delta, theta0) = trained
    if not method.sparse_phase:
        pytest.skip(f"{name} has no sparse phase: its delta is the dense update")
    moved = 0
    for info in space.maskable:
        now = space.param(info.name).detach().reshape(-1)
        before = theta0[info.name].reshape(-1)
        keep = torch.ones(info.numel, dtype=torch.bool, device=now.device)
        idx = selection.mask.get(info.name)
        if idx is not None:
            keep[idx] = False
            moved += int((now[idx] != before[idx]).sum())
        assert torch.equal(now[keep], before[keep]), f"{name}: unmasked entries of {info.name} changed"
    assert moved >= 0.5 * selection.k
    assert updater.k == selection.k and updater.state_bytes() == 2 * selection.k * 4
    for state in updater.optimizer.state.values():
        for t in state.values():
            if t.numel() > 1:
                assert t.device.type == "cuda" and t.dtype == torch.float32
    assert updater.delta.device.type == "cuda" and updater.delta.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters()), f"{precision}: master weights stay fp32"


def test_theta0_plus_delta_and_apply_revert_bitwise_on_cuda(trained, tmp_path):
    name, _, (model, space, method, selection, updater, delta, theta0) = trained
    trained_weights = space.snapshot()
    path = tmp_path / f"{name}.safetensors"
    delta.save(path)
    loaded = SparseDelta.load(path)
    restore(space, theta0)
    with loaded.apply(space):
        for n, w in trained_weights.items():
            if method.sparse_phase:
                assert torch.equal(space.param(n).detach(), w), n
            else:
                torch.testing.assert_close(space.param(n).detach(), w)
    assert all(torch.equal(space.param(n).detach(), t) for n, t in theta0.items())  # reverted bitwise
    restore(space, trained_weights)


# ------------------------------------------------------------------------------------- CPU and CUDA agree
def _tied_theta1(theta0: dict, seed: int) -> dict:
    """θ1 with |Δ| full of ties: most entries unchanged, the rest moved by a multiple of 2^-10 (exact in fp32)."""
    g = torch.Generator().manual_seed(seed)
    return {
        n: t + torch.randint(-3, 4, t.shape, generator=g).float() * 2.0**-10 * (torch.rand(t.shape, generator=g) < 0.3)
        for n, t in theta0.items()
    }


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"full"}))
def test_cpu_and_cuda_select_the_same_entries_from_the_same_scores(name):
    model = tiny_classifier(seed=0)
    space_cpu = ParamSpace(model)
    space_gpu = ParamSpace(copy.deepcopy(model).cuda())
    theta0 = space_cpu.snapshot()
    theta1 = _tied_theta1(theta0, seed=3)
    g = torch.Generator().manual_seed(4)
    scores = {n: torch.randint(0, 50, t.shape, generator=g).float() / 8 for n, t in theta0.items()}  # ties too
    method = make_method(name, SETTINGS.get(name))
    k = K if method.uses_k else space_cpu.n
    on_cpu = method.select(SelectionContext(space_cpu, k, theta0, theta1=theta1, scores=scores, seed=0))
    cuda = {n: t.cuda() for n, t in theta0.items()}
    on_gpu = method.select(SelectionContext(
        space_gpu, k, cuda, theta1={n: t.cuda() for n, t in theta1.items()},
        scores={n: t.cuda() for n, t in scores.items()}, seed=0,
    ))
    assert list(on_cpu.mask) == list(on_gpu.mask)
    for n, idx in on_cpu.mask.items():
        assert on_gpu.mask[n].device.type == "cuda"
        if name == "deft-x":  # the SVD itself differs in the last bits between devices: the same K, nearly all shared
            continue
        assert torch.equal(on_gpu.mask[n].cpu(), idx), n
    if name == "deft-x":
        shared = sum(
            len(set(idx.tolist()) & set(on_gpu.mask[n].cpu().tolist())) for n, idx in on_cpu.mask.items()
        )
        assert mask_size(on_gpu.mask, space_gpu) == k and shared >= 0.95 * k


def test_topk_over_several_chunks_is_identical_on_cpu_and_cuda():
    g = torch.Generator().manual_seed(5)
    sizes = [CHUNK + 12345, 2 * CHUNK + 7, 999]
    scores = {f"t{i}": (torch.randint(0, 3000, (n,), generator=g).float() - 1000) / 64 for i, n in enumerate(sizes)}
    k = sum(sizes) // 7
    on_cpu = topk_select(scores, k)
    on_gpu = topk_select({n: t.cuda() for n, t in scores.items()}, k)
    assert on_cpu.threshold == on_gpu.threshold and on_cpu.ties_broken == on_gpu.ties_broken > 0
    assert on_cpu.indices.keys() == on_gpu.indices.keys()
    for n, idx in on_cpu.indices.items():
        assert torch.equal(on_gpu.indices[n].cpu(), idx)
    assert sum(int(i.numel()) for i in on_gpu.indices.values()) == k


def _file_parts(path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def test_a_delta_saved_from_either_device_has_the_same_bytes_and_applies_the_same(tmp_path):
    model = tiny_classifier(seed=0)
    space = ParamSpace(model)
    theta0 = space.snapshot()
    restore(space, _tied_theta1(theta0, seed=6))
    rng = random.Random(0)
    mask = {p.name: torch.tensor(sorted(rng.sample(range(p.numel), max(1, p.numel // 5)))) for p in space.maskable[::2]}
    meta = {"kind": "task", "method": "lt-sft"}
    from_cpu = SparseDelta.from_params(space, theta0, mask, meta=meta)
    gpu_model = copy.deepcopy(model).cuda()
    gpu_space = ParamSpace(gpu_model)
    from_gpu = SparseDelta.from_params(
        gpu_space, {n: t.cuda() for n, t in theta0.items()}, {n: i.cuda() for n, i in mask.items()}, meta=meta
    )
    from_cpu.save(tmp_path / "cpu.safetensors")
    from_gpu.save(tmp_path / "gpu.safetensors")
    # The same tensor bytes and the same header (safetensors writes its metadata map in no fixed order).
    assert _file_parts(tmp_path / "cpu.safetensors") == _file_parts(tmp_path / "gpu.safetensors")
    loaded = SparseDelta.load(tmp_path / "gpu.safetensors")
    restore(space, theta0)
    restore(gpu_space, {n: t.cuda() for n, t in theta0.items()})
    with loaded.apply(space), loaded.apply(gpu_space):
        for n in theta0:
            assert torch.equal(gpu_space.param(n).detach().cpu(), space.param(n).detach()), n
    assert all(torch.equal(gpu_space.param(n).detach().cpu(), t) for n, t in theta0.items())


# ----------------------------------------------------------------------------------- language SFT, raysft train
WORDS = {
    0: ["bad", "awful", "slow", "broken", "boring", "late"],
    1: ["okay", "normal", "average", "plain", "usual", "fine"],
    2: ["good", "great", "fast", "clean", "happy", "cheap"],
}
FILLER = ["the", "food", "room", "price", "service", "movie", "is", "was", "very", "and", "this", "we"]
LABELS = ["negative", "neutral", "positive"]


def synthetic_data(root, n_train: int = 96, n_eval: int = 24, text_lines: int = 240):
    """A data folder shaped like ../shared/data (NusaX-Senti for eng, jav, sun; a text corpus for language SFTs)."""
    import csv

    rng = random.Random(0)

    def sentence(label: int) -> str:
        words = rng.sample(FILLER, 5) + rng.sample(WORDS[label], 2)
        rng.shuffle(words)
        return " ".join(words)

    for lang in ("eng", "jav", "sun"):
        folder = root / "nusax_senti" / lang
        folder.mkdir(parents=True)
        for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
            with open(folder / f"{split}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", "text", "label"])
                for i in range(n):
                    label = i % 3
                    w.writerow([i, sentence(label), LABELS[label]])
    text = root / "americas_text" / "zz"
    text.mkdir(parents=True)
    (text / "a.txt").write_text("".join(sentence(i % 3) + "\n" for i in range(text_lines)))
    return root


def test_language_sft_trains_on_cuda(tmp_path):
    pytest.importorskip("datasets")
    from raysft.config import load_config
    from raysft.train.lang import prepare_lang, train_lang_sft

    data = synthetic_data(tmp_path / "data")
    cfg = load_config("smoke", [
        f"data.dir={data}", "lang.gpus_per_job=1", "lang.max_train_lines=96", "lang.max_heldout_lines=20",
        "lang.max_seq_len=32", "lang.head_warmup_steps=2", "lang.dense.max_steps=4", "lang.sparse.max_steps=4",
        "lang.sparse.precision=bf16",
    ])
    run = prepare_lang(cfg, "zz")  # gpus_per_job > 0: the job's device is CUDA
    assert next(run.model.parameters()).device.type == "cuda"
    theta0 = run.space.snapshot()
    delta, metrics = train_lang_sft(run)
    assert delta.nnz() == metrics["k"] == round(0.05 * run.space.n)
    assert all(v.device.type == "cpu" for _, v in delta.diffs.values())  # the file's content, on the host
    assert all(torch.equal(run.space.param(n), t) for n, t in theta0.items())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_raysft_train_on_cuda(tmp_path, capsys, precision):
    pytest.importorskip("datasets")
    from raysft.cli import main
    from raysft.config import load_config
    from raysft.models import load_for_classification

    data = synthetic_data(tmp_path / "data")
    out = tmp_path / "out"
    sets = [f"data.dir={data}", "dense.max_steps=6", "sparse.max_steps=6",
            f"dense.precision={precision}", f"sparse.precision={precision}"]
    args = ["train", "smoke", "--device", "cuda", "--no-track", "--quiet", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    try:
        main(args)
    except SystemExit as e:  # main exits only on an error
        pytest.fail(f"raysft train exited {e.code}: {capsys.readouterr().err}")
    printed = capsys.readouterr().out
    assert "on cuda" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"].startswith("cuda") and metrics["precision"]["sparse"] == precision
    assert metrics["k"] == round(0.05 * metrics["n"]) and metrics["optimizer_state_bytes"] == 2 * metrics["k"] * 4
    for lang in ("jav", "sun"):
        assert 0.0 <= metrics["dev"][lang]["f1"] <= 1.0
    cfg = load_config("smoke", sets)
    space = ParamSpace(load_for_classification(cfg.model, 3))
    delta = SparseDelta.load(out / "task_sft.safetensors", space)
    assert delta.nnz() == metrics["k"]
