"""The hub code path of every task, offline: snapshots laid out like the real hub repos (tests/hub_layout.py) in a
private Hugging Face cache give the same examples as the same rows in local files; data.source auto picks the local
folder when there is one, else the hub; a dataset missing from the cache is one line naming `raysft data fetch`."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

from raysft.cli import main  # noqa: E402
from raysft.errors import RaysftError  # noqa: E402
from raysft.tasks import TaskData, get_task, load_text  # noqa: E402
from raysft.tasks import base as tasks_base  # noqa: E402
from raysft.tasks import hub  # noqa: E402
from tests.hub_layout import write_nli, write_nusax  # noqa: E402


def rows(ds):
    cols = [c for c in ("text", "text_pair", "label") if c in ds.column_names]
    return [tuple(r[c] for c in cols) for r in ds]


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """A private, empty hub cache and datasets cache; offline; no local data folder anywhere."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("RAYSFT_CACHE", str(tmp_path / "raysft_cache"))
    monkeypatch.delenv("RAYSFT_DATA_DIR", raising=False)
    monkeypatch.setattr(tasks_base, "repo_root", lambda: tmp_path / "clone")  # a fresh clone: no ../shared/data
    monkeypatch.chdir(tmp_path)
    return cache, tmp_path / "local"


def test_nli_hub_gives_the_local_examples(hub_env):
    cache, local = hub_env
    made = write_nli(cache, local)
    nli = get_task("nli")
    hub_cfg, local_cfg = TaskData(source="hub"), TaskData(data_dir=local, source="local")
    train = nli.load_train(hub_cfg)
    assert rows(train) == rows(nli.load_train(local_cfg))  # the unlabeled hub pair is dropped
    assert len(train) == len(made["train"]) and train.features == nli.load_train(local_cfg).features
    assert rows(train)[0] == (made["train"][0][0], made["train"][0][1], made["train"][0][2])
    for lang, split in (("aym", "dev"), ("gn", "test"), ("eng", "dev"), ("eng", "test")):
        h, lo = nli.load_eval(lang, split, hub_cfg), nli.load_eval(lang, split, local_cfg)
        assert rows(h) == rows(lo) and len(h) > 0, (lang, split)
    assert nli.target_langs(hub_cfg) == list(hub.AMERICAS_LANGS)
    assert len(nli.load_eval("aym", "test", TaskData(source="hub", max_eval_examples=4))) == 4


def test_sa_hub_gives_the_local_examples(hub_env):
    cache, local = hub_env
    write_nusax(cache, local)
    sa = get_task("sa")
    hub_cfg, local_cfg = TaskData(source="hub"), TaskData(data_dir=local, source="local")
    for src in ("eng", "ind"):
        h = sa.load_train(TaskData(source="hub", source_lang=src))
        assert rows(h) == rows(sa.load_train(TaskData(data_dir=local, source="local", source_lang=src)))
        assert len(h) == 220
    for lang, split in (("jav", "dev"), ("sun", "test"), ("eng", "test")):
        assert rows(sa.load_eval(lang, split, hub_cfg)) == rows(sa.load_eval(lang, split, local_cfg))
    assert sa.target_langs(TaskData(source="hub", target_langs=["jav", "sun"])) == ["jav", "sun"]
    with pytest.raises(RaysftError, match="unknown sa language 'xx'"):
        sa.load_eval("xx", "dev", hub_cfg)


def test_mlm_hub_text_is_nusax_mt_train(hub_env):
    cache, local = hub_env
    write_nusax(cache, local)
    h_train, h_held = load_text("jav", TaskData(source="hub"))
    l_train, l_held = load_text("jav", local)  # nusax_mt/train.csv, column javanese
    assert h_train["text"] == l_train["text"] and h_held["text"] == l_held["text"]
    assert len(h_train) + len(h_held) == 220
    with pytest.raises(RaysftError, match="no hub text for language 'gn'.*americas_text"):
        load_text("gn", TaskData(source="hub"))


