"""Serve the MLflow UI over a real sweep's store and screenshot, in headless Chromium, the experiment's runs table and
one trial's page (and the compare page of all trials); check that the pages show the trials' names and the
objective.

    python bench/mlflow_ui.py --store runs/mlflow.db --experiment smoke --out runs/screenshots

(run `raysft tune smoke --trials 4` first, or pass --sweep to run one into a fresh store). Needs Debian's
`chromium` (apt-get install chromium). The runs table is opened sorted by `objective` (MLflow then lists a sweep's
trial runs flat, not folded under their parent run); the trial page is the best child run's overview, which lists its
params and metrics (objective among them); the compare page puts every trial side by side, params and metrics. The page text is read from Chromium's rendered DOM.
The last line printed is JSON: the screenshots, the names found and what was missing.
"""

from __future__ import annotations

import os.path as _p
import sys

# bench/select.py would shadow the standard library's `select` (imported by socket and subprocess) for a script run
# from this folder: drop the folder from the path first.
sys.path[:] = [p for p in sys.path if _p.abspath(p or ".") != _p.dirname(_p.abspath(__file__))]

import argparse  # noqa: E402
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no chromium on PATH: apt-get install chromium")


class Server:
    """A lean `mlflow server` over a sqlite store, in its own process group (stopped by its id)."""

    def __init__(self, store: Path, artifacts: Path):
        self.store, self.artifacts = store, artifacts
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def __enter__(self):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="mlflow-ui-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.store.resolve()}", "--artifacts-destination", str(self.artifacts)],
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.seek(0)
                raise SystemExit(f"mlflow server did not start:\n{self.log.read()[-2000:]}")
            time.sleep(1)

    def __exit__(self, *exc):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def render(url: str, png: Path, width: int = 1600, height: int = 1000, budget_ms: int = 25000) -> str:
    """Screenshot ``url`` into ``png`` and return its rendered DOM (two Chromium runs: --screenshot, --dump-dom)."""
    base = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--hide-scrollbars", f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}"]
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        subprocess.run([*base, f"--user-data-dir={profile}", f"--screenshot={png}", url],
                       capture_output=True, timeout=300, check=False)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        dom = subprocess.run([*base, f"--user-data-dir={profile}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=300, check=False).stdout
    return dom


def visible_text(dom: str) -> str:
    from html.parser import HTMLParser

    class Text(HTMLParser):
        def __init__(self):
            super().__init__()
            self.parts, self.skip = [], 0

        def handle_starttag(self, tag, attrs):
            self.skip += tag in ("script", "style")

        def handle_endtag(self, tag):
            self.skip -= tag in ("script", "style") and self.skip > 0

        def handle_data(self, data):
            if not self.skip and data.strip():
                self.parts.append(data.strip())

    p = Text()
    p.feed(dom)
    return " ".join(p.parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=Path("runs/mlflow.db"), help="the sweep's sqlite store")
    ap.add_argument("--experiment", default="smoke")
    ap.add_argument("--out", type=Path, default=Path("runs/screenshots"))
    ap.add_argument("--sweep", action="store_true", help="first run `raysft tune smoke --trials 4` into --store")
    args = ap.parse_args(argv)
    if args.sweep:
        work = Path(tempfile.mkdtemp(prefix="raysft-ui-"))
        print(f"running raysft tune smoke --trials 4 into {args.store} …", flush=True)
        subprocess.run([sys.executable, "-m", "raysft.cli", "tune", "smoke", "--trials", "4", "--storage", str(work / "tune"),
                        "--tracking-uri", f"sqlite:///{args.store.resolve()}", "--set", "tune.methods=[sc-sft,bitfit,lt-sft]"],
                       check=True)
    if not args.store.is_file():
        raise SystemExit(f"{args.store} does not exist: run a sweep first (or pass --sweep)")
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{args.store.resolve()}")
    exp = c.get_experiment_by_name(args.experiment)
    if exp is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {args.store}")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    trials = [r for r in runs if r.data.tags.get("raysft.kind") == "trial"]
    if not trials:
        raise SystemExit(f"experiment {args.experiment!r} has no trial runs")
    best = max(trials, key=lambda r: r.data.metrics.get("objective", float("-inf")))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with Server(args.store, Path(tempfile.mkdtemp(prefix="mlflow-artifacts-"))) as srv:
        query = urllib.parse.urlencode({"orderByKey": "metrics.`objective`", "orderByAsc": "false"})
        table_url = f"{srv.url}/#/experiments/{exp.experiment_id}/runs?{query}"
        trial_url = f"{srv.url}/#/experiments/{exp.experiment_id}/runs/{best.info.run_id}"
        ids = json.dumps(sorted(r.info.run_id for r in trials), separators=(",", ":"))
        compare_url = (f"{srv.url}/#/compare-runs?runs={urllib.parse.quote(ids)}"
                       f"&experiments={urllib.parse.quote(json.dumps([exp.experiment_id]))}")
        print(f"runs table: {table_url}\ntrial page: {trial_url}\ncompare page: {compare_url}", flush=True)
        table_text = visible_text(render(table_url, args.out / "runs_table.png"))
        trial_text = visible_text(render(trial_url, args.out / "trial_page.png", height=2400))  # down to its metrics
        compare_text = visible_text(render(compare_url, args.out / "compare_page.png", height=1400))
    names = [r.info.run_name for r in trials]
    found_names = [n for n in names if n in table_text]
    in_compare = [n for n in names if n in compare_text]
    result = {
        "runs_table_png": str(args.out / "runs_table.png"), "trial_page_png": str(args.out / "trial_page.png"),
        "compare_page_png": str(args.out / "compare_page.png"),
        "trials": len(trials), "trial_names_in_table": len(found_names), "missing_names": sorted(set(names) - set(found_names)),
        "trial_names_in_compare": len(in_compare), "objective_in_compare": "objective" in compare_text,
        "objective_in_trial_page": "objective" in trial_text,
        "best_trial": best.info.run_name, "best_trial_name_in_its_page": best.info.run_name in trial_text,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    for name, text in (("table", table_text), ("trial", trial_text), ("compare", compare_text)):
        (args.out / f"{name}_text.txt").write_text(text)
    print(json.dumps(result))
    # The compare page is extra: its parallel-coordinates plot picks metrics that differ between the runs, so it shows
    # `objective` only when the trials' objectives differ.
    ok = (not result["missing_names"] and result["objective_in_trial_page"] and result["best_trial_name_in_its_page"]
          and len(in_compare) == len(names))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
