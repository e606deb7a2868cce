"""Best against default: the one comparison that `raysft tune`'s trial lines and table, `raysft compare`, the MLflow
parent run, `raysft confirm` and `raysft export --best` all report, and its one verdict (:func:`judge`, the paired
test of :mod:`raysft.stats`). Pure Python (no Ray, no MLflow): callers turn their own records (Tune results, MLflow
runs) into :class:`Row` s."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field

from raysft.stats import CONFIDENCE, TEST_NAME, PairedTest, paired_test


@dataclass
class Row:
    id: str
    method: str
    dev: float | None  # the objective: the targets' average dev score
    test: float | None = None
    default: bool = False  # the method's space at its defaults (the sweep's first trials)
    final: bool = True  # a full composed evaluation (False: stopped early, its dev is an intermediate score)
    label: str = ""  # what the row is, for humans (its configuration)
    seed: int | None = None  # the run's seed (None: the sweep's own seed, the same for every trial)


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


# ------------------------------------------------------------------------------------------------------ the verdict
@dataclass(frozen=True)
class Verdict:
    """A searched configuration against the default, paired by seed: the one answer every report prints and every
    record keeps. Dev decides (it is what the search ranks on); test is reported beside it and never decides."""

    best: str | None  # the configuration tested (a sweep trial's id), None when there is none to test
    default: str | None  # the default configuration it is tested against
    dev: PairedTest  # best − default on dev at each seed both finished
    test: PairedTest  # the same on test
    seeds: tuple[int, ...] = ()  # the seeds paired on dev
    failed: tuple[tuple[str, int], ...] = ()  # (configuration, seed) runs that failed or never reported: left out

    @property
    def significant(self) -> bool:
        """The best configuration beats the default beyond the seeds' noise: its dev CI lies above 0."""
        return self.dev.significant

    @property
    def confidence(self) -> float:
        return self.dev.confidence

    def judgement(self) -> str:
        if self.best is None or self.default is None:
            return "nothing to compare (no default or no searched configuration finished)"
        if self.dev.n == 0:
            return "no seed at which both finished: nothing to test"
        if self.dev.n == 1:
            # a single pair has no spread to measure noise against: no interval, no test, whatever its size
            return "one seed cannot tell (no CI): rerun both with new seeds (raysft confirm) to test it"
        if self.dev.significant:
            return "beats the default beyond the seeds' noise"
        if self.dev.ruled_out:
            return "worse than the default beyond the seeds' noise"
        return f"NOT beyond the seeds' noise (the {self.confidence:.0%} CI includes 0)"

    def line(self) -> str:
        """``t7 vs default d1, dev +0.023, 95% CI [+0.006, +0.040], t=5.81, p=0.028 (paired t-test over seeds, n=3,
        better at 3) · test … → beats the default beyond the seeds' noise``"""
        if self.best is None or self.default is None or self.dev.n == 0:
            return self.judgement() + self._left_out()
        out = f"{self.best} vs default {self.default}, dev {self.dev.line()}"
        if self.test.n:
            out += f" · test {self.test.line()}"
        return out + f" → {self.judgement()}" + self._left_out()

    def _left_out(self) -> str:
        if not self.failed:
            return ""
        runs = ", ".join(f"{label} seed {seed}" for label, seed in self.failed)
        return f" · left out of the test, failed or never reported: {runs}"

    def metrics(self, prefix: str) -> dict[str, float]:
        """Its numbers as MLflow metrics (NaN where there is none, so that an earlier verdict's number is replaced)."""
        out: dict[str, float] = {f"{prefix}/n_seeds": float(self.dev.n), f"{prefix}/significant": float(self.significant)}
        for split, t in (("dev", self.dev), ("test", self.test)):
            for name, v in (("effect", t.mean), ("ci_low", t.low), ("ci_high", t.high), ("p", t.p), ("t", t.statistic)):
                out[f"{prefix}/{split}_{name}"] = float(v) if v is not None and math.isfinite(v) else math.nan
        return out

    def tags(self, prefix: str) -> dict[str, str]:
        """Its text and its whole record as MLflow tags (``raysft.<prefix>.json`` reads back with :meth:`from_json`)."""
        return {f"raysft.{prefix}": self.line()[:5000], f"raysft.{prefix}.test": TEST_NAME,
                f"raysft.{prefix}.confidence": str(self.confidence), f"raysft.{prefix}.best": self.best or "",
                f"raysft.{prefix}.significant": str(self.significant).lower(),
                f"raysft.{prefix}.seeds": ",".join(map(str, self.seeds)), f"raysft.{prefix}.json": self.to_json()}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Verdict:
        d = json.loads(text)
        return cls(d["best"], d["default"], PairedTest(**d["dev"]), PairedTest(**d["test"]), tuple(d["seeds"]),
                   tuple((str(c), int(s)) for c, s in d["failed"]))


