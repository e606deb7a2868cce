"""Language SFTs and composition: MLM training lowers held-out loss, a language SFT never brings its head, the
composed evaluation applies and reverts each language's SFT bitwise, composable-sft imports compose like native
deltas, `raysft lang` runs one Ray job per language into the store, and the bad inputs."""

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re

import pytest
import torch

from raysft.cli import main
from raysft.config import load_config
from raysft.sft.delta import SparseDelta, import_composable_sft
from raysft.sft.groups import ParamSpace
from raysft.sft.methods import METHODS
from tests.conftest import needs_data

TINY_LANG = [
    "lang.max_train_lines=240", "lang.max_heldout_lines=48", "lang.max_seq_len=48", "lang.head_warmup_steps=20",
    "lang.dense.epochs=3", "lang.sparse.epochs=3", "lang.dense.lr=3e-3", "lang.sparse.lr=3e-3",
]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def param_hash(model) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def gn_sft():
    """One language SFT (Guaraní) on the tiny model, in this process: (run, delta, metrics, θ0 of the MLM model)."""
    needs_data()
    from raysft.train.lang import prepare_lang, train_lang_sft

    run = prepare_lang(load_config("smoke", TINY_LANG), "gn")
    decoder0 = run.model.get_output_embeddings().weight.detach().clone()
    words0 = run.model.get_input_embeddings().weight.detach().clone()
    delta, metrics = train_lang_sft(run)
    return run, delta, metrics, decoder0, words0


def test_language_sft_lowers_heldout_mlm_loss(gn_sft):
    run, delta, metrics, _, _ = gn_sft
    loss = metrics["mlm_loss"]
    # The SFT itself (not only the head trained alongside it) lowers the held-out loss.
    assert loss["after"] < loss["head_only"] - 1e-3, loss
    assert loss["after"] < loss["before"] - 1e-3, loss
    assert delta.nnz() == metrics["k"] == round(0.05 * run.space.n)
    assert delta.meta["kind"] == "lang" and delta.meta["language"] == "gn" and delta.meta["task"] == "mlm"
    assert float(delta.meta["mlm_loss_after"]) == pytest.approx(loss["after"], abs=1e-5)
    assert metrics["corpus"] == "americas_text/gn/train.gn.txt" and metrics["corpus_lines"] == 26032
    assert metrics["head_fresh"] and len(metrics["losses"]["head"]) == 20


def test_decoder_is_untied_and_frozen_as_in_composable_sft(gn_sft):
    run, delta, _, decoder0, words0 = gn_sft
    decoder = run.model.get_output_embeddings().weight
    assert decoder is not run.model.get_input_embeddings().weight and not decoder.requires_grad
    assert torch.equal(decoder, decoder0) and torch.equal(decoder0, words0)  # a frozen copy of θ0's embeddings
    assert "lm_head.decoder.weight" not in delta.abs and "lm_head.dense.weight" in delta.abs
    assert all(not n.startswith("lm_head") for n in delta.diffs)


def test_language_sft_is_never_applied_with_its_head(gn_sft, tmp_path):
    """On an MLM model (which has the head the abs tensors name) and in the composed evaluation's loading path."""
    run, delta, _, _, _ = gn_sft
    from raysft.models import load_for_classification, load_for_mlm
    from raysft.train.lang import untie_output_embeddings
    from raysft.train.recipe import load_lang_sfts

    path = tmp_path / "gn.safetensors"
    delta.save(path)
    model = load_for_mlm("tiny:xlmr")
    space = ParamSpace(model, freeze=[untie_output_embeddings(model)])
    head0 = space.head_snapshot()
    with SparseDelta.load(path, space).apply(space, with_abs=False):
        assert all(torch.equal(space.param(n), t) for n, t in head0.items())
    clf = ParamSpace(load_for_classification("tiny:xlmr", 3))
    loaded = load_lang_sfts(str(tmp_path), clf, ["gn", "quy"])
    assert set(loaded) == {"gn"}
    with pytest.raises(Exception, match="names no head parameter"):
        loaded["gn"].apply(clf)  # with its head it would not even fit: composition always passes with_abs=False


