"""The CLI end to end on the smoke space (tiny model, real NusaX slice), and every bad input: one line, exit 2,
nothing written."""

import json
import subprocess
import sys

import pytest
import torch

from raysft.cli import main
from raysft.sft.delta import SparseDelta
from raysft.sft.methods import METHODS
from tests.conftest import needs_data


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def train_ok(args, capsys):
    main(args)  # returns normally on success
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Every method through `raysft train smoke`, in this process (one model load each: seconds)."""
    needs_data()
    out = {}
    root = tmp_path_factory.mktemp("smoke")
    for method in sorted(METHODS):
        main(["train", "smoke", "--method", method, "--out", str(root / method), "--quiet"])
        out[method] = root / method
    return out


@pytest.mark.parametrize("method", sorted(METHODS))
def test_train_smoke_every_method(smoke_runs, method):
    folder = smoke_runs[method]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["method"] == method
    assert set(metrics["dev"]) == {"jav", "sun", "eng"} and set(metrics["test"]) == {"jav", "sun", "eng"}
    for split in ("dev", "test"):
        for lang, m in metrics[split].items():
            assert 0.0 <= m["acc"] <= 1.0 and 0.0 <= m["f1"] <= 1.0
    # the phases' wall times, and the optimizer steps inside the phases that train
    steps = {"dense": "dense_steps_s", "sparse": "sparse_steps_s"}
    want = {"dense_s", "select_s", "sparse_s", "eval_s"} | {steps[p] for p in metrics["phases"] if p in steps}
    assert set(metrics["timings"]) == want and all(v >= 0 for v in metrics["timings"].values())
    assert 0 < metrics["avg"]["dev"] <= 1
    delta = SparseDelta.load(folder / "task_sft.safetensors")
    assert delta.meta["method"] == method and delta.meta["kind"] == "task"
    assert delta.nnz() == metrics["k"]
    if METHODS[method].uses_k:
        assert metrics["k"] == round(0.05 * metrics["n"])


def test_metrics_come_from_real_labels(smoke_runs):
    """The logged dev accuracy equals what the saved delta gives on the real dev labels."""
    from raysft.config import load_config
    from raysft.train.recipe import eval_loaders, prepare, predict

    cfg = load_config("smoke")
    run = prepare(cfg, "lt-sft")
    delta = SparseDelta.load(smoke_runs["lt-sft"] / "task_sft.safetensors", run.space)
    metrics = json.loads((smoke_runs["lt-sft"] / "metrics.json").read_text())
    loaders = eval_loaders(run)
    with delta.apply(run.space):
        preds, labels = predict(run.model, loaders[("jav", "dev")])
    assert labels.numel() == 32 and len(set(labels.tolist())) > 1
    assert float((preds == labels).float().mean()) == pytest.approx(metrics["dev"]["jav"]["acc"])


BAD = [
    (["train", "nosuchspace"], "unknown space 'nosuchspace'"),
    (["train", "smoke", "--method", "magic"], "unknown method 'magic'"),
    (["train", "smoke", "--set", "dense.lrr=1"], "unknown config key 'dense.lrr'"),
    (["train", "smoke", "--set", "data.target_langs=[xx]"], "unknown sa language 'xx'"),
    (["train", "smoke", "--method", "sc-sft", "--set", "methods.sc-sft.budget={layer.0: 0.5, layer.1: 0.4}"], "sums to 0.9"),
    (["train", "smoke", "--method", "sc-sft", "--set", "methods.sc-sft.budget={layer.0: 1.5, layer.1: -0.5}"], "negative"),
    (["train", "smoke", "--set", "sft.density=null", "--set", "sft.k=1000000000000"], "larger than the"),
    (["train", "smoke", "--method", "deft-x", "--set", "methods.deft-x.rank_strategy=uniform", "--set", "methods.deft-x.rank=4096"], "rank 4096 is larger"),
    (["train", "smoke", "--set", "data.dir=/nonexistent/data"], "/nonexistent/data"),
    (["train", "smoke", "--set", "model=/nonexistent/model"], "/nonexistent/model"),
    (["train", "smoke", "--set", "sft.density=2"], "sft.density"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_one_line_exit_2_nothing_written(args, message, capsys, tmp_path):
    needs_data()
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(args + ["--out", str(out), "--quiet"], capsys)
    assert code == 2, stderr
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def _bad_lang_sft_folder(tmp_path, kind):
    folder = tmp_path / "lang"
    folder.mkdir()
    target = folder / "jav.safetensors"
    if kind == "truncated":
        from tests.conftest import tiny_classifier
        from raysft.sft.groups import ParamSpace

        space = ParamSpace(tiny_classifier())
        d = SparseDelta(diffs={"encoder.layer.0.output.dense.bias": (torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))}, abs={}, meta={"kind": "lang"})
        d.save(target)
        target.write_bytes(target.read_bytes()[:-7])
    elif kind == "garbage":
        target.write_bytes(b"this is not a safetensors file at all")
    elif kind == "other-base":
        from tests.conftest import tiny_classifier
        from raysft.sft.groups import ParamSpace

        space = ParamSpace(tiny_classifier(hidden=16))
        d = SparseDelta.from_params(space, space.snapshot(), {"encoder.layer.0.output.dense.bias": torch.tensor([0])},
                                    meta={"kind": "lang", "base_fingerprint": space.fingerprint()})
        d.save(target, metadata={"base_fingerprint": space.fingerprint()})
    return folder


@pytest.mark.parametrize("kind,message", [("truncated", "jav.safetensors"), ("garbage", "jav.safetensors"), ("other-base", "made for another base model: tensor embeddings.word_embeddings.weight")])
def test_bad_delta_files_exit_2(kind, message, capsys, tmp_path):
    needs_data()
    folder = _bad_lang_sft_folder(tmp_path, kind)
    out = tmp_path / "out"
    code, _, stderr = run_cli(["train", "smoke", "--set", f"lang_sfts={folder}", "--out", str(out), "--quiet"], capsys)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()


def test_console_script_exit_code(tmp_path):
    """The installed entry point: a real process, exit code 2, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "raysft.cli", "train", "smoke", "--method", "nope"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "unknown method 'nope'" in proc.stderr and "Traceback" not in proc.stderr


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_import_sft_refuses_a_pickle_with_code(capsys, tmp_path):
    marker = tmp_path / "executed"
    evil = tmp_path / "pytorch_diff.bin"
    torch.save({"diffs": {}, "abs": {}, "payload": _Payload(marker)}, evil)
    out = tmp_path / "imported.safetensors"
    code, _, stderr = run_cli(["import-sft", str(evil), "--base", "tiny:xlmr", "--out", str(out)], capsys)
    assert code == 2 and "refusing to unpickle" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not marker.exists() and not out.exists()


