"""The device rule, as far as a machine without a GPU can check it, and bf16 autocast kept exact.

- Every helper takes the device of its inputs: the sparse updater, mask scores, magnitude scores and BitFit's mask
  are built on the ``meta`` device from a model there, and everything they hold must be on ``meta`` too (a tensor
  created on a hard-coded device would show up as ``cpu``).
- A source check: in the pure-torch core (raysft/sft, raysft/train) no tensor is created without a device and no
  host copy is made unless its line says ``host`` (why it must be on the host).
- bf16 autocast (opt-in per phase) changes the arithmetic of forward and backward, but the weights, δ and optimizer
  state stay float32, so θ0 + the saved delta still equals the trained model bitwise.
"""

import ast
import re
from pathlib import Path

import pytest
import torch

from raysft.config import PhaseConfig
from raysft.errors import RaysftError
from raysft.sft.delta import SparseDelta
from raysft.sft.groups import ParamSpace
from raysft.sft.mask_scores import MaskScores
from raysft.sft.methods import SelectionContext, make_method
from raysft.sft.methods.base import magnitude
from raysft.sft.sparse import SparseUpdater
from raysft.train.device import resolve_device
from raysft.train.loop import restore, train_dense, train_mask_scores, train_sparse
from raysft.train.phases import delta_from_updater
from tests.conftest import random_batches, tiny_classifier

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ device choice
def test_resolve_device_choices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    with pytest.raises(RaysftError, match="not one of auto, cpu, cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid here")
def test_cuda_refused_without_a_gpu_names_the_fix():
    with pytest.raises(RaysftError, match="sees no CUDA device: use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(RaysftError, match="no CUDA device"):
        resolve_device("cuda:1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid here")
def test_cli_device_cuda_without_a_gpu_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """raysft train (tracking on, as by default), eval and apply with --device cuda on a machine without CUDA."""
    from raysft.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store, runs/mlflow.db here: not created
    for argv in (["train", "smoke", "--device", "cuda", "--quiet", "--out", "out"],
                 ["eval", "smoke", "--task-sft", "sft.safetensors", "--lang-sfts", "store", "--device", "cuda"],
                 ["apply", "--base", "tiny:xlmr", "--sft", "sft.safetensors", "--out", "out", "--device", "cuda"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2, argv
        assert len(err.splitlines()) == 1 and "--device cuda" in err and "use --device cpu" in err, (argv, err)
        assert list(tmp_path.iterdir()) == [], argv  # no out folder, no runs/, no tracking store


def test_cli_lang_device_cuda_needs_a_gpu_per_job(capsys):
    from raysft.cli import main

    with pytest.raises(SystemExit) as e:
        main(["lang", "smoke", "--langs", "jav", "--device", "cuda", "--no-track"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--set lang.gpus_per_job=1" in err and len(err.strip().splitlines()) == 1


def test_lang_jobs_asking_for_a_gpu_no_node_has_are_one_line_before_anything_starts(data_dir, tmp_path, capsys,
                                                                                      monkeypatch):
    """A space giving each language job a GPU (the nli and sa presets; here smoke with lang.gpus_per_job=1), with or
    without --device cuda, where no node has a GPU: one line naming the fix, exit 2, before any tracking store or
    job (Ray would keep the job waiting for ever). Ray's node list is this machine's, faked: no Ray starts."""
    import ray

    from raysft.cli import main
    from raysft.cluster import resources
    from raysft.distributed import lang_jobs

    monkeypatch.setenv("RAYSFT_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(lang_jobs, "connect", lambda address, verbose: None)
    monkeypatch.setattr(ray, "nodes", lambda: [{**_node(2), "Alive": True}])
    monkeypatch.setattr(resources, "autoscaling_node_types", lambda: [])
    for extra in ([], ["--device", "cuda"]):
        with pytest.raises(SystemExit) as e:
            main(["lang", "smoke", "--langs", "jav", "--set", "lang.gpus_per_job=1", *extra])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1, err
        assert "no node can hold a language job with 1 CPU and 1 GPU" in err and "lang.gpus_per_job=0" in err, err
        assert list(tmp_path.iterdir()) == []
    from raysft.config import load_config

    for space in ("nli", "sa"):  # the presets: language jobs and sweep workers on GPUs
        with pytest.raises(RaysftError, match="no node can hold a language job .*--set lang.gpus_per_job=0"):
            resources.check_lang_resources(load_config(space), [_node(8)])
        with pytest.raises(RaysftError, match="no node can hold a worker with .* 1 GPU .*tune.gpus_per_worker"):
            resources.check_resources(load_config(space), [_node(8)])
        resources.check_lang_resources(load_config(space), [_node(8), _node(4, gpu=1)])


# ------------------------------------------------------------------------------- helpers follow their inputs
@pytest.fixture
def meta_space():
    model = tiny_classifier(seed=0).to("meta")
    return ParamSpace(model)


def test_sparse_updater_lives_on_the_parameters_device(meta_space):
    space = meta_space
    names = [p.name for p in space.maskable]
    updater = SparseUpdater(space, {names[0]: torch.tensor([0, 3, 5], device="meta")}, lr=1e-3)
    for t in [updater.reference, updater.delta, updater.delta.grad, *updater.indices]:
        assert t.device.type == "meta"
    updater.close()
    dense_entry = SparseUpdater(space, {names[1]: None}, lr=1e-3)  # "every entry" indices are made on the device
    assert all(i.device.type == "meta" for i in dense_entry.indices)
    assert dense_entry.k == space.info(names[1]).numel
    dense_entry.close()


def test_scores_and_masks_follow_the_model_device(meta_space):
    space = meta_space
    theta0 = space.snapshot()
    assert all(t.device.type == "meta" for t in theta0.values())
    ctx = SelectionContext(space, 10, theta0, theta1=space.snapshot())
    assert all(s.device.type == "meta" for s in magnitude(ctx).values())
    scores = MaskScores(space, 3.0)
    assert all(s.device.type == "meta" for s in scores.learned().values())
    bitfit = make_method("bitfit").select(ctx)
    assert bitfit.mask and all(i.device.type == "meta" for i in bitfit.mask.values())


HOST_COPY = re.compile(r"""\.cpu\(\)|["']cpu["']|torch\.device\(\s*["']cpu""")
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "tensor", "rand", "randn", "randint", "randperm", "linspace",
             "eye"}


def _core_files():
    for sub in ("raysft/sft", "raysft/train"):
        for path in sorted((REPO / sub).rglob("*.py")):
            if path.name != "device.py":  # the module that defines the device choices (and the word "cpu")
                yield path


def test_core_creates_no_tensor_on_a_hard_coded_device():
    """In raysft/sft and raysft/train: a tensor factory without ``device=`` or a host copy (``.cpu()``, "cpu") must
    carry a ``host`` comment saying why (a file, a broadcast, a seeded CPU generator…). This is the check that the
    top-K histogram bug (a CUDA bincount added into a CPU histogram) would have failed."""
    problems = []
    for path in _core_files():
        src = path.read_text()
        lines = src.splitlines()
        for node in ast.walk(ast.parse(src)):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if (
                isinstance(f, ast.Attribute) and f.attr in FACTORIES and isinstance(f.value, ast.Name)
                and f.value.id == "torch" and not any(k.arg == "device" for k in node.keywords)
            ):
                span = lines[node.lineno - 1 : (node.end_lineno or node.lineno)]
                if not any("host" in line.split("#", 1)[1] for line in span if "#" in line):
                    problems.append(f"{path.relative_to(REPO)}:{node.lineno}: torch.{f.attr}(…) without device=")
        for i, line in enumerate(lines, 1):
            code = line.split("#", 1)[0]
            if HOST_COPY.search(code) and "host" not in (line.split("#", 1)[1] if "#" in line else ""):
                problems.append(f"{path.relative_to(REPO)}:{i}: host copy without a '# host' reason: {line.strip()}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------- bf16, exact
PHASE = PhaseConfig(epochs=1, lr=5e-3, batch_size=8)
BF16 = PHASE.model_copy(update={"precision": "bf16"})


def _lt_sft(phase: PhaseConfig):
    model = tiny_classifier(seed=0)
    space = ParamSpace(model)
    batches = random_batches(5, seed=1)
    theta0, head0 = space.snapshot(), space.head_snapshot()
    dense_losses = train_dense(model, space, batches, 5, phase)
    ctx = SelectionContext(space, 500, theta0, theta1=space.snapshot())
    selection = make_method("lt-sft").select(ctx)
    restore(space, theta0, head0)
    updater, sparse_losses = train_sparse(model, space, selection.mask, batches, 5, phase)
    return model, space, theta0, updater, dense_losses + sparse_losses


def test_bf16_autocast_keeps_fp32_state_and_exact_deltas(tmp_path):
    model, space, theta0, updater, losses = _lt_sft(BF16)
    _, _, _, _, fp32_losses = _lt_sft(PHASE)
    assert losses != fp32_losses  # autocast really changed the arithmetic
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(fp32_losses), rtol=0.05, atol=0.05)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert updater.delta.dtype == torch.float32
    assert all(t.dtype == torch.float32 for s in updater.optimizer.state.values() for t in s.values() if t.numel() > 1)
    assert updater.state_bytes() == 2 * updater.k * 4
    delta = delta_from_updater(updater, space, {"kind": "task"})
    path = tmp_path / "bf16.safetensors"
    delta.save(path)
    trained = space.snapshot()
    restore(space, theta0)
    loaded = SparseDelta.load(path)
    assert all(v.dtype == torch.float32 for _, v in loaded.diffs.values())
    with loaded.apply(space):
        for n, w in trained.items():
            assert torch.equal(space.param(n).detach(), w), n  # θ0 + delta == the bf16-trained model, bitwise


def test_bf16_mask_phase_runs_and_keeps_fp32_scores():
    model = tiny_classifier(seed=0)
    space = ParamSpace(model)
    theta0 = space.snapshot()
    scores = train_mask_scores(model, space, random_batches(3, seed=2), 3, BF16, score_init=3.0, score_lr=0.1)
    assert all(s.dtype == torch.float32 for s in scores.values())
    assert any(not torch.all(s == 3.0) for s in scores.values())  # the scores learned
    assert all(torch.equal(space.param(n).detach(), t) for n, t in theta0.items())  # W stayed frozen


def test_precision_is_validated():
    with pytest.raises(ValueError, match="precision"):
        PhaseConfig(precision="fp16")


# ------------------------------------------------------------------------------------------ presets ask for GPUs
def _node(cpu: float, gpu: float = 0) -> dict:
    return {"NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": cpu, **({"GPU": gpu} if gpu else {})}}


def test_paper_presets_ask_for_gpus_and_doctor_says_when_the_cluster_cannot_give_them():
    from raysft.cluster.doctor import gpu_check, resources_check
    from raysft.config import load_config

    for space in ("nli", "sa"):
        cfg = load_config(space)
        assert cfg.lang.gpus_per_job == 1  # each language SFT job on one GPU worker
        no_gpu = gpu_check(cfg, [_node(8)], [])
        assert no_gpu.ok is False and "lang.gpus_per_job=1" in no_gpu.detail and "--set" in no_gpu.detail
        # the autoscaler may start a GPU worker (cluster.yaml's gpu_worker): that fits
        scaled = gpu_check(cfg, [_node(8)], [{"NodeManagerAddress": "autoscaled gpu_worker", "Resources": {"CPU": 4, "GPU": 1}}])
        assert scaled.ok is True
        assert gpu_check(cfg, [_node(8), _node(4, gpu=1)], []).ok is True
        row = resources_check(cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"gpus_per_worker": 0})}),
                              [_node(8)], [], lambda n: n["NodeManagerAddress"])
        assert row.ok is False and "asks for GPUs the cluster cannot give" in row.detail  # doctor's resources row
    cpu = load_config("smoke")
    quiet = gpu_check(cpu, [_node(8)], [])
    assert quiet.ok is True and "note" not in quiet.detail
    idle = gpu_check(cpu, [_node(8), _node(4, gpu=1)], [])
    assert idle.ok is True and "GPUs stay idle" in idle.detail