def test_composed_evaluation_applies_and_reverts_each_language(monkeypatch):
    """Every prediction sees θ0 + task (task-only) or θ0 + task + that language's SFT (composed), nothing else; a
    language without an SFT is evaluated task-only and named as missing; afterwards the model is θ0 again."""
    needs_data()
    from raysft.train import recipe

    cfg = load_config("smoke", ["data.max_eval_examples=8"])
    run = recipe.prepare(cfg)
    space = run.space
    theta0 = space.snapshot()

    def random_delta(seed, kind, frac=0.1):
        g = torch.Generator().manual_seed(seed)
        diffs = {}
        for p in space.maskable:
            idx = torch.randperm(p.numel, generator=g)[: max(1, int(frac * p.numel))].sort().values
            diffs[p.name] = (idx, torch.randn(idx.numel(), generator=g) * 0.05)
        head = {n: torch.randn(space.param(n).shape, generator=g) for n in space.head} if kind == "task" else {}
        return SparseDelta(diffs, head, {"kind": kind})

    task = random_delta(1, "task")
    run.lang_sfts = {"jav": random_delta(2, "lang")}  # sun and eng have none

    def state_hash(*deltas):
        handles = [d.apply(space) for d in deltas]
        h = param_hash(run.model)
        for handle in reversed(handles):
            handle.revert()
        return h

    recipe.restore(space, theta0)
    expected_task = state_hash(task)
    expected_jav = state_hash(task, SparseDelta(run.lang_sfts["jav"].diffs, None, {}))
    seen = []
    real_predict = recipe.predict
    monkeypatch.setattr(recipe, "predict", lambda model, loader: (seen.append(param_hash(model)), real_predict(model, loader))[1])
    results = recipe.evaluate(run, task, theta0, recipe.eval_loaders(run))
    # Per language: dev + test task-only, then dev + test composed when it has an SFT.
    assert seen == [expected_task] * 2 + [expected_jav] * 2 + [expected_task] * 4
    assert all(torch.equal(space.param(n), t) for n, t in theta0.items())
    assert set(results["composed"]["dev"]) == {"jav"} and set(results["task_only"]["dev"]) == {"jav", "sun", "eng"}
    metrics = recipe.evaluation_metrics(dataclasses.replace(run, cfg=cfg.model_copy(update={"lang_sfts": "x"})), results)
    assert metrics["lang_sft_missing"] == ["sun"]
    assert metrics["dev"]["jav"] == results["composed"]["dev"]["jav"]
    assert metrics["dev"]["sun"] == results["task_only"]["dev"]["sun"]
    comp = metrics["composition"]  # task-only and composed over the same languages (those with an SFT)
    assert comp["langs"] == ["jav"]
    assert comp["gain"]["dev"] == pytest.approx(results["composed"]["dev"]["jav"]["f1"] - results["task_only"]["dev"]["jav"]["f1"])