def judge(best: str | None, best_runs: dict[int | None, Row], default: str | None, default_runs: dict[int | None, Row],
          confidence: float = CONFIDENCE, failed: list[tuple[str, int]] | tuple = ()) -> Verdict:
    """The verdict of ``best`` against ``default`` from their finished runs by seed: the paired test of
    :mod:`raysft.stats` over the per-seed differences, on dev (it decides) and on test. Pairing by seed: a seed fixes
    the data order, the head's init and the dropout draws of both runs, so what the seed moves cancels in the
    difference (comparing the two means against their own spreads counts that shared effect as noise twice)."""
    gains: dict[str, list[float]] = {"dev": [], "test": []}
    seeds = []
    for seed in sorted(set(best_runs) & set(default_runs), key=lambda s: (s is None, s or 0)):
        for split in gains:
            b, d = _num(getattr(best_runs[seed], split)), _num(getattr(default_runs[seed], split))
            if b is not None and d is not None:
                gains[split].append(b - d)
                if split == "dev" and seed is not None:
                    seeds.append(seed)
    return Verdict(best, default, paired_test(gains["dev"], confidence), paired_test(gains["test"], confidence),
                   tuple(seeds), tuple(failed))


# ------------------------------------------------------------------------------------------------------ a sweep
@dataclass
class Outcome:
    best: Row | None  # the best searched (non-default) trial with a full evaluation
    default: Row | None  # the best default trial with a full evaluation (the baseline the sweep must beat)
    defaults: list[Row] = field(default_factory=list)
    confidence: float = CONFIDENCE
    # seed → run of the best and of the default (one run each, or a racing sweep's seeds): what the verdict pairs
    best_runs: dict[int | None, Row] = field(default_factory=dict)
    default_runs: dict[int | None, Row] = field(default_factory=dict)

    @property
    def dev_gain(self) -> float | None:
        if self.best is None or self.default is None or _num(self.best.dev) is None or _num(self.default.dev) is None:
            return None
        return self.best.dev - self.default.dev

    @property
    def test_gain(self) -> float | None:
        if self.best is None or self.default is None or _num(self.best.test) is None or _num(self.default.test) is None:
            return None
        return self.best.test - self.default.test

    @property
    def beats_default(self) -> bool | None:
        g = self.dev_gain
        return None if g is None else g > 0

    def verdict(self) -> Verdict:
        """The best searched configuration against the best default, paired by seed (:func:`judge`): at the
        sweep's one seed it says that one seed cannot tell; racing, it tests their seeds."""
        best, default = self.best, self.default
        best_runs = self.best_runs or ({best.seed: best} if best else {})
        default_runs = self.default_runs or ({default.seed: default} if default else {})
        return judge(best and best.id, best_runs, default and default.id, default_runs, self.confidence)

    def line(self) -> str:
        """``best dev 0.621 vs default 0.600 (+0.021) · test 0.580 vs 0.575 (+0.005) [sc-sft c vs lt-sft default a]
        → one seed cannot tell (no CI): …``"""
        if self.default is None and self.best is None:
            return "best vs default: no trial has finished yet"
        if self.default is None:
            return f"best dev {_f(self.best.dev)}: no default trial finished (nothing to compare with)"
        if self.best is None:
            return f"default dev {_f(self.default.dev)} ({self.default.method}): no searched trial finished yet"
        seeds = (f" (mean of {len(self.best_runs)} vs {len(self.default_runs)} seeds)"
                 if max(len(self.best_runs), len(self.default_runs)) > 1 else "")
        out = f"best dev {_f(self.best.dev)} vs default {_f(self.default.dev)} ({_g(self.dev_gain)}){seeds}"
        if self.test_gain is not None:
            out += f" · test {_f(self.best.test)} vs {_f(self.default.test)} ({_g(self.test_gain)})"
        out += f" [{self.best.method} {self.best.id} vs {self.default.method} default {self.default.id}]"
        v = self.verdict()
        # the gains are printed above: only the test's numbers when it has them (two seeds or more)
        if v.dev.n > 1:
            return out + f" → paired over seeds: dev {v.dev.line()} → {v.judgement()}"
        return out + f" → {v.judgement()}"

    def metrics(self) -> dict[str, float]:
        """The numbers as MLflow metric names (the parent run of a sweep)."""
        out: dict[str, float] = {}
        for prefix, row in (("default", self.default), ("best_searched", self.best)):
            if row is not None:
                for split in ("dev", "test"):
                    v = _num(getattr(row, split))
                    if v is not None:
                        out[f"{prefix}/{split}"] = v
        for split, g in (("dev", self.dev_gain), ("test", self.test_gain)):
            if g is not None:
                out[f"best_vs_default/{split}"] = g
        return out


