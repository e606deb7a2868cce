"""Racing: seeds inside the search (``tune.seeds`` > 1). Pure Python (no Ray): the trial driver
(:mod:`raysft.sweep.trial`) keeps a :class:`Race`, the racing scheduler (:mod:`raysft.sweep.scheduler`) asks
:func:`race_decision`, and the sweep's outcome reads the per-seed scores (:func:`raysft.outcome.seed_scores`).

- Seeds: a trial evaluates its configuration at :func:`racing_seeds` (the config's seed, then + 1000, + 2000, …),
  one after the other, each a full Ray Train fit whose dense phase is claimed in the dense-phase cache at that seed
  (the key includes the seed), so every configuration at one seed shares that seed's θ1.
- Reports: after each seed the trial reports once: ``objective`` (the mean dev over its seeds so far, what the
  searcher learns from), the per-seed dev and test scores (``seed_dev/<seed>``, ``seed_test/<seed>``; each
  language's at ``seed_lang/<split>/<lang>/<seed>``), ``seed`` and ``seeds_done``, phase "final" (each seed's is a
  full evaluation); its checkpoint holds the same record, so a retried or resumed trial continues at its next seed.
- Decisions: a default is never stopped (it runs at every seed, so every comparison can be paired by seed); a
  searched configuration is stopped when it is worse than a default, or than the leading searched configuration,
  beyond the seeds' noise: paired over the seeds both have, against the pooled noise of every score seen so far
  (:func:`raysft.stats.pooled_noise`). Seeds the other side has not finished are not paired yet: nothing waits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from raysft.outcome import SEED_DEV, SEED_LANG, SEED_TEST
from raysft.stats import CONFIDENCE, PairedTest, pooled_noise, pooled_paired_test

SEED_STEP = 1000  # between racing seeds: far from the neighbours the recipe derives from a seed (seed + 1)
STATE_FILE = "race.json"  # in the trial's Tune checkpoint


def racing_seeds(base_seed: int, n: int) -> list[int]:
    """The seeds a racing trial runs, in order: the config's own seed first (one seed is the sweep of before)."""
    return [base_seed + SEED_STEP * i for i in range(n)]


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


@dataclass
class Race:
    """One racing trial's seeds and the scores of those it finished (seed → its run's dev, test and checkpoint)."""

    seeds: list[int]
    done: dict[int, dict] = field(default_factory=dict)

    def todo(self) -> list[int]:
        """The seeds still to run, in order (a resumed trial starts at the first of them)."""
        return [s for s in self.seeds if s not in self.done]

    def record(self, seed: int, metrics: dict, checkpoint_path: str | None = None) -> None:
        """One seed's fit finished: ``metrics`` is its run's metrics.json (rank 0's return of ``fit_trial``)."""
        avg = metrics.get("avg") or {}
        name = metrics.get("metric")
        # each language's score at this seed (the task metric): `raysft report` puts intervals on every language
        langs = {split: {lang: _num(vals.get(name)) for lang, vals in (metrics.get(split) or {}).items()}
                 for split in ("dev", "test")}
        self.done[seed] = {"dev": _num(avg.get("dev")), "test": _num(avg.get("test")), "k": metrics.get("k"),
                           "delta_bytes": metrics.get("delta_bytes"), "checkpoint_path": checkpoint_path,
                           "dense_cache": (metrics.get("distributed") or {}).get("dense_cache", "none"),
                           "langs": langs}

    def mean(self, split: str) -> float | None:
        vals = [v for v in (self.done[s][split] for s in self.seeds if s in self.done) if v is not None]
        return sum(vals) / len(vals) if vals else None

    def report(self, seed: int) -> dict:
        """The Tune report after ``seed``: the seed-averaged objective, every finished seed's scores, and the last
        seed's run (its checkpoint: the delta a tracked run logs, its K and size)."""
        last = self.done[seed]
        out = {"phase": "final", "objective": _nan(self.mean("dev")), "avg/dev": _nan(self.mean("dev")),
               "seed": seed, "seeds_done": len(self.done), "dense_cache": last["dense_cache"]}
        test = self.mean("test")
        if test is not None:
            out["avg/test"] = test
        for key in ("k", "delta_bytes", "checkpoint_path"):
            if last.get(key) is not None:
                out[key] = last[key]
        for s in self.seeds:
            if s in self.done:
                for key, split in ((SEED_DEV, "dev"), (SEED_TEST, "test")):
                    if self.done[s][split] is not None:
                        out[f"{key}{s}"] = self.done[s][split]
                for split, by_lang in (self.done[s].get("langs") or {}).items():
                    out.update({f"{SEED_LANG}{split}/{lang}/{s}": v for lang, v in by_lang.items() if v is not None})
        return out

    def to_json(self) -> str:
        return json.dumps({"seeds": self.seeds, "done": {str(s): v for s, v in self.done.items()}})

    @classmethod
    def from_json(cls, text: str, seeds: list[int]) -> Race:
        """A checkpointed race, continued with this trial's ``seeds`` (only the seeds it still runs are kept)."""
        done = {int(s): v for s, v in (json.loads(text).get("done") or {}).items()}
        return cls(list(seeds), {s: v for s, v in done.items() if s in seeds})


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


# ------------------------------------------------------------------------------------------------------ decisions
@dataclass(frozen=True)
class Decision:
    stop: bool
    why: str
    against: str | None = None  # the configuration it was tested against
    test: PairedTest | None = None


def leader(scores: dict[str, dict[int, float]], candidates) -> str | None:
    """The leading configuration among ``candidates``: most seeds, then the best mean (the verdict's order)."""
    ranked = [(len(scores[c]), sum(scores[c].values()) / len(scores[c]), c) for c in candidates if scores.get(c)]
    return max(ranked, key=lambda r: (r[0], r[1]))[2] if ranked else None


def race_decision(scores: dict[str, dict[int, float]], trial: str, defaults: set[str], stopped: set[str] = frozenset(),
                  confidence: float = CONFIDENCE) -> Decision:
    """Whether ``trial`` stops now. ``scores``: configuration → seed → dev score of every report seen so far
    (stopped configurations included: their scores still measure the noise); ``defaults``: the default
    configurations (never stopped); ``stopped``: searched configurations already stopped (never the leader)."""
    if trial in defaults:
        return Decision(False, "a default runs at every seed")
    mine = scores.get(trial) or {}
    noise = pooled_noise({(c, s): v for c, by in scores.items() for s, v in by.items()})
    if noise.variance is None:
        return Decision(False, "no noise estimate yet (no configuration at two seeds beside another)")
    lead = leader(scores, [c for c in scores if c not in defaults and c not in stopped and c != trial])
    for ref in [*sorted(d for d in defaults if d in scores), *([lead] if lead else [])]:
        shared = sorted(set(mine) & set(scores[ref]))
        if not shared:
            continue  # seeds the other has not finished are not paired yet
        test = pooled_paired_test([mine[s] - scores[ref][s] for s in shared], noise, confidence)
        if test.ruled_out:
            kind = "default" if ref in defaults else "leader"
            return Decision(True, f"worse than the {kind} {ref} beyond the seeds' noise: {test.line()}", ref, test)
    return Decision(False, "not ruled out")