def test_import_sft_converts_a_composable_sft_file(capsys, tmp_path):
    from tests.test_delta import write_composable_sft

    dense = torch.zeros(32, 32)
    dense[3, 5], dense[7, 0] = 0.5, -1.25
    src = tmp_path / "pytorch_diff.bin"
    write_composable_sft(src, {"roberta.encoder.layer.0.attention.self.query.weight": dense}, {})
    out = tmp_path / "imported.safetensors"
    main(["import-sft", str(src), "--base", "tiny:xlmr", "--out", str(out), "--kind", "lang", "--language", "jav"])
    delta = SparseDelta.load(out)
    idx, val = delta.diffs["encoder.layer.0.attention.self.query.weight"]
    assert idx.tolist() == [3 * 32 + 5, 7 * 32 + 0] and val.tolist() == [0.5, -1.25]
    assert delta.meta["kind"] == "lang" and delta.meta["language"] == "jav"


def test_train_off_a_terminal_prints_a_line_per_phase_event(capsys, tmp_path):
    """A log file or a pipe gets progress lines (a live bar would draw nothing there until the end)."""
    needs_data()
    out = train_ok(["train", "smoke", "--method", "lt-sft", "--out", str(tmp_path / "run")], capsys)
    lines = out.splitlines()
    for phase in ("dense", "sparse", "eval"):
        assert any(f"] {phase}: " in line and line.rstrip().endswith(" steps") for line in lines), (phase, out)
        assert any(f"] {phase}: done, " in line for line in lines), (phase, out)
    assert not any("\r" in line or "\x1b[" in line for line in lines)  # plain lines, no bar redraws
    # the dev average carries its bootstrap interval, in metrics.json and in the summary
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    ci = metrics["avg_ci"]["dev"]
    assert ci["low"] <= metrics["avg"]["dev"] <= ci["high"] and ci["examples"] == 64 and ci["resamples"] == 1000
    assert f"dev f1 {metrics['avg']['dev']:.3f} (95% CI {ci['low']:.3f}–{ci['high']:.3f} over 1,000 bootstrap " \
           "resamples of 64 examples)" in out


def test_line_reporter_reports_at_start_every_interval_and_end():
    import io

    from rich.console import Console

    from raysft.cli import LineReporter

    now = [0.0]
    buf = io.StringIO()
    reporter = LineReporter(Console(file=buf, width=200), every_s=30.0, clock=lambda: now[0])
    reporter.start("sparse", 10)
    for step in range(10):
        now[0] += 10.0  # a step every 10 s: a line every third step
        reporter.step(1.0 / (step + 1))
    reporter.end()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[    0.0s] sparse: 10 steps"
    assert lines[1:4] == ["[   30.0s] sparse: step 3/10, loss 0.3333", "[   60.0s] sparse: step 6/10, loss 0.1667",
                          "[   90.0s] sparse: step 9/10, loss 0.1111"]
    assert lines[4] == "[  100.0s] sparse: done, 10 steps, last loss 0.1000"