def test_auto_reads_the_local_folder_when_there_is_one_else_the_hub(hub_env, monkeypatch):
    cache, local = hub_env
    write_nusax(cache, local, langs=("eng", "jav"))
    sa = get_task("sa")
    assert TaskData().source == "auto" and TaskData().use_hub()  # fresh clone: no data folder
    hub_rows = rows(sa.load_eval("jav", "dev", TaskData()))
    (local / "nusax_senti" / "jav" / "valid.csv").write_text("id,text,label\n0,only local,positive\n")
    monkeypatch.setenv("RAYSFT_DATA_DIR", str(local))
    assert not TaskData().use_hub()
    assert rows(sa.load_eval("jav", "dev", TaskData())) == [("only local", 2)] != hub_rows
    monkeypatch.setenv("RAYSFT_DATA_DIR", str(local / "missing"))
    with pytest.raises(RaysftError, match="RAYSFT_DATA_DIR"):
        TaskData().use_hub()  # a folder that was named and is missing is an error, not a switch to the hub


def test_missing_hub_dataset_is_one_line_naming_fetch(hub_env):
    with pytest.raises(RaysftError) as e:
        get_task("sa").load_train(TaskData(source="hub"))
    msg = str(e.value)
    assert "indonlp/NusaX-senti" in msg and "raysft data fetch" in msg and "\n" not in msg
    with pytest.raises(RaysftError, match="nobody/no-such-dataset.*raysft data fetch"):
        hub.snapshot(hub.HubRepo("nobody/no-such-dataset", "main", ("*",), "nothing"))


