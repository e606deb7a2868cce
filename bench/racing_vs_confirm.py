"""Racing against sweep-then-confirm, side by side on one machine (issue 21's first measurement).

Two arms on the same space, one after the other, each with its own storage and MLflow store (a temp folder):

    racing   raysft tune SPACE --set tune.seeds=N --set tune.scheduler=asha   (seeds inside the search)
    confirm  raysft tune SPACE, then raysft confirm SPACE --top TOP --seeds N  (one seed, then new seeds)

For each arm it prints the wall time (the commands' own, start to exit), the fits it ran (Ray Train runs: a racing
trial runs one per seed it reached), the verdict as recorded on the sweep's MLflow parent run (the racing sweep's
own, or confirm's) and its interval's width: a sharper verdict is a narrower interval, or a significant one. The
last line is JSON with both arms' numbers and the ratio of their wall times.

    python bench/racing_vs_confirm.py [--space sa-cpu] [--seeds 3] [--top 2] [--trials N] [--set key=value ...]

`--space smoke` checks the script in a few minutes; `sa-cpu` (8 trials, ~40 min a sweep here) is the measurement.
Ray workers import this checkout: run it with PYTHONPATH=<repo root>.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/select.py shadows the standard library's `select`: keep this folder behind the stdlib on sys.path.
_HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse
import json
import os
import subprocess
import tempfile
import time

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str], env: dict, log: Path) -> float:
    """Run ``raysft ARGS``, its output streamed to the terminal and to ``log``; returns its wall time."""
    print("$ raysft " + " ".join(args), flush=True)
    started = time.perf_counter()
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "raysft.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        for line in proc.stdout:
            out.write(line)
            print("  " + line, end="", flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"raysft {' '.join(args)} failed (exit {proc.returncode}): see {log}")
    return time.perf_counter() - started


def parent_record(uri: str, space: str) -> tuple[dict, dict]:
    """The sweep's parent run: (tags, metrics)."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(space)
    parent = next(r for r in c.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
                  if r.data.tags.get("raysft.kind") == "sweep")
    return parent.data.tags, parent.data.metrics


def fits(storage: Path) -> int:
    """Ray Train runs that finished under a storage folder (one per trial per seed reached, one per confirm run):
    the run folders (``train-<trial>…``) holding a final ``metrics.json``."""
    runs = set()
    for f in storage.rglob("metrics.json"):
        run = next((p for p in f.parents if p.name.startswith("train-")), None)
        if run is not None:
            runs.add(run)
    return len(runs)


def verdict_of(tags: dict, metrics: dict, prefix: str) -> dict:
    low, high = metrics.get(f"{prefix}/dev_ci_low"), metrics.get(f"{prefix}/dev_ci_high")
    width = high - low if low is not None and high is not None and low == low and high == high else None
    return {"line": tags.get(f"raysft.{prefix}", "(none)"), "significant": tags.get(f"raysft.{prefix}.significant"),
            "effect": metrics.get(f"{prefix}/dev_effect"), "ci": [low, high], "ci_width": width,
            "p": metrics.get(f"{prefix}/dev_p"), "seeds": tags.get(f"raysft.{prefix}.seeds")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="sa-cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--top", type=int, default=2)
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], help="key=value, both arms")
    opts = ap.parse_args()
    if opts.seeds < 2:
        raise SystemExit("--seeds must be at least 2 (one seed ranks nothing)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PYTHONUNBUFFERED": "1"}
    common = [*(["--trials", str(opts.trials)] if opts.trials else []), *sum((["--set", s] for s in opts.set), [])]
    root = Path(tempfile.mkdtemp(prefix="raysft-racing-bench-"))
    out = {}

    arm = root / "racing"
    uri = f"sqlite:///{arm}/mlflow.db"
    arm.mkdir()
    wall = run(["tune", opts.space, "--storage", str(arm / "tune"), "--tracking-uri", uri, *common,
                "--set", f"tune.seeds={opts.seeds}", "--set", "tune.scheduler=asha"], env, arm / "log.txt")
    tags, metrics = parent_record(uri, opts.space)
    out["racing"] = {"wall_s": wall, "fits": fits(arm / "tune"), **verdict_of(tags, metrics, "verdict")}

    arm = root / "confirm"
    uri = f"sqlite:///{arm}/mlflow.db"
    arm.mkdir()
    wall = run(["tune", opts.space, "--storage", str(arm / "tune"), "--tracking-uri", uri, *common],
               env, arm / "log.txt")
    wall += run(["confirm", opts.space, "--top", str(opts.top), "--seeds", str(opts.seeds), "--tracking-uri", uri],
                env, arm / "log.txt")
    tags, metrics = parent_record(uri, opts.space)
    out["confirm"] = {"wall_s": wall, "fits": fits(arm / "tune"),
                      **verdict_of(tags, metrics, "confirm_verdict")}

    print(f"\n{'arm':8} {'wall':>8} {'fits':>5}  verdict")
    for name, r in out.items():
        print(f"{name:8} {r['wall_s']:7.0f}s {r['fits']:5d}  {r['line']}")
    out["wall_ratio_racing_over_confirm"] = out["racing"]["wall_s"] / out["confirm"]["wall_s"]
    out["space"], out["seeds"], out["top"], out["sets"], out["folder"] = opts.space, opts.seeds, opts.top, opts.set, str(root)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
