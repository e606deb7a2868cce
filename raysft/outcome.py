"""Best against default: the one comparison that `raysft tune`'s trial lines and table, `raysft compare`, the MLflow
parent run and `raysft confirm` all report. Pure Python (no Ray, no MLflow): callers turn their own records (Tune
results, MLflow runs) into :class:`Row` s."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass
class Row:
    id: str
    method: str
    dev: float | None  # the objective: the targets' average dev score
    test: float | None = None
    default: bool = False  # the method's space at its defaults (the sweep's first trials)
    final: bool = True  # a full composed evaluation (False: stopped early, its dev is an intermediate score)
    label: str = ""  # what the row is, for humans (its configuration)


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


@dataclass
class Outcome:
    best: Row | None  # the best searched (non-default) trial with a full evaluation
    default: Row | None  # the best default trial with a full evaluation (the baseline the sweep must beat)
    defaults: list[Row] = field(default_factory=list)

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

    def line(self) -> str:
        """``best dev 0.621 vs default 0.600 (+0.021) · test 0.580 vs 0.575 (+0.005) [sc-sft vs lt-sft default]``"""
        if self.default is None and self.best is None:
            return "best vs default: no trial has finished yet"
        if self.default is None:
            return f"best dev {_f(self.best.dev)}: no default trial finished (nothing to compare with)"
        if self.best is None:
            return f"default dev {_f(self.default.dev)} ({self.default.method}): no searched trial finished yet"
        out = f"best dev {_f(self.best.dev)} vs default {_f(self.default.dev)} ({_g(self.dev_gain)})"
        if self.test_gain is not None:
            out += f" · test {_f(self.best.test)} vs {_f(self.default.test)} ({_g(self.test_gain)})"
        return out + f" [{self.best.method} {self.best.id} vs {self.default.method} default {self.default.id}]"

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


def versus_default(rows: list[Row]) -> Outcome:
    """The best searched trial against the best default trial, both with a full evaluation (a trial stopped early
    has only an intermediate dev score, on a partly trained model: it is never the best nor the default)."""
    finals = [r for r in rows if r.final and _num(r.dev) is not None]
    defaults = sorted((r for r in finals if r.default), key=lambda r: -r.dev)
    searched = sorted((r for r in finals if not r.default), key=lambda r: -r.dev)
    return Outcome(best=searched[0] if searched else None, default=defaults[0] if defaults else None, defaults=defaults)


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
    dev: Spread
    test: Spread
    seeds: list[int]
    by_seed: dict[int, Row] = field(default_factory=dict)  # the finished run of each seed


def confirm_summary(rows: list[tuple[str, int, Row]]) -> list[Confirmed]:
    """(configuration label, seed, row) of every confirm run → mean ± sd per configuration, best mean dev first."""
    groups: dict[str, list[tuple[int, Row]]] = {}
    for label, seed, row in rows:
        groups.setdefault(label, []).append((seed, row))
    out = []
    for label, items in groups.items():
        finals = [(s, r) for s, r in items if r.final]
        out.append(Confirmed(
            label, items[0][1].method, items[0][1].default,
            spread([r.dev for _, r in finals]), spread([r.test for _, r in finals]), sorted(s for s, _ in items),
            dict(finals),
        ))
    return sorted(out, key=lambda c: -(c.dev.mean if c.dev.mean is not None else -math.inf))


def paired_gains(best: Confirmed, default: Confirmed, split: str) -> list[float]:
    """best − default at each seed both finished: a seed fixes the data order, the head's init and the dropout
    draws of both runs, so what the seed moves cancels in the difference."""
    out = []
    for seed in sorted(set(best.by_seed) & set(default.by_seed)):
        b, d = _num(getattr(best.by_seed[seed], split)), _num(getattr(default.by_seed[seed], split))
        if b is not None and d is not None:
            out.append(b - d)
    return out


def confirm_verdict(confirmed: list[Confirmed]) -> str:
    """Whether the best confirmed configuration beats the default beyond the seeds' noise. Paired by seed: the mean
    of the per-seed gains on dev must exceed their standard deviation, over at least two seeds. (Comparing the two
    means against their own spreads instead counts the seed's shared effect as noise twice.) Both ways are printed."""
    default = next((c for c in confirmed if c.default), None)
    best = next((c for c in confirmed if not c.default), None)
    if default is None or best is None or best.dev.mean is None or default.dev.mean is None:
        return "confirm: nothing to compare (no default or no searched configuration finished)"
    gain = best.dev.mean - default.dev.mean
    test = ""
    if best.test.mean is not None and default.test.mean is not None:
        test = f" · test {best.test} vs {default.test} ({best.test.mean - default.test.mean:+.3f})"
    out = f"confirmed: best {best.label} dev {best.dev} vs default {default.dev} ({gain:+.3f}){test}"
    dev_gains, test_gains = paired_gains(best, default, "dev"), paired_gains(best, default, "test")
    paired = spread(dev_gains)
    if paired.n < 2:
        return out + " → too few seeds both finished to tell (need 2)"
    wins = sum(g > 0 for g in dev_gains)
    out += f"; paired by seed: dev {paired.mean:+.3f} ± {paired.sd:.3f} (better at {wins} of {paired.n} seeds)"
    if len(test_gains) > 1:
        t = spread(test_gains)
        out += f", test {t.mean:+.3f} ± {t.sd:.3f} (better at {sum(g > 0 for g in test_gains)} of {t.n})"
    holds = paired.mean > paired.sd
    return out + (" → holds beyond the seeds' noise" if holds else " → NOT beyond the seeds' noise (paired gain ≤ its sd)")


OBJECTIVE = "objective"  # the dev objective every trial reports (raysft.sweep.tune.OBJECTIVE)


def rows_of(items) -> list[Row]:
    """Tune trials or results (duck-typed: ``.config["sample"]`` and ``.last_result`` or ``.metrics``) → rows."""
    rows = []
    for t in items:
        r = getattr(t, "last_result", None)
        if r is None:
            r = getattr(t, "metrics", None)
        r = r or {}
        sampled = (getattr(t, "config", None) or {}).get("sample") or {}
        if OBJECTIVE not in r or not sampled:
            continue
        rows.append(Row(
            id=str(r.get("trial_id") or getattr(t, "trial_id", "?")), method=sampled.get("method", "?"),
            dev=r.get(OBJECTIVE), test=r.get("avg/test"), default=bool(sampled.get("default")),
            final=r.get("phase") == "final",
        ))
    return rows


def outcome_of(items) -> Outcome:
    return versus_default(rows_of(items))