def _f(x) -> str:
    return "–" if _num(x) is None else f"{x:.3f}"


def _g(x) -> str:
    return "–" if x is None else f"{x:+.3f}"


def versus_default(rows: list[Row], confidence: float = CONFIDENCE) -> Outcome:
    """The best searched configuration against the best default, both with full evaluations (a trial stopped early
    has only an intermediate dev score, on a partly trained model: it is never the best nor the default). A
    configuration is a trial id; a racing sweep's trial has one row per seed: the best is the one with the most
    seeds, then the best mean dev (a racing configuration with fewer seeds was stopped, or is still running), and
    the verdict pairs the two by seed. With one row per trial this is the best dev."""
    groups: dict[str, dict[int | None, Row]] = {}
    for r in rows:
        if r.final and _num(r.dev) is not None:
            groups.setdefault(r.id, {})[r.seed] = r
    ranked = sorted(groups.values(), key=lambda runs: (-len(runs), -statistics.fmean(r.dev for r in runs.values())))
    defaults = [runs for runs in ranked if any(r.default for r in runs.values())]
    searched = [runs for runs in ranked if not any(r.default for r in runs.values())]
    best = searched[0] if searched else {}
    default = defaults[0] if defaults else {}
    return Outcome(best=_mean_row(best), default=_mean_row(default), defaults=[_mean_row(d) for d in defaults],
                   confidence=confidence, best_runs=best, default_runs=default)


def _mean_row(runs: dict[int | None, Row]) -> Row | None:
    """A configuration's row: its one run, or (racing) its mean dev and test over its seeds, seed None."""
    if not runs:
        return None
    if len(runs) == 1:
        return next(iter(runs.values()))
    first = next(iter(runs.values()))
    tests = [t for t in (_num(r.test) for r in runs.values()) if t is not None]
    return dataclasses.replace(first, dev=statistics.fmean(r.dev for r in runs.values()),
                               test=statistics.fmean(tests) if tests else None, seed=None)


# ------------------------------------------------------------------------------------------------------ confirm
@dataclass
class Spread:
    n: int
    mean: float | None
    sd: float | None  # sample standard deviation (n − 1); None with fewer than 2 values

    def __str__(self) -> str:
        if self.mean is None:
            return "–"
        return f"{self.mean:.3f} ± {self.sd:.3f}" if self.sd is not None else f"{self.mean:.3f}"


def spread(values: list[float | None]) -> Spread:
    vals = [v for v in (_num(x) for x in values) if v is not None]
    if not vals:
        return Spread(0, None, None)
    return Spread(len(vals), statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None)


@dataclass
class Confirmed:
    """One configuration rerun with several seeds."""

    label: str  # "default", or the sweep trial it reruns
    method: str
    default: bool
    dev: Spread  # over the seeds that finished (descriptive: the verdict is the paired test)
    test: Spread
    seeds: list[int]  # the seeds that finished
    by_seed: dict[int, Row] = field(default_factory=dict)  # the finished run of each seed
    failed: list[int] = field(default_factory=list)  # the seeds whose run failed or never reported


def finished(row: Row) -> bool:
    """A run that reached its full evaluation with a dev score (anything else is failed: it never reported, it
    errored, or it stopped before its final evaluation)."""
    return row.final and _num(row.dev) is not None


def confirm_summary(rows: list[tuple[str, int, Row]]) -> list[Confirmed]:
    """(configuration label, seed, row) of every confirm run → one :class:`Confirmed` per configuration, best mean
    dev first. Keyed by (configuration, seed), never by position: a finished run of a pair counts over a failed one
    of the same pair (a confirm started again reruns the failed pairs), and a pair with no finished run is failed."""
    runs: dict[tuple[str, int], Row] = {}
    for label, seed, row in rows:
        have = runs.get((label, seed))
        if have is None or (not finished(have) and finished(row)):
            runs[(label, seed)] = row
    groups: dict[str, dict[int, Row]] = {}
    for (label, seed), row in runs.items():
        groups.setdefault(label, {})[seed] = row
    out = []
    for label, by_seed in groups.items():
        done = {s: r for s, r in sorted(by_seed.items()) if finished(r)}
        first = next(iter(by_seed.values()))
        out.append(Confirmed(
            label, first.method, any(r.default for r in by_seed.values()),
            spread([r.dev for r in done.values()]), spread([r.test for r in done.values()]), sorted(done), done,
            sorted(s for s in by_seed if s not in done),
        ))
    return sorted(out, key=lambda c: -(c.dev.mean if c.dev.mean is not None else -math.inf))


