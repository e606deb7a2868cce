"""`raysft report`: the method × language table that the SFT papers print, from an experiment's MLflow runs, with the
paper's numbers beside ours where the experiment reproduces one of its tables (:mod:`raysft.results.paper_tables`).

Which runs: the children of the experiment's latest sweep (else its `raysft train` runs). Each method gets one column:
its best configuration measured over several seeds, preferring fresh ones:
1. a configuration `raysft confirm` reran (its new seeds: the sweep did not select on them), the best mean dev;
2. else a racing trial (``tune.seeds`` > 1: the sweep's own seeds), most seeds first, then the best mean dev;
3. else the best single-seed trial by dev (no interval: one seed ranks nothing, and the table says so).
A cell is the mean over that configuration's seeds ± the half-width of the t-interval of that mean (scipy, through
:func:`raysft.stats.paired_test` on the scores themselves); the average row averages each seed's targets first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from raysft.errors import RaysftError
from raysft.outcome import SEED_LANG
from raysft.results.paper_tables import TABLES, PaperTable, table_for
from raysft.results.ranking import DESCRIBE_SKIP, RunRow, experiment_runs, latest_verdict
from raysft.stats import CONFIDENCE, paired_test
from raysft.tracking import record



@dataclass(frozen=True)
class Cell:
    mean: float | None
    half: float | None = None  # half-width of the interval of the mean (None: fewer than 2 seeds)
    n: int = 0
    partial: bool = False  # one seed of several only (a racing trial logged before per-seed languages were)

    def text(self, latex: bool = False) -> str:
        if self.mean is None:
            return "–" if not latex else "--"
        out = f"{self.mean:.3f}"
        if self.half is not None:
            out += f" $\\pm$ {self.half:.3f}" if latex else f" ± {self.half:.3f}"
        return out + ("$^\\ddagger$" if latex else " ‡") * self.partial


def cell_of(values: list[float], confidence: float = CONFIDENCE, partial: bool = False) -> Cell:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return Cell(None)
    t = paired_test(vals, confidence)
    half = (t.high - t.low) / 2 if t.low is not None and t.high is not None else None
    return Cell(t.mean, half, t.n, partial)


@dataclass
class Column:
    method: str
    config: str  # which configuration (trial id and its searched values)
    source: str  # "confirm", "racing" or "one seed"
    seeds: list[int]
    dev: float | None  # its mean dev (what picked it)
    cells: dict[str, Cell] = field(default_factory=dict)
    average: Cell = Cell(None)

    def describe(self) -> str:
        seeds = ", ".join(map(str, self.seeds))
        how = {"confirm": f"{len(self.seeds)} new seeds ({seeds}) from raysft confirm",
               "racing": f"{len(self.seeds)} seeds ({seeds}) raced in the sweep",
               "one seed": f"one seed ({seeds}): no interval; confirm it (raysft confirm) to get one"}[self.source]
        return f"{self.method}: {self.config}; {how}; mean dev {self.dev:.4f}" if self.dev is not None else \
            f"{self.method}: {self.config}; {how}"


@dataclass
class MethodReport:
    experiment: str
    split: str
    metric: str
    model: str
    langs: list[str]
    columns: list[Column]
    paper: PaperTable | None
    paper_note: str
    confidence: float

    # ------------------------------------------------------------------------------------------------ rows
    def header(self) -> list[str]:
        return ["language", *(c.method for c in self.columns), *(self._paper_titles())]

    def _paper_titles(self) -> list[str]:
        return [f"{t} (report)" for t in self.paper.columns] if self.paper else []

    def rows(self, latex: bool = False) -> list[list[str]]:
        out = []
        for lang in self.langs:
            row = [lang, *(c.cells.get(lang, Cell(None)).text(latex) for c in self.columns)]
            if self.paper:
                row += [_paper(self.paper.scores[t].get(lang)) for t in self.paper.columns]
            out.append(row)
        avg = ["average", *(c.average.text(latex) for c in self.columns)]
        if self.paper:
            avg += [_paper(self.paper.average.get(t)) for t in self.paper.columns]
        return out + [avg]

    def notes(self) -> list[str]:
        out = [c.describe() for c in self.columns]
        if any(cell.partial for c in self.columns for cell in c.cells.values()):
            out.append("‡ the last seed's score only: the run was logged before racing trials kept each seed's "
                       "languages (its average is over every seed)")
        if self.paper:
            out.append(f"report columns: {self.paper.caption}; their average is the table's own" + (
                "" if set(self.langs) == set(next(iter(self.paper.scores.values()))) else
                " (over its languages, not only those shown)") + (f"; {self.paper_note}" if self.paper_note else ""))
        return out

    def title(self) -> str:
        return (f"{self.experiment}: {self.split} {self.metric} per target language, each method's best configuration "
                f"(mean over its seeds ± half-width of the {self.confidence:.0%} t-interval of that mean)")

    # ------------------------------------------------------------------------------------------------ formats
    def markdown(self) -> str:
        head = self.header()
        lines = [f"**{self.title()}**", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        rows = self.rows()
        for row in rows[:-1]:
            lines.append("| " + " | ".join(row) + " |")
        lines.append("| " + " | ".join(f"**{v}**" for v in rows[-1]) + " |")
        lines += [""] + [f"- {n}" for n in self.notes()]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        ours, theirs = len(self.columns), len(self._paper_titles())
        spec = "l" + "r" * ours + ("|" + "r" * theirs if theirs else "")
        head = [_tex(h) for h in self.header()]
        rows = self.rows(latex=True)
        lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
                 " & ".join(head) + " \\\\", "\\midrule"]
        lines += [" & ".join(_tex(v) if i == 0 else v for i, v in enumerate(r)) + " \\\\" for r in rows[:-1]]
        lines += ["\\midrule", " & ".join(_tex(v) if i == 0 else v for i, v in enumerate(rows[-1])).replace(
            "average", "Average", 1) + " \\\\", "\\bottomrule", "\\end{tabular}",
            f"\\caption{{{_tex(self.title())}. " + " ".join(_tex(n) + "." for n in self.notes()) + "}",
            "\\end{table}"]
        return "\n".join(lines) + "\n"


def _paper(v: float | None) -> str:
    return "–" if v is None else f"{v:g}"


def _tex(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("_", "\\_"), ("%", "\\%"), ("&", "\\&"), ("#", "\\#"), ("±", "$\\pm$"),
                 ("‡", "$^\\ddagger$"), ("–", "--"), ("×", "$\\times$")):
        text = text.replace(a, b)
    return text


# ---------------------------------------------------------------------------------------------------- reading
def _seed(r: RunRow) -> int | None:
    try:
        return int(r.tags.get("raysft.confirm_seed") or r.params["seed"])
    except (KeyError, ValueError):
        return None


def _finished(r: RunRow) -> bool:
    return r.status == "FINISHED" and isinstance(r.metrics.get(record.DEFAULT_METRIC), float)


def _racing_seeds(r: RunRow) -> list[int]:
    out = []
    for key in r.metrics:
        if key.startswith("seed_dev/"):
            try:
                out.append(int(key[len("seed_dev/"):]))
            except ValueError:
                continue
    return sorted(out)


def _describe(r: RunRow, varying: set[str]) -> str:
    what = r.describe(varying - DESCRIBE_SKIP - {"seed"})
    what = what[len(r.method):].strip() or "its defaults"
    who = "the default" if r.tags.get("raysft.default") == "true" else "trial"
    return f"{who} {r.trial_id or r.run_id[:8]} ({what})"


def _column(method: str, runs: list[RunRow], source: str, label: RunRow, varying: set[str], langs: list[str],
            split: str, metric: str, confidence: float) -> Column:
    """One configuration's column: ``runs`` are its runs, one per seed (confirm), or its one run (racing, one seed)."""
    if source == "racing":
        (run,) = runs
        seeds = _racing_seeds(run)
        cells = {}
        for lang in langs:
            per_seed = [run.metrics.get(f"{SEED_LANG}{split}/{lang}/{s}") for s in seeds]
            if all(v is not None for v in per_seed):
                cells[lang] = cell_of(per_seed, confidence)
            else:
                cells[lang] = cell_of([run.metrics.get(f"{metric}/{split}/{lang}")], confidence, partial=True)
        average = cell_of([run.metrics.get(f"seed_{split}/{s}") for s in seeds], confidence)
        dev = sum(run.metrics[f"seed_dev/{s}"] for s in seeds) / len(seeds)
    else:
        seeds = sorted(s for s in (_seed(r) for r in runs) if s is not None)
        cells = {lang: cell_of([r.metrics.get(f"{metric}/{split}/{lang}") for r in runs], confidence) for lang in langs}
        average = cell_of([r.metrics.get(f"avg/{split}") for r in runs], confidence)
        dev = sum(r.metrics[record.DEFAULT_METRIC] for r in runs) / len(runs)
    return Column(method, _describe(label, varying), source, seeds, dev, cells, average)