def test_fresh_clone_without_data_fails_in_one_line_naming_fetch(hub_env, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "smoke", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert "raysft data fetch" in err and "indonlp/NusaX-senti" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_data_fetch_reports_cached_snapshots_and_fails_cleanly_offline(hub_env, capsys):
    cache, local = hub_env
    with pytest.raises(SystemExit) as exc:
        main(["data", "fetch", "smoke"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "indonlp/NusaX-senti" in err
    write_nusax(cache, local, langs=("eng", "jav", "sun"), sizes={"train": 3, "dev": 2, "test": 2})
    main(["data", "fetch", "smoke"])
    out = capsys.readouterr().out
    assert "cached  indonlp/NusaX-senti@refs/convert/parquet: 9 files" in out
    assert "read one row of each of the 7 splits a run reads" in out  # eng train; jav, sun, eng dev and test


def test_doctor_data_check_sees_this_nodes_hub_cache(hub_env):
    from raysft.cluster.doctor import _data_reachable
    from raysft.config import load_config

    cache, local = hub_env
    cfg = load_config("smoke", ["data.source=hub"]).model_dump(mode="json")
    ok, detail = _data_reachable(cfg)
    assert not ok and "raysft data fetch" in detail
    write_nusax(cache, local, langs=("eng", "jav", "sun"), sizes={"train": 3, "dev": 2, "test": 2})
    ok, detail = _data_reachable(cfg)
    assert ok and "hub: indonlp/NusaX-senti@refs/convert/parquet" in detail and "jav, sun" in detail


def test_xnli_en_reads_with_the_card_the_hub_serves(hub_env):
    """The hub's XNLI card declares train, test and validation for every config (all_languages first, en among the
    15 languages); raysft fetches en's validation and test only, so the card names files the snapshot lacks. Read
    through the whole card, datasets failed here (every nli run evaluates English); the run reads its split's files."""
    import yaml

    cache, local = hub_env
    made = write_nli(cache, local)
    snap = hub.snapshot(hub.XNLI, download=False)
    meta = yaml.safe_load((snap / "README.md").read_text().split("---")[1])
    configs = {c["config_name"]: {d["split"]: d["path"] for d in c["data_files"]} for c in meta["configs"]}
    assert meta["configs"][0]["config_name"] == "all_languages" and len(configs) == 16
    assert configs["en"] == {"train": "en/train-*", "test": "en/test-*", "validation": "en/validation-*"}
    assert not list(snap.glob("en/train-*")) and not (snap / "de").exists()  # kept out by the allow_patterns
    nli = get_task("nli")
    for split in ("dev", "test"):
        assert rows(nli.load_eval("eng", split, TaskData(source="hub"))) == made["xnli"][split]
        assert rows(nli.load_eval("gn", split, TaskData(source="hub"))) == made["eval"][("gn", split)]


NLI_FETCH = ["data", "fetch", "nli-cpu", "--set", "data.target_langs=[aym,gn]"]


def test_data_fetch_and_doctor_read_one_row_of_every_split_a_run_reads(hub_env, capsys, monkeypatch):
    from raysft.cluster.doctor import _data_reachable
    from raysft.config import load_config

    cache, local = hub_env
    write_nli(cache, local)
    main(NLI_FETCH)
    out = capsys.readouterr().out
    assert "read one row of each of the 7 splits a run reads" in out  # MultiNLI train; aym, gn, eng dev and test
    cfg = load_config("nli-cpu", ["data.source=hub", "data.target_langs=[aym,gn]"]).model_dump(mode="json")
    ok, detail = _data_reachable(cfg)
    assert ok and "one row read of each of its 7 splits" in detail and "aym, gn" in detail, detail

    # A split's file missing from the snapshot (a download cut short): one line naming the repo, the split, the fix.
    gone = hub.snapshot(hub.AMERICAS_NLI, download=False) / "gn" / "test-00000-of-00001.parquet"
    content = gone.read_bytes()
    gone.unlink()
    with pytest.raises(SystemExit) as exc:
        main(NLI_FETCH)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert "hub dataset nala-cub/americas_nli config gn split test" in err and "raysft data fetch" in err, err
    ok, detail = _data_reachable(cfg)
    assert not ok and "nala-cub/americas_nli config gn split test" in detail and "\n" not in detail, detail

    # Where the hub is reachable (faked: the forced download puts the file back), data fetch downloads the repo
    # again once and reads the split; a hub that cannot be reached leaves the split's own line.
    real_snapshot = hub.snapshot

    def hub_answers(repo, *, download=True, force=False):
        if force:
            gone.write_bytes(content)
        return real_snapshot(repo, download=download)

    def hub_away(repo, *, download=True, force=False):
        if force:
            raise RaysftError(f"cannot get hub dataset {repo} (ConnectionError): ...")
        return real_snapshot(repo, download=download)

    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "snapshot", hub_away)
    with pytest.raises(SystemExit) as exc:
        main(NLI_FETCH)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "config gn split test" in err and len(err.splitlines()) == 1, err
    monkeypatch.setattr(hub, "snapshot", hub_answers)
    main(NLI_FETCH)
    out = capsys.readouterr().out
    assert "split test cannot be read: fetching nala-cub/americas_nli again" in out and "7 splits" in out, out


def test_a_truncated_parquet_is_one_line_naming_its_split(hub_env, capsys):
    cache, local = hub_env
    write_nli(cache, local)
    cut = hub.snapshot(hub.XNLI, download=False) / "en" / "validation-00000-of-00001.parquet"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # as a crash mid-download leaves it
    with pytest.raises(SystemExit) as exc:
        main(NLI_FETCH)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert "hub dataset facebook/xnli config en split validation" in err and "raysft data fetch" in err, err
    with pytest.raises(RaysftError, match="facebook/xnli config en split validation"):  # and so does a run
        get_task("nli").load_eval("eng", "dev", TaskData(source="hub"))


def test_a_split_the_card_does_not_declare_is_one_line(hub_env):
    cache, local = hub_env
    write_nli(cache, local)
    with pytest.raises(RaysftError, match="declares no split train for config aym"):
        hub.load_split(hub.HubSplit(hub.AMERICAS_NLI, "train", config="aym"))
    with pytest.raises(RaysftError, match="declares no config xx .*all_languages, aym"):
        hub.check_split(hub.HubSplit(hub.AMERICAS_NLI, "dev", config="xx"))