def confirm_verdict(confirmed: list[Confirmed], confidence: float = CONFIDENCE) -> Verdict:
    """The best confirmed configuration (best mean dev) against the default: :func:`judge` over the seeds both
    finished; every failed run is named and left out."""
    default = next((c for c in confirmed if c.default), None)
    best = next((c for c in confirmed if not c.default and c.dev.mean is not None), None)
    failed = sorted(((c.label, s) for c in confirmed for s in c.failed), key=lambda f: (f[1], f[0]))
    return judge(best and best.label, best.by_seed if best else {}, default and default.label,
                 default.by_seed if default else {}, confidence, failed)


# ------------------------------------------------------------------------------------------------------ Tune records
OBJECTIVE = "objective"  # the dev objective every trial reports (raysft.sweep.tune.OBJECTIVE)


def _sample(t) -> dict:
    return (getattr(t, "config", None) or {}).get("sample") or {}


def _result(t) -> dict:
    r = getattr(t, "last_result", None)
    if r is None:
        r = getattr(t, "metrics", None)
    return r or {}


def errored(t) -> bool:
    """A Tune trial (``status``) or result (``error``) that failed."""
    return getattr(t, "error", None) is not None or getattr(t, "status", None) == "ERROR"


def row_of(t) -> Row | None:
    """One Tune trial or result (duck-typed: ``.config["sample"]`` and ``.last_result`` or ``.metrics``) → its row,
    built from that trial's own config and result only; None when it never reported its objective."""
    r, sampled = _result(t), _sample(t)
    if OBJECTIVE not in r or not sampled:
        return None
    seed = (sampled.get("overrides") or {}).get("seed")
    return Row(
        id=str(r.get("trial_id") or getattr(t, "trial_id", "?")), method=sampled.get("method", "?"),
        dev=r.get(OBJECTIVE), test=r.get("avg/test"), default=bool(sampled.get("default")),
        final=r.get("phase") == "final" and not errored(t), seed=None if seed is None else int(seed),
    )


def seed_rows(t) -> list[Row]:
    """A trial's rows: its one row (:func:`row_of`), or a racing trial's one row per seed it finished (each a full
    evaluation, kept even if the trial failed at a later seed); none when it never reported."""
    row = row_of(t)
    if row is None:
        return []
    r = _result(t)
    return per_seed(row, r, final=r.get("phase") == "final")  # a finished seed's scores stand if a later seed failed


def per_seed(row: Row, scores: dict, final: bool | None = None) -> list[Row]:
    """``row`` as one row per seed when ``scores`` (a racing trial's report, or its run's metrics) carries per-seed
    scores (``final``: theirs, when given; else the row's); else ``row`` alone. The one place a trial's seeds
    become rows (Tune results and MLflow runs alike)."""
    devs, tests = seed_scores(scores, "dev"), seed_scores(scores, "test")
    if not devs:
        return [row]
    final = row.final if final is None else final
    return [dataclasses.replace(row, dev=devs[s], test=tests.get(s), seed=s, final=final) for s in sorted(devs)]


def rows_of(items) -> list[Row]:
    """The rows of the trials that reported, one per (trial, seed) when racing (a trial that never did has none:
    never zip this with ``items``)."""
    return [row for t in items for row in seed_rows(t)]


# A racing trial's report (raysft.sweep.racing.Race.report) carries each finished seed's scores under these keys.
SEED_DEV, SEED_TEST = "seed_dev/", "seed_test/"
SEED_LANG = "seed_lang/"  # a racing trial's score per seed and language: seed_lang/<split>/<lang>/<seed>


def seed_scores(result: dict, split: str = "dev") -> dict[int, float]:
    """seed → score of a racing trial's report (empty for any other report)."""
    key = SEED_DEV if split == "dev" else SEED_TEST
    out = {}
    for k, v in (result or {}).items():
        if k.startswith(key) and _num(v) is not None:
            try:
                out[int(k[len(key):])] = float(v)
            except ValueError:
                continue
    return out


def outcome_of(items, confidence: float = CONFIDENCE) -> Outcome:
    return versus_default(rows_of(items), confidence)