def method_report(tracking_uri: str | None, experiment: str, split: str = "test", paper: str = "auto",
                  confidence: float | None = None) -> MethodReport:
    """The method × language table of ``experiment`` (see the module's docstring). ``paper``: "auto" (the report's
    table of the experiment's task when its base model is the report's), "none", or a key of
    :data:`raysft.results.paper_tables.TABLES`. ``confidence``: of the intervals (default: the sweep's
    ``tune.confidence``, else 95 %)."""
    if split not in ("dev", "test"):
        raise RaysftError(f"--split {split}: use dev or test")
    if paper not in ("auto", "none", *TABLES):
        raise RaysftError(f"--paper {paper}: use auto, none or one of {', '.join(TABLES)}")
    _, c, exp, rows = experiment_runs(tracking_uri, experiment, ("trial", "train", "confirm"))

    recorded = latest_verdict(c, exp.experiment_id)
    confidence = confidence or (recorded.confidence if recorded is not None else None) or CONFIDENCE
    if recorded is not None:
        parent = recorded.parent.info.run_id
        runs = [r for r in rows if r.tags.get("mlflow.parentRunId") == parent and _finished(r)]
    else:
        runs = [r for r in rows if r.kind == "train" and _finished(r)]
    if not runs:
        raise RaysftError(f"experiment '{exp.name}' has no finished run to report: let its sweep finish first")
    metric = next((r.params["metric"] for r in runs if r.params.get("metric")), "acc")
    targets = next((r.params["target_langs"] for r in runs if r.params.get("target_langs")), "")
    langs = [lang for lang in targets.split(",") if lang and lang != "all"] or sorted(
        {k.rsplit("/", 1)[1] for r in runs for k in r.metrics if k.startswith(f"{metric}/{split}/")} - {"avg"})
    model = next((r.params["model"] for r in runs if r.params.get("model")), "?")
    task = next((r.params["task"] for r in runs if r.params.get("task")), "?")
    keys = {k for r in runs for k in r.params}
    varying = {k for k in keys if len({r.params.get(k) for r in runs}) > 1}

    by_trial = {r.trial_id: r for r in runs if r.kind in ("trial", "train") and r.trial_id}
    columns = []
    for method in dict.fromkeys(r.method for r in reversed(runs)):  # the store lists newest first: sweep order
        mine = [r for r in runs if r.method == method]
        confirmed: dict[str, list[RunRow]] = {}
        for r in mine:
            if r.kind == "confirm":
                confirmed.setdefault(r.tags.get("raysft.confirm_config", "?"), []).append(r)
        if confirmed:
            label, group = max(confirmed.items(), key=lambda kv: (len(kv[1]), _mean_dev(kv[1])))
            columns.append(_column(method, group, "confirm", by_trial.get(label, group[0]), varying, langs, split,
                                   metric, confidence))
            continue
        trials = [r for r in mine if r.kind != "confirm"]
        raced = [r for r in trials if len(_racing_seeds(r)) >= 2]
        if raced:
            best = max(raced, key=lambda r: (len(_racing_seeds(r)), r.metrics[record.DEFAULT_METRIC]))
            columns.append(_column(method, [best], "racing", best, varying, langs, split, metric, confidence))
        else:
            best = max(trials, key=lambda r: r.metrics[record.DEFAULT_METRIC])
            columns.append(_column(method, [best], "one seed", best, varying, langs, split, metric, confidence))

    table, note = None, ""
    if paper == "auto":
        table = table_for(task, model)
    elif paper != "none":
        table = TABLES[paper]
        if table.task != task:
            raise RaysftError(f"--paper {paper} reports the {table.task} task; experiment '{exp.name}' is {task}: "
                              f"use --paper none or a {task} table")
        if model != table.model:
            note = f"its base model is {table.model}, this experiment's {model}: not a reproduction"
    return MethodReport(exp.name, split, metric, model, langs, columns, table, note, confidence)


def _mean_dev(runs: list[RunRow]) -> float:
    return sum(r.metrics[record.DEFAULT_METRIC] for r in runs) / len(runs)