def test_imported_composable_sft_language_sft_composes_like_the_native_delta(tmp_path):
    """A language SFT written in composable-sft's format (column-major gaps, full names, an MLM-head abs that is
    dropped) composes with a task SFT to bitwise the same weights as the native delta."""
    from raysft.models import load_for_classification
    from tests.test_delta import write_composable_sft

    model = load_for_classification("tiny:xlmr", 3)
    space = ParamSpace(model)
    g = torch.Generator().manual_seed(0)
    native_diffs, dense = {}, {}
    for p in space.maskable:
        idx = torch.randperm(p.numel, generator=g)[: max(1, p.numel // 7)].sort().values
        val = torch.randn(idx.numel(), generator=g)
        native_diffs[p.name] = (idx, val)
        full = torch.zeros(p.numel)
        full[idx] = val
        dense[f"{space.prefix}.{p.name}"] = full.reshape(p.shape)
    native = SparseDelta(native_diffs, {}, {"kind": "lang"})
    path = tmp_path / "pytorch_diff.bin"
    write_composable_sft(path, dense, {"lm_head.dense.weight": torch.randn(32, 32)})
    imported = import_composable_sft(path, space)
    assert imported.meta["kind"] == "lang" and imported.meta["dropped_abs"] == "1"
    task = SparseDelta({n: (i[::3], torch.randn(i[::3].numel(), generator=g)) for n, (i, _) in native_diffs.items()},
                       {n: torch.randn(space.param(n).shape, generator=g) for n in space.head}, {"kind": "task"})
    hashes, states = [], []
    for lang in (native, imported):
        with task.apply(space), lang.apply(space, with_abs=False):
            hashes.append(param_hash(model))
            states.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert hashes[0] == hashes[1]
    with SparseDelta.compose(task, imported).apply(space):  # one delta: (t + l) added once, equal up to rounding
        assert all(torch.allclose(p, states[0][n], atol=1e-6) for n, p in model.named_parameters())


# ------------------------------------------------------------------------------------------------ raysft lang / eval
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """`raysft lang smoke --langs jav,gn`: two Ray jobs into a fresh store, logged to MLflow."""
    needs_data()
    root = tmp_path_factory.mktemp("store")
    mp = pytest.MonkeyPatch()
    mp.setenv("RAYSFT_SFT_STORE", str(root))
    mp.setenv("RAY_AUTH_MODE", "disabled")
    mp.setenv("RAYSFT_PROGRESS_S", "0.5")  # progress lines every 0.5 s instead of 30 s: the tiny jobs take seconds
    import ray

    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            main(["lang", "smoke", "--langs", "jav,gn", *sum((["--set", s] for s in TINY_LANG), [])])
        root.joinpath("cli-output.txt").write_text(out.getvalue())
        yield root
    finally:
        ray.shutdown()
        mp.undo()


def test_lang_command_shows_each_running_job_phase_and_step(store):
    """Never minutes of silence: while jobs run, a line per interval names each running language's phase (from the
    job itself, through the progress board), then a line per finished language."""
    lines = (store / "cli-output.txt").read_text().splitlines()
    progress = [line for line in lines if re.match(r"\[\s*\d+m\d\ds\] ", line)]
    assert progress, lines
    told = re.findall(r"(jav|gn): (loading|dense|sparse|head|mask|eval)", "\n".join(progress))
    assert told, progress  # the jobs' own phases reached the driver, not only "waiting"
    assert sum(line.startswith(("jav: held-out", "gn: held-out")) for line in lines) == 2


def test_lang_command_fills_the_store(store, capsys):
    folder = store / "lang" / "tiny-xlmr-L2-H32"
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["gn.safetensors", "jav.safetensors"]
    jav = SparseDelta.load(folder / "jav.safetensors")
    assert jav.meta["kind"] == "lang" and jav.meta["corpus"] == "nusax_mt/train.csv:javanese"
    assert int(jav.meta["corpus_lines"]) == 500  # train.csv only: valid/test are NusaX-Senti's evaluation text
    assert float(jav.meta["mlm_loss_after"]) < float(jav.meta["mlm_loss_before"])
    os.environ["RAYSFT_SFT_STORE"] = str(store)
    try:
        main(["lang", "--list"])
    finally:
        del os.environ["RAYSFT_SFT_STORE"]
    out = capsys.readouterr().out
    assert "2 language SFTs" in out and "nusax_mt/train.csv:javanese" in out
    from mlflow import MlflowClient

    c = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = c.search_runs([c.get_experiment_by_name("smoke-lang").experiment_id])
    by_lang = {r.data.params["language"]: r for r in runs if r.info.status == "FINISHED"}
    assert {"jav", "gn"} <= set(by_lang)
    assert by_lang["jav"].data.metrics["mlm_loss/after"] == pytest.approx(float(jav.meta["mlm_loss_after"]), abs=1e-5)


def test_train_and_eval_compose_store_sfts(store, tmp_path, capsys):
    folder = store / "lang" / "tiny-xlmr-L2-H32"
    out = tmp_path / "task"
    main(["train", "smoke", "--set", f"lang_sfts={folder}", "--out", str(out), "--quiet", "--no-track"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["composed"]["dev"]) == {"jav"} and metrics["lang_sft_missing"] == ["sun"]
    assert metrics["dev"]["jav"] == metrics["composed"]["dev"]["jav"]
    capsys.readouterr()
    results = tmp_path / "eval.json"
    main(["eval", "smoke", "--task-sft", str(out / "task_sft.safetensors"), "--lang-sfts", str(folder), "--out", str(results)])
    printed = capsys.readouterr().out
    assert "no SFT" in printed and "task-only vs composed" in printed
    again = json.loads(results.read_text())
    assert again["composed"] == metrics["composed"] and again["task_only"] == metrics["task_only"]


# --------------------------------------------------------------------------------------------------- bad input
def test_language_without_text_exits_2(capsys):
    needs_data()
    code, _, err = run_cli(["lang", "smoke", "--langs", "xx"], capsys)
    assert code == 2 and "no text for language 'xx'" in err and len(err.strip().splitlines()) == 1, err


def test_too_little_text_exits_2_with_the_count(capsys, tmp_path):
    (tmp_path / "americas_text" / "zz").mkdir(parents=True)
    (tmp_path / "americas_text" / "zz" / "a.txt").write_text("".join(f"line {i}\n" for i in range(57)))
    code, _, err = run_cli(["lang", "smoke", "--langs", "zz", "--set", f"data.dir={tmp_path}"], capsys)
    assert code == 2 and "found 57 lines, need at least 200" in err, err


def test_existing_store_entry_is_kept_without_force(capsys, tmp_path, monkeypatch):
    needs_data()
    monkeypatch.setenv("RAYSFT_SFT_STORE", str(tmp_path))
    target = tmp_path / "lang" / "tiny-xlmr-L2-H32" / "jav.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"precious")
    code, _, err = run_cli(["lang", "smoke", "--langs", "jav"], capsys)
    assert code == 2 and "pass --force" in err and target.read_bytes() == b"precious"


def test_language_sft_of_another_base_and_language_sft_as_task_sft_exit_2(gn_sft, capsys, tmp_path):
    run, delta, _, _, _ = gn_sft
    lang_dir = tmp_path / "langs"
    delta.save(lang_dir / "gn.safetensors")
    # A language SFT where a task SFT is expected.
    code, _, err = run_cli(["eval", "smoke", "--task-sft", str(lang_dir / "gn.safetensors"), "--lang-sfts", str(lang_dir)], capsys)
    assert code == 2 and "is a language SFT (gn), not a task SFT" in err and len(err.strip().splitlines()) == 1, err
    # A language SFT of another base model (4 layers, hidden 64) in the folder the evaluation composes from.
    from raysft.train.lang import prepare_lang

    other = prepare_lang(load_config("smoke", ["model=tiny:xlmr-L4-H64"]), "jav")
    SparseDelta.from_params(other.space, other.space.snapshot(), {"encoder.layer.3.output.dense.bias": torch.tensor([1])},
                            meta={"kind": "lang", "base_model": "tiny:xlmr-L4-H64", "base_fingerprint": other.space.fingerprint(),
                                  "base_params": json.dumps([[p.name, list(p.shape), "float32"] for p in other.space.maskable])},
                            ).save(lang_dir / "jav.safetensors")
    task = tmp_path / "task.safetensors"
    SparseDelta({}, {}, {"kind": "task", "task": "sa"}).save(task)
    code, _, err = run_cli(["eval", "smoke", "--task-sft", str(task), "--lang-sfts", str(lang_dir)], capsys)
    assert code == 2 and "was made for base model tiny:xlmr-L4-H64" in err and len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
@pytest.mark.slow
def test_language_sft_on_multilingual_e5_small_lowers_heldout_loss():
    """A small LT-SFT language SFT for Guaraní on the real multilingual-e5-small (fresh MLM head fitted first)."""
    needs_data()
    from raysft.train.lang import prepare_lang, train_lang_sft

    cfg = load_config("nli-cpu", [
        "lang.max_train_lines=192", "lang.max_heldout_lines=48", "lang.max_seq_len=48", "lang.head_warmup_steps=20",
        # a short dense phase (4 steps) only picks the entries; the 12 sparse steps lower the loss
        "lang.dense.batch_size=8", "lang.sparse.batch_size=8", "lang.dense.max_steps=4", "lang.sparse.epochs=0.5",
        "lang.dense.lr=3e-4", "lang.sparse.lr=3e-4", "lang.dense.warmup_ratio=0", "lang.sparse.warmup_ratio=0",
    ])
    run = prepare_lang(cfg, "gn")
    delta, metrics = train_lang_sft(run)
    loss = metrics["mlm_loss"]
    assert loss["after"] < loss["before"] and loss["after"] < loss["head_only"], loss
    assert delta.nnz() == metrics["k"] == round(0.05 * run.space.n)


def test_export_copies_the_language_sfts_and_its_card_shows_composition(tmp_path):
    import yaml

    from raysft.export.card import composition_lines
    from raysft.export.run import language_sfts

    store = tmp_path / "store"
    store.mkdir()
    (store / "jav.safetensors").write_bytes(b"jav-sft")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"lang_sfts": f"store:{store}"}))
    staging = tmp_path / "export"
    staging.mkdir()
    metrics = {"lang_sfts": ["jav"], "metric": "f1", "lang_sft_missing": ["sun"],
               "task_only": {"dev": {"jav": {"f1": 0.5}, "sun": {"f1": 0.4}}}, "composed": {"dev": {"jav": {"f1": 0.56}}}}
    assert language_sfts(metrics, config, staging) == {"jav": "lang_sfts/jav.safetensors"}
    assert (staging / "lang_sfts" / "jav.safetensors").read_bytes() == b"jav-sft"
    card = "\n".join(composition_lines(metrics))
    assert "| jav | 0.5000 | 0.5600 | +0.0600 |" in card and "No language SFT for sun" in card
    config.write_text(yaml.safe_dump({"lang_sfts": "hub:cambridgeltl/xlmr-lang-sft-{lang}-small"}))
    assert language_sfts(metrics, config, staging) == {"jav": "cambridgeltl/xlmr-lang-sft-jav-small"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_selector_trains_a_language_sft(method):
    """Any selector makes a language SFT: exactly its K entries (``full``: the dense phase's own diff), no head diffs,
    the frozen decoder untouched, and the encoder back at θ0 when the recipe returns."""
    needs_data()
    from raysft.train.lang import prepare_lang, train_lang_sft

    cfg = load_config("smoke", [
        "lang.max_train_lines=48", "lang.max_heldout_lines=16", "lang.max_seq_len=32", "lang.head_warmup_steps=2",
        "lang.dense.max_steps=3", "lang.sparse.max_steps=3", "mask_phase.max_steps=3",
    ])
    run = prepare_lang(cfg, "jav", method)
    theta0 = run.space.snapshot()
    decoder0 = run.model.get_output_embeddings().weight.detach().clone()
    delta, metrics = train_lang_sft(run)
    assert delta.meta["kind"] == "lang" and delta.meta["method"] == method
    assert delta.nnz() == metrics["k"] and all(not n.startswith("lm_head") for n in delta.diffs)
    assert torch.equal(run.model.get_output_embeddings().weight, decoder0)
    # The recipe ends at θ0 with the final head (its head_only measurement): nothing of the encoder was left changed.
    assert all(torch.equal(run.space.param(n), t) for n, t in theta0.items())
    if method == "full":
        assert any(bool(v.ne(0).any()) for _, v in delta.diffs.values())  # the dense phase's own diff
    elif run.method.uses_k:
        assert metrics["k"] == round(0.05 * run.space.n)
